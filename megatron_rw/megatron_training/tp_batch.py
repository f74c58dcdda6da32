"""A micro-batch from the first tensor-parallel rank to the others, on every megatron.training.

The helper that does it moved and changed between releases (each detected here by what exists
and by its signature, the one place this script looks):

- megatron-core 0.19: ``megatron.core.utils.get_batch_on_this_tp_rank(batch, has_cu_seqlens=...,
  ...)``, the batch drawn by the caller;
- 0.18: the same function with ``is_sft`` where 0.19 has ``has_cu_seqlens``;
- 0.17: ``megatron.training.utils.get_batch_on_this_tp_rank(data_iterator, mtp_on_this_rank)``,
  which draws the batch itself and sizes what the other ranks receive by ``--micro-batch-size``.
"""

from __future__ import annotations

import inspect
from typing import Dict, Optional

import torch

from megatron.core import mpu

try:
    from megatron.core.utils import get_batch_on_this_tp_rank as _core_broadcast
except ImportError:  # megatron-core 0.17
    _core_broadcast = None
_NO_PACKING = ({"has_cu_seqlens": False} if _core_broadcast is not None and "has_cu_seqlens"
               in inspect.signature(_core_broadcast).parameters else {"is_sft": False})


def batch_on_this_tp_rank(data_iterator, fields, args, micro_batch_size: int,
                          mtp: bool) -> Dict[str, Optional[torch.Tensor]]:
    """The next micro-batch's ``fields`` on every rank of the TP group, each ``[b, s]``
    (``attention_mask`` ``[b, 1, s, s]`` where the loader makes one; None where this pipeline
    stage needs none). The first TP rank draws from ``data_iterator``; ``micro_batch_size`` is
    ``b`` (the receivers allocate by it). Collective over the tensor-parallel group."""
    if _core_broadcast is None:
        from megatron.training.utils import get_batch_on_this_tp_rank

        # It sizes the receivers' buffers by args.micro_batch_size: this micro-batch's, here.
        kept, args.micro_batch_size = args.micro_batch_size, micro_batch_size
        try:
            batch = get_batch_on_this_tp_rank(data_iterator, mtp_on_this_rank=mtp)
        finally:
            args.micro_batch_size = kept
        return {k: batch.get(k) for k in fields}
    tp_rank = mpu.get_tensor_model_parallel_rank()
    drawn = next(data_iterator) if tp_rank == 0 else {}
    # The batch fields only: a blend's samples also carry dataset_id ([b]), which context
    # parallel slicing would try to cut along a sequence dimension it does not have.
    batch = _core_broadcast(
        {k: (v.cuda(non_blocking=True) if isinstance(v, torch.Tensor) else v)
         for k, v in drawn.items() if k in fields},
        **_NO_PACKING, is_hybrid_cp=False,
        create_attention_mask_in_dataloader=args.create_attention_mask_in_dataloader,
        broadcast_src_rank=mpu.get_tensor_model_parallel_src_rank(),
        broadcast_group=mpu.get_tensor_model_parallel_group(),
        cp_size=args.context_parallel_size, tp_rank=tp_rank,
        micro_batch_size=micro_batch_size, seq_length=args.seq_length,
        mtp_on_this_rank=mtp, pipeline_model_parallel_size=args.pipeline_model_parallel_size,
        is_pipeline_first_stage=mpu.is_pipeline_first_stage(),
        is_pipeline_last_stage=mpu.is_pipeline_last_stage())
    return {k: batch.get(k) for k in fields}
