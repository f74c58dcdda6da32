"""Every place where megatron-core's API differs within the supported range (0.16.1 - 0.19.x).

Differences are detected by feature (a signature, an attribute), never by version string, and
live only here: the rest of the package calls these functions and runs one code path on every
version. Each entry names what each side of the range does.
"""

from __future__ import annotations

import inspect
from typing import Dict, Optional

import torch
import torch.distributed as dist

from megatron.core import parallel_state as _ps
from megatron.core.utils import get_batch_on_this_cp_rank as _get_batch_on_this_cp_rank

# megatron-core 0.16.1 (core/utils.py:1994): get_batch_on_this_cp_rank(batch, cp_group=None),
#   where None falls back to parallel_state's context-parallel group.
# megatron-core 0.19.x (core/utils.py:2612): get_batch_on_this_cp_rank(batch, is_hybrid_cp,
#   cp_group=None, ...), where None reaches torch.distributed.get_world_size(None): the WORLD
#   group. Leaving cp_group out there silently slices every sequence across all ranks.
_CP_SLICE_TAKES_HYBRID = "is_hybrid_cp" in inspect.signature(
    _get_batch_on_this_cp_rank).parameters


def slice_for_context_parallel(batch: Dict[str, Optional[torch.Tensor]],
                               cp_group: dist.ProcessGroup) -> Dict[str, Optional[torch.Tensor]]:
    """This context-parallel rank's part of a micro-batch (Megatron's load-balanced layout).

    Every ``[b, s, ...]`` tensor (``attention_mask``: ``[b, 1, s, s]``) keeps sequence chunks
    ``r`` and ``2cp - 1 - r`` of ``2cp`` equal chunks, ``r`` being the rank in ``cp_group``.

    Args:
        batch: tensors of whole sequences; None values stay None. Not modified.
        cp_group: the context-parallel group, always explicit (a size-1 group without CP):
            megatron-core 0.19 reads a missing group as the world group.

    Returns:
        A new dict with this rank's chunks (the same tensors when the group has one rank).
    """
    if cp_group is None:
        raise ValueError("slice_for_context_parallel needs the context-parallel group; None "
                         "means the WORLD group in megatron-core >= 0.19")
    if _CP_SLICE_TAKES_HYBRID:
        return _get_batch_on_this_cp_rank(dict(batch), is_hybrid_cp=False, cp_group=cp_group)
    return _get_batch_on_this_cp_rank(dict(batch), cp_group=cp_group)


# megatron-core 0.16.1 - 0.18.x: get_data_parallel_group(with_context_parallel=False, ...): every
#   rank that holds distinct micro-batches, tensor/pipeline/context ranks excluded.
# megatron-core 0.19.x (parallel_state.py:1758): get_data_parallel_group(with_context_parallel,
#   with_gtp_remat=True, ...). Weight-sharded tensor parallelism (GTP,
#   --tensor-parallel-num-weight-shards) adds a gtp_remat axis whose ranks hold distinct
#   micro-batches; with_gtp_remat=False returns only the replicate group (gradient all-reduce).
#   Passed explicitly, so that a changed default cannot silently shrink the global micro-batch.
_DP_GROUP_TAKES_GTP = "with_gtp_remat" in inspect.signature(_ps.get_data_parallel_group).parameters


def data_parallel_group() -> dist.ProcessGroup:
    """Every rank holding distinct micro-batches of this rank's model replica position: the
    group over which a global micro-batch's losses are gathered (context parallelism excluded:
    CP ranks share their samples)."""
    if _DP_GROUP_TAKES_GTP:
        return _ps.get_data_parallel_group(with_context_parallel=False, with_gtp_remat=True)
    return _ps.get_data_parallel_group(with_context_parallel=False)
