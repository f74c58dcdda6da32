"""The loss hook: Megatron-LM's ``loss_func`` contract with loss-based sample weights.

Per micro-batch, on the last pipeline stage of every (TP, CP, DP) rank, with ``U`` units per row
(1: the row is the sample; ``max_documents``: one per document, :mod:`megatron_rw.units`; a
micro-batch that Megatron packed into one row holds ``rows * U``: its original rows, never the
packed row, are the samples):

1. per-unit partial ``(sum_t mask*l, sum_t mask)`` over this rank's tokens ``[b * U, 2]``;
2. all-reduce over the context-parallel group -> whole-sequence sums, so every CP rank of a
   unit computes the same per-unit loss;
3. per-unit loss ``sum / count`` (NaN if not finite, -inf if the unit has no tokens);
4. this rank's weights of the global micro-batch (``DP * b * U`` units; mean 1 over the valid
   ones): scores, r (the schedule's, or the one with the target ESS), tempered softmax
   (:mod:`megatron_rw.weights`, :mod:`megatron_rw.ess`), from every loss all-gathered over the
   data-parallel group, or from three all-reduced scalars (:mod:`megatron_rw.batch_weights`,
   ``ReweightConfig.collective``);
5. each token loss is multiplied by its unit's weight; Megatron's own normalisation (by tokens
   and micro-batches, or per token across DP) stays untouched.

Weights are normalised per global micro-batch, not per global batch: the whole batch's losses
would be needed before any backward, which 1F1B pipelining never has. The paper does the same.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Dict, Optional, Tuple, Union

import torch

from megatron_rw.batch_weights import local_weights
from megatron_rw.collectives import ReweightGroups, sum_over_context_parallel
from megatron_rw.config import ReweightConfig
from megatron_rw.telemetry import (  # noqa: F401  (the preview keys are re-exported)
    PREVIEW_WEIGHT, PREVIEW_WEIGHT_SHARE, SampleTelemetry)
from megatron_rw.units import per_token, unit_sums

CONTRACTS = ("token_sum", "mean")

# Report keys. "lm loss" is Megatron's own key and stays *unweighted* so logs remain comparable
# with baseline runs; everything else is a [value, 1] pair that Megatron averages over
# micro-batches and ranks (identical on every rank, so the average is per micro-batch).
LM_LOSS = "lm loss"
WEIGHTED_LOSS = "weighted lm loss"
STAT_KEYS = {
    "ess": "sample weight ess",
    "max": "sample weight max",
    "min": "sample weight min",
    "loss_range": "sample loss range",
    "invalid": "invalid samples",
}
TEMPERATURE = "reweight r"
PREVIEW_ESS = "preview weight ess"


def reweighted_loss_func(
    loss_mask: torch.Tensor,
    output_tensor: torch.Tensor,
    *,
    config: ReweightConfig,
    iteration: int,
    contract: str = "token_sum",
    groups: Optional[ReweightGroups] = None,
    telemetry: Optional[SampleTelemetry] = None,
    units: Optional[torch.Tensor] = None,
    num_units: Optional[int] = None,
) -> Union[
    Tuple[torch.Tensor, torch.Tensor, Dict[str, torch.Tensor]],
    Tuple[torch.Tensor, Dict[str, torch.Tensor]],
]:
    """Drop-in replacement for Megatron-LM's ``pretrain_gpt.loss_func`` with sample weights.

    Use as ``partial(reweighted_loss_func, loss_mask, config=cfg, iteration=it)`` from
    ``forward_step``. Called on the last pipeline stage only (as Megatron calls ``loss_func``).

    Args:
        loss_mask: ``[b, s_local]`` (this CP rank's tokens of each sample); 1 = token counts.
        output_tensor: ``[b, s_local]`` per-token losses (GPTModel called with ``labels``).
        config: reweighting settings.
        iteration: optimizer steps completed before this one (selects r; burn-in = uniform).
        contract: ``"token_sum"`` returns Megatron-LM's 3-tuple
            ``(sum_tokens w*mask*l, num_tokens, report)`` for the schedules with or without
            ``calculate_per_token_loss``; ``"mean"`` returns the legacy 2-tuple
            ``(sum_tokens w*mask*l / tokens_of_the_whole_sequences, report)``.
        groups: process groups; default ``ReweightGroups.from_parallel_state()``.
        telemetry: optional per-domain report and per-sample sink (see
            :class:`~megatron_rw.telemetry.SampleTelemetry`); None costs nothing.
        units: int ``[b, s_local]``, each token's document slot in ``[0, config.max_documents)``
            (:func:`megatron_rw.units.document_units` of the whole rows, then sliced for context
            parallelism like the labels); required when ``config.unit == "document"``, where
            every (row, slot) is a unit of its own and ``b`` below becomes ``b * max_documents``.
            With packed sequences (one row per micro-batch) the unit of each token among the
            micro-batch's ``num_units`` units (:func:`megatron_rw.units.packed_units`), for
            samples (the original rows) as for documents.
            Given units are always used, whatever ``config.unit``.
        num_units: units per row of ``loss_mask`` (default ``config.units_per_row``); a packed
            micro-batch of ``rows`` original rows is one row of ``rows * config.units_per_row``.

    Returns:
        The contract's tuple. ``num_tokens`` (int) counts this rank's tokens of valid samples.
        ``report`` maps keys to ``[sum, count]`` float32 pairs: ``lm loss`` (unweighted),
        ``weighted lm loss`` and the weight statistics of :data:`STAT_KEYS`; with
        ``config.target_ess`` after burn-in the chosen r (:data:`TEMPERATURE`); with
        ``config.preview`` the preview's ESS; with ``telemetry.domain_ids`` also
        ``sample weight/<domain>`` and ``sample loss/<domain>`` (and ``preview weight/<domain>``),
        or with ``telemetry.shares`` ``sample share/<domain>``, ``sample weight share/<domain>``
        (and ``preview weight share/<domain>``).
    """
    if contract not in CONTRACTS:
        raise ValueError(f"contract must be one of {CONTRACTS}, got {contract!r}")
    if groups is None:
        groups = ReweightGroups.from_parallel_state()
    by_unit = units is not None  # documents, or the rows of a packed micro-batch
    if config.unit == "document" and units is None:
        raise ValueError("sample reweighting with unit 'document' needs each token's document "
                         "slot (units=megatron_rw.units.document_units(labels, eod, "
                         "config.max_documents))")
    b = output_tensor.shape[0]
    k = config.units_per_row if num_units is None else num_units
    # fp32 whatever the model's dtype; the view mirrors Megatron-LM's flat sums below.
    losses = output_tensor.float().reshape(b, -1)
    mask = loss_mask.float().reshape(b, -1)

    with torch.no_grad():
        local_counts = mask.sum(dim=1)
        if by_unit:
            partial = unit_sums(torch.stack([losses * mask, mask], dim=2), units, k)  # [b*k, 2]
        else:
            partial = torch.stack([(losses * mask).sum(dim=1), local_counts], dim=1)  # [b, 2]
        sums, counts = sum_over_context_parallel(partial, groups.context_parallel).unbind(1)
        # Length-normalised loss per unit. A unit with tokens whose loss is not finite is
        # invalid and marked NaN (counted as `invalid samples`); one without tokens (Megatron's
        # padding rows, unused document slots) is marked -inf. Both get weight 0.
        per_unit = sums / counts
        present = counts > 0
        valid = present & torch.isfinite(per_unit)
        per_unit = torch.where(valid, per_unit, torch.where(
            present, torch.full_like(per_unit, float("nan")), torch.full_like(per_unit, -math.inf)))

        wants_rows = telemetry is not None and telemetry.sink is not None
        mine, *preview = local_weights(per_unit, config, iteration, groups.data_parallel,
                                       with_normalised=wants_rows)
        weights, r = mine.weights, mine.r
        if by_unit:
            token_valid = per_token(valid, units, k)
            token_weights = (mask * per_token(weights, units, k)).view(-1)
            num_tokens = torch.where(token_valid, mask, torch.zeros_like(mask)).sum()
        else:
            token_valid = valid[:, None]
            token_weights = (mask * weights[:, None]).view(-1)
            num_tokens = torch.where(valid, local_counts, torch.zeros_like(local_counts)).sum()

    # torch.where, not a multiply by 0: NaN * 0 is NaN. With every sample valid it returns the
    # losses unchanged, and with weights of exactly 1.0 (uniform) token_weights == mask, so the
    # flat product-and-sum is the same floating-point computation as Megatron-LM's baseline.
    kept = torch.where(token_valid, losses, torch.zeros_like(losses)).view(-1)
    weighted_sum = torch.sum(kept * token_weights)

    with torch.no_grad():
        unweighted_sum = torch.sum(kept * mask.view(-1))
        report = {
            LM_LOSS: torch.stack([unweighted_sum, num_tokens]),
            WEIGHTED_LOSS: torch.stack([weighted_sum.detach(), num_tokens]),
        }
        one = torch.ones((), dtype=torch.float32, device=weights.device)
        for name, value in mine.stats.items():
            report[STAT_KEYS[name]] = torch.stack([value.float(), one])
        if isinstance(r, torch.Tensor):
            report[TEMPERATURE] = torch.stack([r.float(), one])
        if (telemetry is not None and telemetry.domain_ids is not None
                and config.unit == "document"):
            # A document belongs to its row's domain (domain_ids: one per original row, also
            # when the micro-batch was packed into one row).
            telemetry = dataclasses.replace(telemetry, domain_ids=telemetry.domain_ids
                                            .repeat_interleave(config.units_per_row))
        if telemetry is not None:
            _telemetry(telemetry, report, per_unit, weights, valid, mine.normalised)
        if preview:
            report[PREVIEW_ESS] = torch.stack([preview[0].stats["ess"].float(), one])
            if telemetry is not None:
                report.update(telemetry.per_domain(preview[0].weights, per_unit, valid,
                                                   preview=True))

    if contract == "mean":
        # Legacy contract: mean over the whole sequences' tokens (summed over CP, as Megatron-LM's
        # old loss_func did); the schedule then multiplies by the CP size.
        total = torch.where(valid, counts, torch.zeros_like(counts)).sum().clamp(min=1.0)
        return weighted_sum / total, report
    return weighted_sum, num_tokens.to(torch.int), report


def _telemetry(telemetry: SampleTelemetry, report: dict, per_sample, weights, valid,
               normalised: Optional[torch.Tensor]) -> None:
    """Add the per-domain pairs to ``report`` and hand this rank's rows to the sink
    (``normalised``: what the strategy scored, normalised over the whole global micro-batch)."""
    report.update(telemetry.per_domain(weights, per_sample, valid))
    if telemetry.sink is not None:
        rows = {"loss": per_sample, "normalised": normalised, "weight": weights, "valid": valid}
        if telemetry.domain_ids is not None:
            rows["domain"] = telemetry.domain_ids
        telemetry.sink(rows)
