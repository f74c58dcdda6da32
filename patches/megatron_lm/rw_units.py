"""Each token's reweighting unit inside Megatron-LM's own loop: documents as units
(``--sample-reweight-unit document``) and packed micro-batches.

The loss needs each token's unit, found on *whole* rows (a document slot depends on every
end-of-document label before the token). Megatron-LM's ``get_batch`` hands ``forward_step``
rows already sliced for context parallelism and, on tensor-parallel ranks other than the first,
broadcast from it; what the patch sees afterwards is only the loss mask. So the units are found
where whole rows still exist, without changing Megatron-LM's code:

1. ``forward_step``'s data iterator is wrapped (``rw_wrap.BatchTap``): the batch dict that
   ``get_batch`` draws passes through unchanged and its ``labels`` (and ``cu_seqlens``) are kept;
2. the first tensor-parallel rank computes the units and broadcasts them over the TP group (the
   data iterator exists only there, as for Megatron-LM's own broadcast of the labels);
3. every rank slices them for context parallelism as Megatron-LM slices its batch
   (``megatron_rw.compat.slice_for_context_parallel``), which must give the loss mask's shape.

Packed sequences (``--dataloader-inter-document-masking`` or ``--sft``): Megatron-LM 0.19
flattens a micro-batch into one row ``[1, rows * seq]`` (0.16 packs only with a micro-batch of
one row) and gives the document boundaries as ``cu_seqlens``. The units are then the original
rows, or with documents as units the ``cu_seqlens`` segments of each row
(:func:`megatron_rw.units.packed_units`), never the flattened row. Context parallelism slices a
packed row per document through Transformer Engine under ``--sft`` (and in 0.16); that layout
is refused at the first step (:func:`check_packing`), as is hybrid context parallelism.

Importable without Megatron-LM; megatron.core is imported only when units are computed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch


@dataclass(frozen=True)
class Packing:
    """How Megatron-LM packs this run's micro-batches (from its parsed args).

    Attributes:
        seq_length: ``--seq-length``, tokens per original row.
        flag: the flag that packs (``--sft`` or ``--dataloader-inter-document-masking``), for
            messages.
        zigzag_cp: context parallelism slices the flattened row in 2 * CP equal chunks, as an
            unpacked row (0.19's inter-document masking), rather than per document.
    """

    seq_length: int
    flag: str
    zigzag_cp: bool


def packing_of(args) -> Optional[Packing]:
    """The run's :class:`Packing`, None when its micro-batches are not packed."""
    sft = bool(getattr(args, "sft", False))
    masking = bool(getattr(args, "dataloader_inter_document_masking", False))
    if not (sft or masking):
        return None
    return Packing(seq_length=args.seq_length,
                   flag="--sft" if sft else "--dataloader-inter-document-masking",
                   zigzag_cp=masking and not sft)


def check_packing(packing: Optional[Packing], args) -> None:
    """Refuse, before the first step, packed layouts whose units this patch cannot place."""
    if packing is None:
        return
    if getattr(args, "hybrid_context_parallel", False):
        raise ValueError(f"megatron-rw: {packing.flag} with --hybrid-context-parallel is not "
                         "supported (each sequence's context-parallel group varies per batch)")
    if getattr(args, "context_parallel_size", 1) > 1 and not packing.zigzag_cp:
        raise ValueError(
            f"megatron-rw: {packing.flag} with --context-parallel-size "
            f"{args.context_parallel_size} is not supported: Megatron slices each packed "
            "document across context-parallel ranks through Transformer Engine, and the patch "
            "cannot place those tokens in their rows; use --dataloader-inter-document-masking "
            "without --sft, or no context parallelism")


def unit_ids(kept: Dict[str, torch.Tensor], loss_mask: torch.Tensor, *, eod: Optional[int],
             per_row: int, packing: Optional[Packing]
             ) -> Tuple[Optional[torch.Tensor], Optional[int]]:
    """Each token's unit, shaped like ``loss_mask``, on every TP and CP rank, and the number of
    units per row of ``loss_mask`` (``reweighted_loss_func``'s ``units`` and ``num_units``).

    Collective over the tensor-parallel group when it has more than one rank (every TP rank of
    the last pipeline stage calls this for the same micro-batch).

    Args:
        kept: what ``rw_wrap.BatchTap`` kept of the batch on the first TP rank (``labels``
            ``[b, s]``, ``cu_seqlens`` ``[b, n]`` when packed); {} elsewhere.
        loss_mask: this rank's loss mask, ``[b, s / cp]`` or, packed, ``[1, b * s / cp]``.
        eod: the tokenizer's end-of-document id (documents in unpacked rows end at it).
        per_row: ``ReweightConfig.units_per_row`` (1: samples; documents: max_documents).
        packing: the run's packing, None for padded ``[b, s]`` micro-batches.

    Returns:
        (None, None) for samples of unpacked rows (the loss's own per-row path); otherwise int64
        ids like ``loss_mask`` and the units per row of ``loss_mask``.
    """
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    from megatron_rw.compat import slice_for_context_parallel
    from megatron_rw.units import document_units, packed_units

    if packing is None and per_row == 1:
        return None, None
    cp = ps.get_context_parallel_world_size()
    shape = (loss_mask.shape[0], loss_mask.shape[1] * cp)
    if packing is None:
        num_units = per_row
    else:
        rows, rest = divmod(shape[1], packing.seq_length)
        if shape[0] != 1 or rest:
            raise ValueError(_unsupported(packing, f"the loss mask {tuple(loss_mask.shape)} is "
                                          f"not one row of whole {packing.seq_length}-token rows"))
        num_units = rows * per_row
    labels = kept.get("labels")
    ids = torch.empty(shape, dtype=torch.long, device=loss_mask.device)
    if labels is not None:  # the first TP rank
        if packing is None:
            ids = document_units(labels.to(loss_mask.device), eod, per_row)
        elif kept.get("cu_seqlens") is None:
            raise ValueError(_unsupported(packing, "the batch carries no cu_seqlens, so its "
                                          "rows' documents are unknown"))
        else:
            cu = kept["cu_seqlens"].to(loss_mask.device).reshape(-1, kept["cu_seqlens"].shape[-1])
            ids = packed_units(cu, packing.seq_length, per_row)
    if ps.get_tensor_model_parallel_world_size() > 1:
        dist.broadcast(ids, src=ps.get_tensor_model_parallel_src_rank(),
                       group=ps.get_tensor_model_parallel_group())
    if tuple(ids.shape) != shape:
        raise ValueError(_unsupported(packing, f"the data iterator's rows give units "
                                      f"{tuple(ids.shape)}, the loss mask implies {shape}"))
    if cp > 1:
        ids = slice_for_context_parallel({"units": ids},
                                         ps.get_context_parallel_group())["units"]
    if ids.shape != loss_mask.shape:
        raise ValueError(_unsupported(packing, f"context-parallel slicing gives "
                                      f"{tuple(ids.shape)}, the loss mask is "
                                      f"{tuple(loss_mask.shape)}"))
    return ids, num_units


def _unsupported(packing: Optional[Packing], detail: str) -> str:
    if packing is None:
        return ("--sample-reweight-unit document needs Megatron-LM's padded [micro batch, "
                f"sequence] batches or packed ones with cu_seqlens: {detail}")
    return (f"megatron-rw cannot find the rows of {packing.flag}'s packed micro-batches "
            f"(refusing to weigh the flattened row as one sample): {detail}")
