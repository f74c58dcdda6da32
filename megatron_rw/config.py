"""``ReweightConfig``: every setting of sample reweighting, validated in one place."""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, fields

from megatron_rw.strategies import available_strategies

SCHEDULES = ("constant", "linear", "geometric")


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
        for name in ("warmup_iters", "anneal_iters"):
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
                fail(name, f"must be an integer >= 0, got {value!r}")
        if not isinstance(self.skip_nonfinite, bool):
            fail("skip_nonfinite", f"must be True or False, got {self.skip_nonfinite!r}")
        if self.schedule not in SCHEDULES:
            fail("schedule", f"unknown schedule {self.schedule!r}; known: {', '.join(SCHEDULES)}")
        if self.schedule != "constant" and self.anneal_iters == 0:
            fail("anneal_iters", f"must be > 0 with schedule {self.schedule!r}")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "ReweightConfig":
        """Build from parsed arguments (``args.sample_reweight_<field>``); missing ones take defaults."""
        kwargs = {}
        for f in fields(cls):
            key = "sample_reweight_" + f.name
            if hasattr(args, key):
                kwargs[f.name] = getattr(args, key)
        return cls(**kwargs)

    @property
    def enabled(self) -> bool:
        """True unless the strategy is ``uniform`` (which reproduces the baseline exactly)."""
        return self.strategy != "uniform"
