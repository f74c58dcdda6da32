"""The temperature r as a function of the iteration only.

Because r depends on nothing but the iteration, a resumed run continues the schedule exactly
with no extra checkpoint state.
"""

from __future__ import annotations

import math

from megatron_rw.config import ReweightConfig


def temperature_at(config: ReweightConfig, iteration: int) -> float:
    """Temperature for a step, ``math.inf`` (exactly uniform weights) during burn-in.

    Args:
        config: the reweighting settings.
        iteration: optimizer steps completed before the current one (Megatron's
            ``args.curr_iteration``; 0 for the first step).

    Returns:
        ``inf`` while ``iteration < warmup_iters``; then for ``anneal_iters`` steps an
        interpolation from ``r_start`` to ``r`` (linear in r, or geometric: linear in log r,
        which spends equal time per factor of sharpening); then ``r``.
    """
    if iteration < config.warmup_iters:
        return math.inf
    if config.schedule == "constant":
        return float(config.r)
    t = min(1.0, (iteration - config.warmup_iters) / config.anneal_iters)
    if config.schedule == "linear":
        return config.r_start + t * (config.r - config.r_start)
    if config.schedule == "geometric":
        return math.exp(math.log(config.r_start) + t * (math.log(config.r) - math.log(config.r_start)))
    raise ValueError(f"unknown schedule {config.schedule!r}")
