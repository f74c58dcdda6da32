"""The ``robust`` strategy: rank losses against the batch's quartiles, not its extremes.

Min-max normalisation lets one sample set the scale: a random-token document (loss ~8 when clean
text is at ~6) becomes the batch maximum, ``linupper`` gives it the top score, and every other
sample is pushed towards ``-delta``. ``robust`` measures each loss in IQRs from the batch median,

    z_i = (l_i - q50) / max(q75 - q25, eps)         quartiles over the valid losses only

which a few outliers cannot move (the quartiles break down only when a quarter of the batch is
outlying), and scores it with a trapezoid that rises like ``linupper`` below the median, stays
flat over the batch's typical range and falls for losses far above it:

    f(z) = delta * clamp(1 + min(z / LOW_RAMP, (PLATEAU_END - z) / FALL), 0, 1)

    f = 0 for z <= -LOW_RAMP              (memorised / redundant: the lowest weight)
    f rises linearly on [-LOW_RAMP, 0]
    f = delta on [0, PLATEAU_END]         (typical and hard samples: the highest weight)
    f falls linearly on [PLATEAU_END, PLATEAU_END + FALL]
    f = 0 for z >= PLATEAU_END + FALL     (far above the typical range: unlearnable noise)

Scores span ``[0, delta]`` like ``linupper``'s, so ``r`` means the same (max/min weight ratio at
most ``e^(delta/r)``). With no outlier the median sample is on the plateau, so any sample
beyond ``PLATEAU_END + FALL`` gets less than the median weight.

The constants come from ``results/loss_distribution.json`` (``benchmarks.quality.loss_distribution`` on
a 300-iteration tiny_cpu GPT run on the noisy corpus with uniform weights, seed 1234, 104 logged
global micro-batches of 16 rows after burn-in): clean rows have z in [-1.30, +0.83] (5-95 %) and
only 2.7 % have z > 1 (0.2 % z > 2); every random-token row has z > 1.17, 90 % z > 2 (71 % in
iterations 30-69, 96 % in 260-300); the duplicated rows' median z is -2.6. Hence
PLATEAU_END = 1 (the clean rows' upper tail stays on the plateau, no random row does), FALL = 1
(most random rows at the floor, the rare clean row above z = 1 only partly down-weighted) and
LOW_RAMP = 2 (the median duplicated row at the floor, the clean rows' 5 % quantile at
0.35 delta; it gives the duplicated rows about the weight linupper gives them). Replayed on those
batches at r = 0.4, mean weights of duplicated / random rows are 0.22 / 0.15 (linupper: 0.19 /
1.46) and stay in 0.17-0.32 / 0.13-0.38 for every constant in {1, 1.5, 2, 3} x {0.5, 1, 1.5} x
{0.5, 1, 2} (the file's ``sensitivity``): the design does not hinge on their exact values.

Limit: when more than a quarter of a batch is outlying the quartiles move too. With 10 % random
rows and N = 16 that is about 7 % of micro-batches (P[Binomial(16, 0.1) >= 4]); even so the
lowest z of any random row measured was 1.17. Larger N (more data-parallel ranks, document units)
makes it rarer.

Pure math: no ``torch.distributed``, no Megatron, no host synchronisation (quantiles come from a
sort and a gather with device-side indices, so the number of valid samples never reaches Python).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

LOW_RAMP = 2.0     # z at which the rising ramp starts from 0 (the score is 0 below it)
PLATEAU_END = 1.0  # z up to which samples keep the top score
FALL = 1.0         # width in z of the falling ramp above PLATEAU_END
SCALE_EPS = 1e-6   # floor of the IQR: equal losses give z = 0, i.e. equal weights
Z_LIMIT = 1e4      # |z| is clipped here (far beyond every knot) so huge losses stay finite


def masked_quantiles(values: torch.Tensor, valid: torch.Tensor,
                     qs: Sequence[float]) -> torch.Tensor:
    """Quantiles of ``values[valid]`` without copying the number of valid entries to the host.

    Linear interpolation between order statistics (``torch.quantile``'s default): the q-quantile
    of n sorted values v is ``v[floor(p)] + (p - floor(p)) * (v[ceil(p)] - v[floor(p)])`` with
    ``p = q (n - 1)``. Invalid entries sort last as +inf, so the first n sorted entries are the
    valid ones and the indices never reach them.

    Args:
        values: float ``[N]``.
        valid: bool ``[N]``; valid entries must be finite.
        qs: quantile levels in [0, 1].

    Returns:
        ``[len(qs)]`` in ``values.dtype``; +inf when no entry is valid.
    """
    keyed = torch.where(valid, values, torch.full_like(values, math.inf))
    ordered = torch.sort(keyed).values
    n = valid.sum()
    q = torch.tensor(list(qs), dtype=values.dtype, device=values.device)
    pos = q * (n - 1).clamp(min=0).to(values.dtype)
    lo = pos.floor()
    frac = pos - lo
    lo = lo.long()
    hi = torch.minimum(lo + 1, (n - 1).clamp(min=0))
    v_lo, v_hi = ordered.gather(0, lo), ordered.gather(0, hi)
    # frac == 0 whenever hi would be out of the valid range, so inf - inf never enters.
    return v_lo + torch.where(frac > 0, frac * (v_hi - v_lo), torch.zeros_like(frac))


def robust_positions(losses: torch.Tensor, valid: torch.Tensor, delta: float) -> torch.Tensor:
    """``z = (l - q50) / max(q75 - q25, eps)`` over the valid losses; the ``robust`` normaliser.

    Args:
        losses: float32 ``[N]``.
        valid: bool ``[N]``; invalid entries are ignored by the quartiles and get ``z = 0``.
        delta: unused (the score scales with it); kept for the normaliser signature.

    Returns:
        float32 ``[N]`` in ``[-Z_LIMIT, Z_LIMIT]``.
    """
    q25, q50, q75 = masked_quantiles(losses, valid, (0.25, 0.5, 0.75)).unbind()
    scale = torch.clamp(q75 - q25, min=SCALE_EPS)
    z = (losses - q50) / scale
    # Only an overflow (losses near the float32 limit) can make z non-finite; clip it.
    z = torch.nan_to_num(z, nan=0.0, posinf=Z_LIMIT, neginf=-Z_LIMIT).clamp(-Z_LIMIT, Z_LIMIT)
    return torch.where(valid, z, torch.zeros_like(z))


def robust_score(z: torch.Tensor, delta: float, low_ramp: float = LOW_RAMP,
                 plateau_end: float = PLATEAU_END, fall: float = FALL) -> torch.Tensor:
    """``delta * clamp(1 + min(z / low_ramp, (plateau_end - z) / fall), 0, 1)``.

    Args:
        z: float ``[N]`` from :func:`robust_positions`.
        delta: the top score (scores lie in ``[0, delta]``).

    Returns:
        ``[N]`` scores, same dtype as ``z``.
    """
    rise = z / low_ramp
    drop = (plateau_end - z) / fall
    return delta * torch.clamp(1.0 + torch.minimum(rise, drop), 0.0, 1.0)
