"""Which Megatron training loop is importable, and what it offers, read from its files.

The launcher asks before any rank starts, so nothing here imports ``megatron.training`` (that
pulls in torch and megatron-core: seconds per question). Each answer is a feature found in the
installed source, never a version string; this is the one place that reads them.

- ``megatron.training`` ships in megatron-core's wheels from 0.17 on, and a Megatron-LM checkout
  on ``PYTHONPATH`` shadows it.
- :func:`has_training_loop`: ``megatron.training.training`` defines ``pretrain`` (megatron-core
  0.17 on), which megatron_rw/megatron_training/pretrain_gpt.py drives.
- :func:`names_validation_sets`: ``--validation-set-names`` exists (0.18 on), so per-set
  validation losses are logged as ``validation-<name>`` rather than ``validation-<index>``.

    python -m megatron_rw.megatron_training.installed own      # exit 0 when the project's script can run
"""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import List, Optional


def _source(module: str) -> str:
    """The text of ``megatron.training.<module>`` as it would be imported; '' if absent."""
    try:
        spec = importlib.util.find_spec("megatron.training")
    except (ImportError, ValueError):
        return ""
    if spec is None or not spec.submodule_search_locations:
        return ""
    for folder in spec.submodule_search_locations:
        path = os.path.join(folder, *module.split(".")) + ".py"
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                return f.read()
    return ""


def has_training_loop() -> bool:
    return "def pretrain(" in _source("training")


def names_validation_sets() -> bool:
    return "validation_set_names" in _source("training")


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    questions = {"own": has_training_loop, "names": names_validation_sets}
    if len(argv) != 1 or argv[0] not in questions:
        print(f"usage: python -m megatron_rw.megatron_training.installed {{{','.join(questions)}}}",
              file=sys.stderr)
        return 2
    return 0 if questions[argv[0]]() else 1


if __name__ == "__main__":
    sys.exit(main())
