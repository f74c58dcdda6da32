"""Per-sample weights from per-sample losses: normalise, score, tempered softmax.

Pure math on one device: no ``torch.distributed``, no Megatron, no host synchronisation
(no ``.item()``, no Python branching on tensor values), so it can sit in every micro-batch.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import torch

from megatron_rw.strategies import StrategyFn, get_normaliser, get_strategy

# Floor of the loss range in the normalisation. When every valid loss is (almost) equal the
# normalised losses become 0 instead of 0/0, which every strategy maps to equal weights.
RANGE_EPS = 1e-6


def normalise_losses(
    losses: torch.Tensor, valid: torch.Tensor, delta: float
) -> torch.Tensor:
    """Rescale valid losses to ``[-delta, delta]``: the lowest valid loss -> -delta, highest -> +delta.

    ``x = delta * ((l - lmin) - (lmax - l)) / max(lmax - lmin, eps)``, which equals the paper's
    ``delta * (2 l - lmax - lmin) / (lmax - lmin)`` but cannot overflow on huge losses.

    Args:
        losses: float32 ``[N]``.
        valid: bool ``[N]``; invalid entries are ignored by min/max and get ``x = 0``.
        delta: half-width of the target interval.

    Returns:
        float32 ``[N]`` in ``[-delta, delta]``.
    """
    lmin, lmax = loss_extremes(losses, valid)
    return normalise_between(losses, valid, lmin, lmax, delta)


def loss_extremes(losses: torch.Tensor, valid: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """0-dim ``(lowest, highest)`` valid loss; ``(inf, -inf)`` with none valid."""
    inf = torch.full_like(losses, math.inf)
    return torch.where(valid, losses, inf).amin(), torch.where(valid, losses, -inf).amax()


def normalise_between(losses: torch.Tensor, valid: torch.Tensor, lmin: torch.Tensor,
                      lmax: torch.Tensor, delta: float) -> torch.Tensor:
    """:func:`normalise_losses` with the extremes given (those of the whole global micro-batch
    when ``losses`` holds one rank's share of it): float32 ``[n]`` in ``[-delta, delta]``, 0 where
    not valid."""
    # With no valid sample lmax - lmin = -inf; the floor keeps the division finite and the
    # final where discards the (meaningless) values.
    span = torch.clamp(lmax - lmin, min=RANGE_EPS)
    x = delta * ((losses - lmin) - (lmax - losses)) / span
    return torch.where(valid, x.clamp(-delta, delta), torch.zeros_like(x))


def normalise_for(
    strategy: Union[str, StrategyFn], losses: torch.Tensor, valid: torch.Tensor, delta: float
) -> torch.Tensor:
    """What ``strategy`` scores: its own normaliser's output, else :func:`normalise_losses`.

    Args:
        strategy: a registered strategy name or function.
        losses: float32 ``[N]``.
        valid: bool ``[N]``.
        delta: half-width of the normalised-loss interval.

    Returns:
        float32 ``[N]``; 0 for invalid entries.
    """
    normalise = get_normaliser(strategy) or normalise_losses
    return normalise(losses, valid, delta)


def sample_scores(
    losses: torch.Tensor,
    strategy: Union[str, StrategyFn],
    delta: float = 1.0,
    valid: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Strategy scores of the normalised losses (the strategy's own normaliser, else min-max),
    and which samples count.

    Args:
        losses: ``[N]`` per-sample losses, any float dtype, any device.
        strategy: a registered strategy name or a callable ``f(x, delta)``.
        delta: half-width of the normalised-loss interval.
        valid: optional bool ``[N]``; non-finite losses are always invalid.

    Returns:
        ``(scores, ok)``: float32 ``[N]`` scores (meaningless where not ok) and bool ``[N]``.
    """
    fn = get_strategy(strategy) if isinstance(strategy, str) else strategy
    losses = losses.detach().float()
    ok = torch.isfinite(losses)
    if valid is not None:
        ok = ok & valid.to(device=losses.device, dtype=torch.bool)
    return fn(normalise_for(strategy, losses, ok, delta), delta).float(), ok


def softmax_weights(
    scores: torch.Tensor, ok: torch.Tensor, r: Union[float, torch.Tensor]
) -> torch.Tensor:
    """Tempered softmax of the scores, rescaled to mean 1 over the ``ok`` samples.

    Args:
        scores: float32 ``[N]``.
        ok: bool ``[N]``; other samples get weight 0.
        r: temperature: a Python float (``math.inf`` for uniform) or a 0-dim tensor on the
            scores' device (e.g. from :func:`megatron_rw.ess.temperature_for_ess`); either way
            no host sync.

    Returns:
        float32 ``[N]``: 0 where not ok, mean 1 over ok samples; all 0 if none is ok.
    """
    neg_inf = torch.full_like(scores, -math.inf)
    top = torch.where(ok, scores, neg_inf).amax()
    # Subtracting the max keeps exp() <= 1 (no overflow for small r); the max term is exp(0) = 1,
    # so the sum is >= 1 whenever a sample is valid, and clamping at 1 only matters when none is.
    logits = torch.where(ok, (scores - top) / r, neg_inf)
    unnorm = torch.exp(logits)
    total = unnorm.sum().clamp(min=1.0)
    n_valid = ok.sum().float()
    # (n_valid / total) is exactly 1.0 when every score ties, so uniform weights are exactly 1.
    return unnorm * (n_valid / total)


def softmax_weights_between(scores: torch.Tensor, ok: torch.Tensor, r: Union[float, torch.Tensor],
                            top: torch.Tensor, total: torch.Tensor,
                            n_valid: torch.Tensor) -> torch.Tensor:
    """:func:`softmax_weights` of one rank's share of the scores, with the global micro-batch's
    highest valid score ``top``, its sum ``total`` of ``exp((s - top) / r)`` over valid scores
    and its count ``n_valid`` of valid scores (0-dim tensors, the same on every rank).

    Returns:
        float32 ``[n]``: 0 where not ok; over the whole global micro-batch, mean 1.
    """
    unnorm = softmax_terms(scores, ok, r, top)
    return unnorm * (n_valid / total.clamp(min=1.0))


def softmax_terms(scores: torch.Tensor, ok: torch.Tensor, r: Union[float, torch.Tensor],
                  top: torch.Tensor) -> torch.Tensor:
    """``exp((s - top) / r)`` where ok, 0 elsewhere (the unnormalised tempered softmax)."""
    neg_inf = torch.full_like(scores, -math.inf)
    return torch.exp(torch.where(ok, (scores - top) / r, neg_inf))


def compute_sample_weights(
    losses: torch.Tensor,
    strategy: Union[str, StrategyFn],
    r: float,
    delta: float = 1.0,
    valid: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Loss-based sample weights with mean exactly 1 over the valid samples.

    ``w_i = N_valid * exp((f_i - max f) / r) / sum_valid exp((f_j - max f) / r)`` where
    ``f = strategy(normalise(losses))`` (``normalise`` is the strategy's own normaliser if it
    was registered with one, else :func:`normalise_losses`). This is the closed-form maximiser of
    ``sum_i w_i f_i - r KL(w || uniform)`` on the simplex, rescaled so that the weights multiply
    per-sample losses without changing the loss scale. ``r = inf`` gives uniform weights, and the
    ``uniform`` strategy gives weights that are exactly 1.0 (bit-for-bit), whatever ``r``.

    Weights are constants for autograd: no gradient flows through them.

    Args:
        losses: ``[N]`` per-sample (length-normalised) losses, any float dtype, any device.
            Should be identical on every rank that uses the weights (gathered over data parallel).
        strategy: a registered strategy name or a callable ``f(x, delta)``.
        r: temperature (> 0; ``math.inf`` for uniform). A Python float, so no host sync.
        delta: half-width of the normalised-loss interval (the paper uses 1).
        valid: optional bool ``[N]``; ``False`` marks samples to ignore (e.g. all-masked padding).
            Non-finite losses are always invalid.

    Returns:
        float32 ``[N]`` on ``losses.device``; 0 for invalid samples, mean 1 over valid samples.
        If no sample is valid every weight is 0 (never NaN).
    """
    if not (r > 0):
        raise ValueError(f"reweighting temperature r must be > 0, got {r}")
    scores, ok = sample_scores(losses, strategy, delta, valid)
    return softmax_weights(scores, ok, r)
