"""Per-domain weights (and a preview's) inside Megatron-LM's own loop.

A blended dataset's samples carry ``dataset_id``, the index of their prefix in the training
blend; Megatron-LM's ``get_batch`` drops it. As for document slots (rw_units.py), the patch keeps
it from the raw batch that ``forward_step``'s data iterator yields (``rw_wrap.BatchTap``), on the
first tensor-parallel rank, and broadcasts it over the TP group. The loss hook then reports
per-domain *shares* (``megatron_rw.telemetry.domain_shares``): Megatron-LM divides each step's
``[sum, count]`` pairs, and a per-domain mean would be 0/0 in a step that drew no sample of the
domain.

Reported only while training (the model in training mode): evaluation batches index the
validation blend, whose members may differ. Importable without Megatron-LM.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch


def domain_names(args) -> List[str]:
    """Display names of the training blend's members in ``dataset_id`` order (``--data-path``,
    ``--data-args-path``, ``--train-data-path`` or ``--per-split-data-args-path``, as Megatron-LM
    reads them); [] when there is no blend of two or more prefixes (no ``dataset_id`` then)."""
    from megatron_rw.data.domains import domain_name
    try:
        from megatron.training.utils import get_blend_and_blend_per_split
    except ImportError:  # in every version read (core_v0.16.1-0.19.0); otherwise no report
        return []

    blend, per_split = get_blend_and_blend_per_split(args)
    train = blend if blend is not None else (per_split[0] if per_split else None)
    if train is None or len(train[0]) < 2:
        return []
    return unique([domain_name(p) for p in train[0]])


def unique(names: Sequence[str]) -> List[str]:
    """``names`` with repeats numbered (``books``, ``books#2``): two prefixes in different
    folders may share a basename, and equal report keys would overwrite each other."""
    seen, out = {}, []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return out


def row_domains(dataset_id: Optional[torch.Tensor], rows: int,
                device: torch.device) -> torch.Tensor:
    """Each row's ``dataset_id`` on every TP rank; -1 where the batch carried none.

    Collective over the tensor-parallel group when it has more than one rank (every TP rank of
    the last pipeline stage calls this for the same micro-batch).

    Args:
        dataset_id: int ``[b]`` from the data iterator on the first TP rank; None elsewhere (and
            on the first rank when the batch has no ``dataset_id``).
        rows: ``b``, the micro-batch size (the loss mask's first dimension).
        device: where the loss is computed.

    Returns:
        int64 ``[b]``.
    """
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    ids = torch.full((rows,), -1, dtype=torch.long, device=device)
    first = ps.get_tensor_model_parallel_rank() == 0
    if first and dataset_id is not None:
        if tuple(dataset_id.shape) != (rows,):
            raise ValueError(f"the batch's dataset_id is {tuple(dataset_id.shape)}, the loss "
                             f"mask has {rows} rows")
        ids.copy_(dataset_id.to(device=device, dtype=torch.long))
    if ps.get_tensor_model_parallel_world_size() > 1:
        dist.broadcast(ids, src=ps.get_tensor_model_parallel_src_rank(),
                       group=ps.get_tensor_model_parallel_group())
    return ids
