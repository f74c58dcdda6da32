"""One global micro-batch's weights, as this rank needs them: by gathering every loss, or from
a few all-reduced scalars (``--sample-reweight-collective``).

Both give this rank's weights ``[n]`` (its ``n`` units of the global micro-batch's ``N``), the
r they used and the batch's weight statistics (``megatron_rw.stats``), identical on every
data-parallel rank; for the training strategy and, with a preview, for the previewed one too,
at no extra collective:

- ``gather``: all-gather the ``N`` losses over the data-parallel group, compute every weight and
  keep this rank's. One collective whose size grows with ``N`` (a ring all-gather's latency grows
  with the number of ranks).
- ``reduce``: three all-reduces of a few floats, which NCCL runs as log-depth trees:
  1. MAX of (highest, -lowest) valid loss: the extremes of the min-max normalisation;
  2. MAX of (highest, -lowest) valid score ``s = f(x)``, per strategy;
  3. SUM of ``(Σ e, Σ e², valid units, NaN units)`` with ``e = exp((s - s_max) / r)``, per
     strategy.
  Then ``w = e · n_valid / Σe`` (the same softmax), ``ESS = (Σe)² / (n_valid Σe²)``, largest
  weight ``n_valid / Σe``, smallest ``n_valid · exp((s_min - s_max) / r) / Σe``. Exact in real
  arithmetic; in float32 the sums run in another order (a few ulps). ``uniform`` (and burn-in)
  still gives weights of exactly 1.0. Only where these scalars carry everything: strategies
  normalised by min and max (``robust``'s quantiles need every loss) and an r known before the
  batch (a target ESS searches r over every score); ``ReweightConfig`` refuses the rest.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Dict, List, Optional, Union

import torch
import torch.distributed as dist

from megatron_rw.collectives import (
    gather_over_data_parallel,
    max_over_data_parallel,
    sum_over_data_parallel,
)
from megatron_rw.config import ReweightConfig
from megatron_rw.ess import temperature_for_ess
from megatron_rw.schedule import temperature_at
from megatron_rw.stats import weight_statistics
from megatron_rw.strategies import get_strategy
from megatron_rw.weights import (
    loss_extremes,
    normalise_between,
    normalise_for,
    sample_scores,
    softmax_terms,
    softmax_weights,
    softmax_weights_between,
)


@dataclasses.dataclass(frozen=True)
class LocalWeights:
    """This rank's share of a global micro-batch's weighting by one strategy.

    Attributes:
        weights: float32 ``[n]``, 0 for invalid units; mean 1 over the batch's valid units.
        r: the temperature used (a float; a 0-dim tensor when a target ESS chose it).
        stats: ``megatron_rw.stats.weight_statistics``'s 0-dim tensors for the whole batch.
        normalised: float32 ``[n]``, what the strategy scored (for the per-sample sink), or
            None when not asked for.
    """

    weights: torch.Tensor
    r: Union[float, torch.Tensor]
    stats: Dict[str, torch.Tensor]
    normalised: Optional[torch.Tensor] = None


def local_weights(losses: torch.Tensor, config: ReweightConfig, iteration: int,
                  group: Optional[dist.ProcessGroup], *,
                  with_normalised: bool = False) -> List[LocalWeights]:
    """Weights of this rank's units by ``config.collective``: ``[training strategy]``, or
    ``[training strategy, preview]`` with ``config.preview``.

    Collective over the data-parallel group ``group`` (without context parallelism): every rank
    of it calls this for the same micro-batch.

    Args:
        losses: float32 ``[n]`` this rank's per-unit losses (NaN: invalid, -inf: no tokens).
        config: the settings (strategy, preview, r schedule, target ESS, delta, collective).
        iteration: optimizer steps done before this one.
        group: the data-parallel group.
        with_normalised: also return what the training strategy scored.
    """
    strategies = [config.strategy] + ([config.preview] if config.preview else [])
    if config.collective == "reduce":
        return _by_reduce(losses, config, strategies, iteration, group, with_normalised)
    return _by_gather(losses, config, strategies, iteration, group, with_normalised)


def _by_gather(losses, config, strategies, iteration, group, with_normalised):
    everyone, offset = gather_over_data_parallel(losses, group)
    mine = slice(offset, offset + losses.shape[0])
    out = []
    for k, strategy in enumerate(strategies):
        scores, ok = sample_scores(everyone, strategy, config.delta)
        r = temperature_at(config, iteration)
        if config.target_ess > 0 and math.isfinite(r):
            r = temperature_for_ess(scores, ok, config.target_ess)
        weights = softmax_weights(scores, ok, r)
        normalised = None
        if with_normalised and k == 0:
            normalised = normalise_for(strategy, everyone, ok, config.delta)[mine]
        out.append(LocalWeights(weights[mine], r, weight_statistics(weights, everyone),
                                normalised))
    return out


def _by_reduce(losses, config, strategies, iteration, group, with_normalised):
    losses = losses.detach().float()
    ok = torch.isfinite(losses)
    lmin, lmax = loss_extremes(losses, ok)
    lmax, minus_lmin = max_over_data_parallel(torch.stack([lmax, -lmin]), group).unbind()
    lmin = -minus_lmin
    x = normalise_between(losses, ok, lmin, lmax, config.delta)
    scores = [get_strategy(s)(x, config.delta).float() for s in strategies]
    inf = torch.full_like(x, math.inf)
    extremes = max_over_data_parallel(torch.stack(
        [v for s in scores for v in (torch.where(ok, s, -inf).amax(),
                                     -torch.where(ok, s, inf).amin())]), group).view(-1, 2)
    r = temperature_at(config, iteration)
    terms = [softmax_terms(s, ok, r, top) for s, top in zip(scores, extremes[:, 0])]
    counts = [ok.sum().float(), torch.isnan(losses).sum().float()]
    sums = sum_over_data_parallel(torch.stack(
        [v for e in terms for v in (e.sum(), (e * e).sum())] + counts), group)
    n_valid, n_nan = sums[-2], sums[-1]
    any_valid = n_valid > 0
    out = []
    for k, (s, (top, minus_low)) in enumerate(zip(scores, extremes)):
        total, squares = sums[2 * k], sums[2 * k + 1]
        zero = torch.zeros_like(total)
        scale = n_valid / total.clamp(min=1.0)
        stats = {
            "ess": total * total / (n_valid * squares).clamp(min=torch.finfo(torch.float32).tiny),
            "max": torch.where(any_valid, scale, zero),
            "min": torch.where(any_valid, scale * torch.exp((-minus_low - top) / r), zero),
            "loss_range": torch.where(any_valid, lmax - lmin, zero),
            "invalid": n_nan,
        }
        out.append(LocalWeights(softmax_weights_between(s, ok, r, top, total, n_valid), r, stats,
                                x if with_normalised and k == 0 else None))
    return out
