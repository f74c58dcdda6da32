"""Flags parsed as Megatron's ``pretrain_gpt.py`` parses them through the patch, starting nothing.

For the harnesses and tests that check a config's or a run's flags before (or instead of) a
launch: Megatron's own argument parser (``megatron.training.arguments.parse_args``, megatron-core
0.17 on) with megatron-rw's ``--sample-reweight-*`` flags chained in, as the patch chains them.
Only parsing: Megatron's ``validate_args`` (defaults derived from the world size, ...) runs at
start-up, inside ``pretrain``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

# What the launcher adds to a config's flags (its corpus and output), for parsing a config alone.
LAUNCHER_FLAGS = ("--train-data-path", "x", "--tokenizer-type", "GPTSentencePieceTokenizer",
                  "--tokenizer-model", "x.model", "--save", "runs/x")


def parse_flags(flags: Sequence[str]) -> argparse.Namespace:
    """``flags`` parsed by Megatron's parser with megatron-rw's flags.

    Raises:
        SystemExit: a flag either parser refuses (argparse prints why), as at start-up.
        ImportError: the installed megatron-core has no ``megatron.training`` (0.16.1).
    """
    from megatron.training.arguments import parse_args

    from megatron_rw import add_sample_reweight_args

    argv = sys.argv
    sys.argv = ["pretrain_gpt.py", *flags]  # Megatron's parse_args reads sys.argv
    try:
        return parse_args(extra_args_provider=add_sample_reweight_args)
    finally:
        sys.argv = argv
