"""Optional per-sample telemetry of the loss hook: which domains the weights favour.

Pure math on one device (no ``torch.distributed``, no Megatron, no host synchronisation): the
per-domain sums are ``[sum, count]`` pairs that Megatron's own report reduction averages over
micro-batches and data-parallel ranks, so they reach logs and TensorBoard with no extra
collective. The optional sink is the one place a caller may copy values to the host, and it only
sees the rows it is handed.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Dict, Optional, Sequence

import torch

DOMAIN_WEIGHT = "sample weight/{}"
DOMAIN_LOSS = "sample loss/{}"

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
    """

    domain_ids: Optional[torch.Tensor] = None
    domain_names: Sequence[str] = ()
    sink: Optional[SampleSink] = None


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
    g = torch.arange(len(domain_names), device=weights.device)
    member = ((domain_ids.to(weights.device).long()[:, None] == g[None, :])
              & valid[:, None]).float()                                  # [b, G]
    counts = member.sum(dim=0)
    w_sums = weights.float() @ member
    l_sums = torch.where(valid, losses.float(), torch.zeros_like(losses, dtype=torch.float32)) @ member
    report = {}
    for i, name in enumerate(domain_names):
        report[weight_key.format(name)] = torch.stack([w_sums[i], counts[i]])
        if loss_key is not None:
            report[loss_key.format(name)] = torch.stack([l_sums[i], counts[i]])
    return report
