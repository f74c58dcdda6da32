"""Every collective of sample reweighting, each taking its process group explicitly.

Groups (see ``ReweightGroups``):
- data parallel *without* context parallel: ranks holding different samples of the global
  micro-batch. Per-sample losses are gathered over it so that every rank normalises weights over
  the same N = DP * b samples. Never the world group: under TP every TP rank holds the same
  losses, and under PP only the last stage has losses at all.
- context parallel: ranks holding different chunks of the same samples. Per-sample (sum, count)
  are all-reduced over it before any per-sample loss is formed.

Everything here is detached: weights are constants for autograd.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class ReweightGroups:
    """Process groups used by the loss hook; ``None`` means "this rank alone"."""

    data_parallel: Optional[dist.ProcessGroup] = None
    context_parallel: Optional[dist.ProcessGroup] = None

    @classmethod
    def from_parallel_state(cls) -> "ReweightGroups":
        """Groups of ``megatron.core.parallel_state``, or none if it is not initialised.

        Keywords everywhere: megatron-core 0.19 inserted a positional parameter into these getters.
        """
        from megatron.core import parallel_state as ps

        from megatron_rw.compat import data_parallel_group

        if not ps.model_parallel_is_initialized():
            return cls()
        return cls(
            data_parallel=data_parallel_group(),
            context_parallel=ps.get_context_parallel_group(check_initialized=True),
        )


# torch 2.13 renamed all_gather_into_tensor (one flat output, no per-rank list: one kernel on NCCL).
_all_gather_flat = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


def _size(group: Optional[dist.ProcessGroup]) -> int:
    if group is None or not dist.is_initialized():
        return 1
    return dist.get_world_size(group=group)


def sum_over_context_parallel(
    stats: torch.Tensor, group: Optional[dist.ProcessGroup]
) -> torch.Tensor:
    """All-reduce (sum) per-sample statistics over the context-parallel group.

    Args:
        stats: ``[b, k]`` partial per-sample sums of this CP rank's sequence chunks.
        group: the context-parallel group.

    Returns:
        ``[b, k]`` whole-sequence sums, identical on every CP rank of the group (a new tensor).
    """
    stats = stats.detach()
    if _size(group) == 1:
        return stats
    out = stats.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
    return out


def gather_over_data_parallel(
    local: torch.Tensor, group: Optional[dist.ProcessGroup]
) -> tuple[torch.Tensor, int]:
    """All-gather per-sample values over the data-parallel group.

    Every rank of the group must pass the same shape (Megatron's micro-batch size is fixed).

    Args:
        local: ``[b]`` values of this rank's samples.
        group: the data-parallel group (without context parallel).

    Returns:
        ``([DP * b], offset)``: values of the whole global micro-batch ordered by rank *within
        ``group``*, and where this rank's rows start. The offset comes from the group itself, not
        from RANK or LOCAL_RANK, so it is right on every node and every layout.
    """
    local = local.detach().contiguous()
    world = _size(group)
    if world == 1:
        return local, 0
    out = local.new_empty((world * local.shape[0],) + tuple(local.shape[1:]))
    _all_gather_flat(out, local, group=group)
    return out, dist.get_rank(group=group) * local.shape[0]


def max_over_data_parallel(values: torch.Tensor,
                           group: Optional[dist.ProcessGroup]) -> torch.Tensor:
    """Element-wise maximum of a few scalars over the data-parallel group.

    Args:
        values: ``[k]`` this rank's values (e.g. its highest loss and minus its lowest).
        group: the data-parallel group (without context parallel).

    Returns:
        ``[k]`` the group's maxima, identical on every rank (a new tensor).
    """
    out = values.detach().clone()
    if _size(group) > 1:
        dist.all_reduce(out, op=dist.ReduceOp.MAX, group=group)
    return out


def sum_over_data_parallel(values: torch.Tensor,
                           group: Optional[dist.ProcessGroup]) -> torch.Tensor:
    """Element-wise sum of a few scalars over the data-parallel group; ``[k]`` -> ``[k]``,
    identical on every rank (a new tensor)."""
    out = values.detach().clone()
    if _size(group) > 1:
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
    return out
