"""Documents as units (``--sample-reweight-unit document``) inside Megatron-LM's own loop.

The loss needs each token's document slot, found on *whole* rows (a slot depends on every
end-of-document label before the token). Megatron-LM's ``get_batch`` hands ``forward_step``
rows already sliced for context parallelism and, on tensor-parallel ranks other than the first,
broadcast from it; what the patch sees afterwards is only the loss mask. So the slots are found
where whole rows still exist, without changing Megatron-LM's code:

1. ``forward_step``'s data iterator is wrapped (``rw_wrap.BatchTap``): the batch dict that
   ``get_batch`` draws passes through unchanged and its ``labels`` are kept;
2. the first tensor-parallel rank computes the slots and broadcasts them over the TP group (the
   data iterator exists only there, as for Megatron-LM's own broadcast of the labels);
3. every rank slices them for context parallelism as Megatron-LM slices its batch
   (``megatron_rw.compat.slice_for_context_parallel``), which must give the loss mask's shape.

Importable without Megatron-LM; megatron.core is imported only when slots are computed.
"""

from __future__ import annotations

from typing import Optional

import torch


def document_slots(labels: Optional[torch.Tensor], loss_mask: torch.Tensor, eod: int,
                   max_documents: int) -> torch.Tensor:
    """Each token's document slot, shaped like ``loss_mask``, on every TP and CP rank.

    Collective over the tensor-parallel group when it has more than one rank (every TP rank of
    the last pipeline stage calls this for the same micro-batch).

    Args:
        labels: ``[b, s]`` whole-row labels on the first TP rank (from ``rw_wrap.BatchTap``); None
            elsewhere.
        loss_mask: ``[b, s / cp]`` this rank's loss mask.
        eod: the tokenizer's end-of-document id.
        max_documents: slots per row.

    Returns:
        int64 ``[b, s / cp]``.
    """
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    from megatron_rw.compat import slice_for_context_parallel
    from megatron_rw.units import document_units

    cp = ps.get_context_parallel_world_size()
    shape = (loss_mask.shape[0], loss_mask.shape[1] * cp)
    if labels is not None:
        slots = document_units(labels.to(loss_mask.device), eod, max_documents)
    else:
        slots = torch.empty(shape, dtype=torch.long, device=loss_mask.device)
    if ps.get_tensor_model_parallel_world_size() > 1:
        dist.broadcast(slots, src=ps.get_tensor_model_parallel_src_rank(),
                       group=ps.get_tensor_model_parallel_group())
    if tuple(slots.shape) != shape:
        raise ValueError(_unsupported(f"the data iterator's labels are {tuple(slots.shape)}, "
                                      f"the loss mask implies {shape}"))
    slots = slice_for_context_parallel({"units": slots}, ps.get_context_parallel_group())["units"]
    if slots.shape != loss_mask.shape:
        raise ValueError(_unsupported(f"context-parallel slicing gives {tuple(slots.shape)}, "
                                      f"the loss mask is {tuple(loss_mask.shape)}"))
    return slots


def _unsupported(detail: str) -> str:
    return ("--sample-reweight-unit document needs Megatron-LM's padded [micro batch, sequence] "
            f"batches (not packed THD sequences or hybrid context parallelism): {detail}")
