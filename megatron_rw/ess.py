"""The temperature that gives a micro-batch's weights a chosen effective sample size.

A fixed r does not transfer: the same r gives peaked weights when scores spread widely and
nearly uniform ones when they bunch up, and the spread changes with the batch size, the data and
the point in training. Fixing the *effective sample size* instead,
``ESS(w) = (Σ w)² / (N Σ w²)`` (1 = uniform, 1/N = one sample takes everything), fixes how much
of the batch the weights effectively keep, whatever the scores look like.

Pure math on one device: no ``torch.distributed``, no host synchronisation. The search runs a
fixed number of vectorised rounds, so its cost and its result depend only on the scores (every
data-parallel rank, holding the same gathered scores, picks the same r).
"""

from __future__ import annotations

import math

import torch

# Search range of t = spread(f) / r, the largest logit gap. At t = 1e-3 every weight is within
# 0.1 % of 1 (ESS > 0.999999); at t = 1e3 every sample below the top score has weight
# < exp(-1000 * gap / spread), i.e. the ESS is as low as any r can make it.
T_MIN, T_MAX = 1e-3, 1e3
POINTS = 32
ROUNDS = 3
"""Each round evaluates POINTS temperatures log-spaced over the current bracket and keeps the
interval where the ESS crosses the target: after 3 rounds of 32 the bracket is
``ln(1e6) / 31³ ≈ 5e-4`` wide in ln t, so the ESS error is far below the 0.01 asked of it."""


def ess_of_logits(logits: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """ESS fraction of softmax weights, for many temperatures at once.

    Args:
        logits: float32 ``[K, N]``, each row ``(f - max f) / r_k`` (so every entry ``<= 0``);
            finite in every column, invalid ones included (they are zeroed by multiplication).
        valid: bool ``[N]``; invalid columns are ignored.

    Returns:
        float32 ``[K]``: ``(Σ e)² / (N_valid Σ e²)`` per row, in ``(0, 1]``.
    """
    # Multiplying by the mask, not torch.where: the same values (exp(logits) <= 1 is finite, so
    # invalid columns become exactly 0), but a broadcast where over [K, N] is slow on a CPU.
    e = torch.exp(logits) * valid.to(logits.dtype)
    s1 = e.sum(dim=1)
    s2 = (e * e).sum(dim=1)
    n = valid.sum().float().clamp(min=1.0)
    return s1 * s1 / (n * s2).clamp(min=torch.finfo(torch.float32).tiny)


def temperature_for_ess(scores: torch.Tensor, valid: torch.Tensor, target: float) -> torch.Tensor:
    """The temperature r whose softmax weights ``∝ exp(f / r)`` have ESS fraction ``target``.

    The ESS falls monotonically as r falls (the tilted mean of f rises with 1/r), so a bracketing
    search finds it. Unreachable targets give the nearest reachable r: a target above the ESS at
    ``t = T_MIN`` gives that (practically uniform) r; one below the ESS at ``t = T_MAX`` (the
    floor set by ties at the top score) gives that r.

    Args:
        scores: float32 ``[N]`` strategy scores of the global micro-batch.
        valid: bool ``[N]``; only valid scores count.
        target: wanted ESS fraction in ``(0, 1]``.

    Returns:
        0-dim float32 tensor r > 0 on ``scores.device``. When every valid score is equal (or
        there is at most one valid sample) any r gives ESS 1 and the result is ``spread / T_MIN``
        with the spread floored, i.e. a large finite r.
    """
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target ESS must be in (0, 1], got {target}")
    scores = scores.float()
    neg_inf = torch.full_like(scores, -math.inf)
    top = torch.where(valid, scores, neg_inf).amax()
    bottom = torch.where(valid, scores, -neg_inf).amin()
    spread = torch.clamp(top - bottom, min=1e-12)
    gaps = torch.where(valid, (scores - top) / spread, torch.zeros_like(scores))  # in [-1, 0]

    frac = torch.linspace(0.0, 1.0, POINTS, device=scores.device)
    # torch.full, not torch.tensor: a fill kernel, where torch.tensor would copy from host memory.
    lo = torch.full((), math.log(T_MIN), device=scores.device)
    hi = torch.full((), math.log(T_MAX), device=scores.device)
    for _ in range(ROUNDS):
        log_t = lo + (hi - lo) * frac                                   # [P], increasing
        ess = ess_of_logits(torch.exp(log_t)[:, None] * gaps[None, :], valid)  # [P], decreasing
        # Points still at or above the target: the crossing lies between the last of them and
        # the next point. index_select with a tensor index keeps the choice on the device
        # (indexing with a 0-dim tensor would read it on the host).
        above = (ess >= target).sum().view(1)
        lo = log_t.index_select(0, (above - 1).clamp(0, POINTS - 1)).squeeze(0)
        hi = log_t.index_select(0, above.clamp(0, POINTS - 1)).squeeze(0)
    # The last round's bracket endpoint whose ESS is nearer the target.
    ends = torch.stack([lo, hi])
    ess_ends = ess_of_logits(torch.exp(ends)[:, None] * gaps[None, :], valid)
    best = ends.index_select(0, (ess_ends - target).abs().argmin().view(1)).squeeze(0)
    return spread / torch.exp(best)
