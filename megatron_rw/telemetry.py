"""Optional per-sample telemetry of the loss hook: which domains the weights favour.

Pure math on one device (no ``torch.distributed``, no Megatron, no host synchronisation): the
per-domain sums are ``[sum, count]`` pairs that Megatron's own report reduction averages over
micro-batches and data-parallel ranks, so they reach logs and TensorBoard with no extra
collective. The optional sink is the one place a caller may copy values to the host, and it only
sees the rows it is handed.

Two denominators. Per-domain *means* (``[Σ over the domain's samples, samples of the domain]``)
suit a trainer that sums the pairs over its log interval before dividing (a loop of one's
own). Megatron's training loop divides every step: a domain absent from a step's global
batch would log 0/0 = NaN there. For it, *shares* divide by every valid sample of the step
instead (never 0): ``sample share/<d>`` is the domain's share of the samples and ``sample weight
share/<d>`` its share of the total weight (weights average 1, so the shares of a step sum to 1);
weight share / sample share is the domain's mean weight.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Dict, Optional, Sequence

import torch

DOMAIN_WEIGHT = "sample weight/{}"
DOMAIN_LOSS = "sample loss/{}"
DOMAIN_SHARE = "sample share/{}"
DOMAIN_WEIGHT_SHARE = "sample weight share/{}"
PREVIEW_WEIGHT = "preview weight/{}"
PREVIEW_WEIGHT_SHARE = "preview weight share/{}"

SampleSink = Callable[[Dict[str, torch.Tensor]], None]


@dataclasses.dataclass(frozen=True)
class SampleTelemetry:
    """What the loss hook reports beyond its fixed statistics, for one micro-batch.

    Attributes:
        domain_ids: int ``[b]``, the domain of each of this rank's rows (a blended dataset's
            ``dataset_id``), or None for no per-domain report.
        domain_names: name of each domain id; ids outside ``range(len(domain_names))`` are ignored.
        sink: called once per micro-batch with this rank's rows: ``loss`` (per-sample, NaN if
            invalid), ``normalised`` (what the strategy scores, over the global micro-batch: in
            ``[-delta, delta]`` for min-max strategies, IQRs from the median for ``robust``),
            ``weight``, ``valid`` and, with ``domain_ids``, ``domain``; all ``[b]`` tensors.
            Whatever it does with them (``.tolist()``) is a host sync: pass it only on the
            iterations you log.
        shares: report per-domain shares of all valid samples (:func:`domain_shares`) instead
            of per-domain means (:func:`domain_report`): for trainers that divide each step's
            pairs (Megatron-LM's), where a domain missing from a step would give 0/0.
    """

    domain_ids: Optional[torch.Tensor] = None
    domain_names: Sequence[str] = ()
    sink: Optional[SampleSink] = None
    shares: bool = False

    def per_domain(self, weights: torch.Tensor, losses: torch.Tensor, valid: torch.Tensor,
                   preview: bool = False) -> Dict[str, torch.Tensor]:
        """The per-domain pairs of ``weights`` ``[b]`` (this rank's units): means or shares as
        configured; ``preview`` names them as a preview's (weights only). {} without ids."""
        if self.domain_ids is None:
            return {}
        if self.shares:
            weight_key = PREVIEW_WEIGHT_SHARE if preview else DOMAIN_WEIGHT_SHARE
            return domain_shares(weights, valid, self.domain_ids, self.domain_names,
                                 weight_key=weight_key, share_key=None if preview else DOMAIN_SHARE)
        return domain_report(weights, losses, valid, self.domain_ids, self.domain_names,
                             weight_key=PREVIEW_WEIGHT if preview else DOMAIN_WEIGHT,
                             loss_key=None if preview else DOMAIN_LOSS)


def _membership(domain_ids: torch.Tensor, valid: torch.Tensor, groups: int) -> torch.Tensor:
    """float ``[b, G]``: 1 where a valid row belongs to domain ``g``."""
    g = torch.arange(groups, device=valid.device)
    return ((domain_ids.to(valid.device).long()[:, None] == g[None, :]) & valid[:, None]).float()


def domain_report(
    weights: torch.Tensor,
    losses: torch.Tensor,
    valid: torch.Tensor,
    domain_ids: torch.Tensor,
    domain_names: Sequence[str],
    weight_key: str = DOMAIN_WEIGHT,
    loss_key: Optional[str] = DOMAIN_LOSS,
) -> Dict[str, torch.Tensor]:
    """Per-domain ``[sum, count]`` pairs of sample weights and per-sample losses.

    Args:
        weights: float ``[b]`` this rank's sample weights.
        losses: float ``[b]`` this rank's per-sample (length-normalised) losses.
        valid: bool ``[b]``; invalid rows count for no domain.
        domain_ids: int ``[b]``.
        domain_names: names of ids ``0 .. G-1``.
        weight_key, loss_key: key formats (``loss_key=None``: no loss entries).

    Returns:
        ``{"sample weight/<name>": [Σ w, n], "sample loss/<name>": [Σ ℓ, n]}`` float32 pairs for
        every domain (``n`` may be 0 in a micro-batch; the reduction over the step sums first).
        Summed over ranks and divided, the weight entry is the domain's mean weight: > 1 means the
        reweighting moved gradient mass towards that domain.
    """
    member = _membership(domain_ids, valid, len(domain_names))          # [b, G]
    counts = member.sum(dim=0)
    w_sums = weights.float() @ member
    l_sums = torch.where(valid, losses.float(), torch.zeros_like(losses, dtype=torch.float32)) @ member
    report = {}
    for i, name in enumerate(domain_names):
        report[weight_key.format(name)] = torch.stack([w_sums[i], counts[i]])
        if loss_key is not None:
            report[loss_key.format(name)] = torch.stack([l_sums[i], counts[i]])
    return report


def domain_shares(
    weights: torch.Tensor,
    valid: torch.Tensor,
    domain_ids: torch.Tensor,
    domain_names: Sequence[str],
    weight_key: str = DOMAIN_WEIGHT_SHARE,
    share_key: Optional[str] = DOMAIN_SHARE,
) -> Dict[str, torch.Tensor]:
    """Per-domain ``[sum, valid samples]`` pairs: shares of the samples and of the weight.

    Args:
        weights: float ``[b]`` this rank's sample weights.
        valid: bool ``[b]``; invalid rows count nowhere.
        domain_ids: int ``[b]``; a valid row whose id names no domain (e.g. -1) counts in the
            denominator only.
        domain_names: names of ids ``0 .. G-1``.
        weight_key, share_key: key formats (``share_key=None``: no sample shares).

    Returns:
        ``{"sample weight share/<name>": [Σ w, N], "sample share/<name>": [n, N]}`` float32
        pairs, ``N`` this rank's valid samples (the same for every domain). Summed over
        micro-batches and ranks and divided, they are the domain's share of the step's weight
        and of its samples.
    """
    member = _membership(domain_ids, valid, len(domain_names))          # [b, G]
    total = valid.float().sum()
    w_sums = weights.float() @ member  # invalid rows: weight 0 and no membership
    counts = member.sum(dim=0)
    report = {}
    for i, name in enumerate(domain_names):
        report[weight_key.format(name)] = torch.stack([w_sums[i], total])
        if share_key is not None:
            report[share_key.format(name)] = torch.stack([counts[i], total])
    return report
