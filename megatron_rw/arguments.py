"""Command-line flags ``--sample-reweight-*``, in the form Megatron-LM's ``extra_args_provider`` takes."""

from __future__ import annotations

import argparse

from megatron_rw.config import COLLECTIVES, SCHEDULES, UNITS, ReweightConfig
from megatron_rw.strategies import available_strategies

_DEFAULTS = ReweightConfig()


def _strategy(name: str) -> str:
    # Checked at parse time, not via argparse `choices`, so strategies registered after the
    # parser was built are accepted.
    if name not in available_strategies():
        raise argparse.ArgumentTypeError(
            f"unknown strategy {name!r}; known strategies: {', '.join(available_strategies())}")
    return name


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (value > 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1] (0 = off), got {text}")
    return value


def _positive_int(text: str) -> int:
    value = _non_negative_int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def add_sample_reweight_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``--sample-reweight-*`` flags; returns ``parser`` (Megatron-LM's ``extra_args_provider``)."""
    g = parser.add_argument_group(
        "sample reweighting",
        "Dynamic loss-based sample reweighting (weights normalised per global micro-batch).")
    g.add_argument("--sample-reweight-strategy", type=_strategy, default=_DEFAULTS.strategy,
                   metavar="NAME",
                   help="Score of the normalised per-sample loss: uniform (baseline, bit-for-bit "
                        "identical loss), linupper, quadratic, extremes, or a registered name. "
                        f"Default: {_DEFAULTS.strategy}.")
    g.add_argument("--sample-reweight-r", type=_positive_float, default=_DEFAULTS.r,
                   help="Softmax temperature after burn-in (end value of annealed schedules); "
                        f"smaller is more peaked. Default: {_DEFAULTS.r}.")
    g.add_argument("--sample-reweight-warmup-iters", type=_non_negative_int,
                   default=_DEFAULTS.warmup_iters,
                   help="Optimizer steps with exactly uniform weights before reweighting starts. "
                        f"Default: {_DEFAULTS.warmup_iters}.")
    g.add_argument("--sample-reweight-schedule", choices=SCHEDULES, default=_DEFAULTS.schedule,
                   help="r after burn-in: constant, or linear/geometric from "
                        "--sample-reweight-r-start to --sample-reweight-r over "
                        f"--sample-reweight-anneal-iters steps. Default: {_DEFAULTS.schedule}.")
    g.add_argument("--sample-reweight-r-start", type=_positive_float, default=_DEFAULTS.r_start,
                   help=f"First r of an annealed schedule. Default: {_DEFAULTS.r_start}.")
    g.add_argument("--sample-reweight-anneal-iters", type=_non_negative_int,
                   default=_DEFAULTS.anneal_iters,
                   help="Steps of the annealed schedule (required > 0 unless constant). "
                        f"Default: {_DEFAULTS.anneal_iters}.")
    g.add_argument("--sample-reweight-delta", type=_positive_float, default=_DEFAULTS.delta,
                   help="Per-sample losses are normalised to [-delta, delta]. "
                        f"Default: {_DEFAULTS.delta}.")
    g.add_argument("--sample-reweight-target-ess", type=_fraction, default=_DEFAULTS.target_ess,
                   metavar="E",
                   help="After burn-in, choose each micro-batch's r so that its weights' "
                        "effective sample size (sum w)^2 / (N sum w^2) is E (nearest reachable "
                        "value otherwise); the chosen r is logged as 'reweight r'. Replaces "
                        "--sample-reweight-r; needs the constant schedule. 0 = off. "
                        f"Default: {_DEFAULTS.target_ess:g}.")
    g.add_argument("--sample-reweight-unit", choices=UNITS, default=_DEFAULTS.unit,
                   help="What gets one weight: sample (a packed row, as in the paper) or "
                        "document (each document of a row, split after every end-of-document "
                        f"label, with its own loss). Default: {_DEFAULTS.unit}.")
    g.add_argument("--sample-reweight-max-documents", type=_positive_int,
                   default=_DEFAULTS.max_documents, metavar="K",
                   help="With --sample-reweight-unit document: weighted documents per row; later "
                        "documents of a row share the last one's weight. "
                        f"Default: {_DEFAULTS.max_documents}.")
    g.add_argument("--sample-reweight-preview", type=_strategy, default=_DEFAULTS.preview or None,
                   metavar="NAME",
                   help="Also compute the weights strategy NAME would give (same r or target "
                        "ESS, same unit) and log them per domain ('preview weight/<domain>'; "
                        "through the Megatron-LM patch 'preview weight share/<domain>') and "
                        "their ESS ('preview weight ess') without applying them. Default: off.")
    g.add_argument("--sample-reweight-collective", choices=COLLECTIVES,
                   default=_DEFAULTS.collective,
                   help="How data-parallel ranks share what the weights need: 'gather' every "
                        "loss (one all-gather of DP x micro-batch floats) or 'reduce' three "
                        "all-reduces of a few scalars (log-depth trees on NCCL; same weights "
                        "within ~1e-6; not with robust or a target ESS). "
                        f"Default: {_DEFAULTS.collective}.")
    g.add_argument("--sample-reweight-skip-nonfinite", action="store_true",
                   help="Give samples with a NaN/Inf loss weight 0 and count them (invalid "
                        "samples) instead of stopping the run with Megatron's NaN/Inf check. "
                        "Default: off (stop, as without megatron-rw).")
    g.add_argument("--log-sample-weights", action="store_true",
                   help="Every --log-interval iterations, append each sample's loss, normalised "
                        "loss, weight and domain to sample_weights.jsonl in --save (else "
                        "--tensorboard-dir): the rows of the first data-parallel rank of the "
                        "last pipeline stage, one line per micro-batch (a host sync on those "
                        "iterations only). Default: off.")
    return parser
