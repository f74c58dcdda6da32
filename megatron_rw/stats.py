"""Summary statistics of one global micro-batch's weights, for logging. Pure math, no host sync."""

from __future__ import annotations

import math
from typing import Dict

import torch


def weight_statistics(weights: torch.Tensor, losses: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Scalars describing how peaked the weights are.

    Args:
        weights: float32 ``[N]`` weights of the global micro-batch (0 for invalid samples).
        losses: float ``[N]`` per-unit losses the weights came from: finite = valid, NaN = a
            unit with tokens but a non-finite loss, -inf = a unit without tokens (padding).

    Returns:
        0-dim float32 tensors (identical on every data-parallel rank):
        ``ess`` effective sample size fraction ``(sum w)^2 / (N_valid sum w^2)`` in (0, 1]
        (1 = uniform), ``max``/``min`` weight over valid samples, ``loss_range`` the spread
        ``max - min`` of valid per-sample losses (the normaliser's denominator), ``invalid`` the
        number of NaN units (padding is not counted). With no valid unit every statistic but
        ``invalid`` is 0.
    """
    valid = torch.isfinite(losses)
    n_valid = valid.sum().float()
    any_valid = n_valid > 0
    zero = torch.zeros((), dtype=torch.float32, device=weights.device)
    inf = torch.full_like(weights, math.inf)
    s1 = weights.sum()
    s2 = (weights * weights).sum()
    ess = s1 * s1 / (n_valid * s2).clamp(min=torch.finfo(torch.float32).tiny)
    lvalid = losses.float()

    def _masked(values: torch.Tensor, fill: torch.Tensor, reduce) -> torch.Tensor:
        return torch.where(any_valid, reduce(torch.where(valid, values, fill)), zero)

    return {
        "ess": ess,
        "max": _masked(weights, -inf, torch.amax),
        "min": _masked(weights, inf, torch.amin),
        "loss_range": _masked(lvalid, -inf, torch.amax) - _masked(lvalid, inf, torch.amin),
        "invalid": torch.isnan(losses).sum().float(),
    }
