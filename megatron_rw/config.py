"""``ReweightConfig``: every setting of sample reweighting, validated in one place."""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, fields

from megatron_rw.strategies import available_strategies, get_normaliser

SCHEDULES = ("constant", "linear", "geometric")
UNITS = ("sample", "document")
COLLECTIVES = ("gather", "reduce")


@dataclass(frozen=True)
class ReweightConfig:
    """Settings of loss-based sample reweighting (one field per ``--sample-reweight-*`` flag).

    Defaults change nothing (``strategy="uniform"``). The paper's settings are
    ``warmup_iters=1000`` with ``r=1.0`` (quadratic, 124M) or ``r=0.4`` (linupper/extremes,
    larger models).
    """

    strategy: str = "uniform"
    """Score function of the normalised loss: ``uniform`` (baseline), ``linupper``, ``quadratic``,
    ``extremes``, or any name added with ``register_strategy``."""

    r: float = 1.0
    """Temperature of the softmax after burn-in (and the end value of annealed schedules). Smaller
    r = more peaked weights: the max/min weight ratio is at most ``exp(range(f) / r)``."""

    warmup_iters: int = 1000
    """Burn-in: weights are exactly uniform while fewer than this many optimizer steps are done.
    The paper's code uses 1000; early losses say little about sample usefulness."""

    schedule: str = "constant"
    """How r evolves after burn-in: ``constant`` (r), or ``linear`` / ``geometric`` interpolation
    from ``r_start`` to ``r`` over ``anneal_iters`` steps, then r."""

    r_start: float = 100.0
    """First r of an annealed schedule. 100 is close to uniform for f in [0, 1] (weights within
    1 %), the value IBM's 1.4B/7B runs hold during their burn-in."""

    anneal_iters: int = 0
    """Length of the annealed part of the schedule in optimizer steps (> 0 unless constant)."""

    delta: float = 1.0
    """Half-width of the interval losses are normalised to (``[-delta, delta]``; the paper uses 1)."""

    target_ess: float = 0.0
    """If > 0: after burn-in, each global micro-batch's r is chosen (on the device, identically on
    every rank) so that its weights' effective sample size ``(Σw)² / (N Σw²)`` is this fraction
    of N (the nearest reachable value when it cannot be reached). Replaces r and its schedule,
    which then must stay ``constant``. 0 = off: r follows the schedule."""

    unit: str = "sample"
    """What gets one weight: ``sample`` (a packed row, as in the paper) or ``document`` (each
    document segment of a row, split after every end-of-document label, with its own
    length-normalised loss; normalised over every document of the global micro-batch)."""

    max_documents: int = 32
    """With ``unit="document"``: unit slots per row. Every rank all-gathers ``b * max_documents``
    losses (a fixed size, so no rank waits to learn another's count); documents past the last
    slot share it."""

    preview: str = ""
    """A strategy whose weights are computed and reported (``preview weight/<domain>``, through
    the Megatron-LM patch ``preview weight share/<domain>``; ``preview weight ess``) but not
    applied: see on your own data what it would do before committing a run.
    Uses the same r (or target ESS) and unit. Empty = off."""

    collective: str = "gather"
    """How the data-parallel ranks share what the weights need (:mod:`megatron_rw.batch_weights`):
    ``gather`` all-gathers every unit's loss (one collective of ``N`` floats); ``reduce``
    all-reduces a few scalars three times (min and max loss, min and max score, the softmax
    sums), which NCCL runs as log-depth trees. The same weights within ~1e-6; ``reduce`` serves
    min-max-normalised strategies (not ``robust``) with an r known in advance (no target ESS)."""

    skip_nonfinite: bool = False
    """Ride through samples whose loss is NaN or Inf: weight 0, counted in ``invalid samples``.
    Off by default: a non-finite loss is how divergence and corrupted data show themselves, so
    the run stops with Megatron's own check (``--check-for-nan-in-loss-and-grad``) as it would
    without megatron-rw. All-masked (padding) samples get weight 0 either way."""

    def __post_init__(self):
        def fail(field: str, msg: str):
            flag = "--sample-reweight-" + field.replace("_", "-")
            raise ValueError(f"{flag} ({field}): {msg}")

        if self.strategy not in available_strategies():
            fail("strategy", f"unknown strategy {self.strategy!r}; known strategies: "
                 + ", ".join(available_strategies()))
        for name in ("r", "r_start", "delta"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                fail(name, f"must be a finite number > 0, got {value!r}")
        for name in ("warmup_iters", "anneal_iters", "max_documents"):
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
                fail(name, f"must be an integer >= 0, got {value!r}")
        if not isinstance(self.skip_nonfinite, bool):
            fail("skip_nonfinite", f"must be True or False, got {self.skip_nonfinite!r}")
        if self.preview and self.preview not in available_strategies():
            fail("preview", f"unknown strategy {self.preview!r}; known strategies: "
                 + ", ".join(available_strategies()))
        if self.unit not in UNITS:
            fail("unit", f"unknown unit {self.unit!r}; known: {', '.join(UNITS)}")
        if self.max_documents < 1:
            fail("max_documents", f"must be >= 1, got {self.max_documents}")
        if not (isinstance(self.target_ess, (int, float)) and 0.0 <= self.target_ess <= 1.0):
            fail("target_ess", f"must be in (0, 1] (0 = off), got {self.target_ess!r}")
        if self.target_ess > 0 and self.schedule != "constant":
            fail("target_ess", f"chooses r itself; it cannot follow schedule {self.schedule!r} "
                 "(use --sample-reweight-schedule constant)")
        if self.collective not in COLLECTIVES:
            fail("collective", f"unknown collective {self.collective!r}; known: "
                 + ", ".join(COLLECTIVES))
        if self.collective == "reduce":
            for what, name in (("strategy", self.strategy), ("preview", self.preview)):
                if name and get_normaliser(name) is not None:
                    fail("collective", f"reduce needs min-max normalised losses; {what} "
                         f"{name!r} normalises with its own statistics (every loss needed): "
                         "use gather")
            if self.target_ess > 0:
                fail("collective", "reduce cannot search r for a target ESS (every score "
                     "needed): use gather, or a fixed --sample-reweight-r")
        if self.schedule not in SCHEDULES:
            fail("schedule", f"unknown schedule {self.schedule!r}; known: {', '.join(SCHEDULES)}")
        if self.schedule != "constant" and self.anneal_iters == 0:
            fail("anneal_iters", f"must be > 0 with schedule {self.schedule!r}")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "ReweightConfig":
        """Build from parsed arguments (``args.sample_reweight_<field>``); missing or None ones take
        defaults."""
        kwargs = {}
        for f in fields(cls):
            key = "sample_reweight_" + f.name
            # None: the flag's "off" (argparse would run a type check on a "" default).
            if getattr(args, key, None) is not None:
                kwargs[f.name] = getattr(args, key)
        return cls(**kwargs)

    @property
    def enabled(self) -> bool:
        """True unless the strategy is ``uniform`` (which reproduces the baseline exactly)."""
        return self.strategy != "uniform"

    @property
    def units_per_row(self) -> int:
        """Weighted units per row: 1 for samples, ``max_documents`` for documents."""
        return self.max_documents if self.unit == "document" else 1

    def check_normalisation_group(self, data_parallel_size: int, micro_batch_size: int) -> None:
        """Refuse a layout whose weights can never differ from 1.

        The weights are normalised over one global micro-batch: ``data_parallel_size *
        micro_batch_size`` rows (times ``max_documents`` slots with documents as units). With
        fewer than 2 units every weight is 1 and a strategy other than ``uniform`` (or a
        preview) would silently train the baseline.

        Raises:
            ValueError: naming the flags that give the global micro-batch 2 or more units.
        """
        units = data_parallel_size * micro_batch_size * self.units_per_row
        if units >= 2 or (self.strategy == "uniform" and not self.preview):
            return
        raise ValueError(
            f"--sample-reweight-strategy {self.strategy}: each global micro-batch holds "
            f"{units} unit (data-parallel size {data_parallel_size} x --micro-batch-size "
            f"{micro_batch_size}), and weights normalised over one unit are all 1: the run "
            "would train the baseline. Raise --micro-batch-size, the data-parallel size (more "
            "ranks, or smaller --tensor-model-parallel-size / --pipeline-model-parallel-size), "
            "or use --sample-reweight-unit document (each document of a row its own unit).")
