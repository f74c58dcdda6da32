"""Worker for tests/test_compat.py: which tokens does each rank get from
``megatron_rw.compat.slice_for_context_parallel``? (4 processes, several layouts per launch.)

For every layout, each rank takes its data-parallel rows of one global batch whose token ids
encode (row, position), slices them for context parallelism through the compat layer, and
records the (row, position) pairs it holds. It also records what megatron-core's own
``get_batch_on_this_cp_rank`` does when the group is left out (the behaviour that changed
silently between versions), and, where megatron-core has weight-sharded tensor parallelism
(GTP), the size of the group the loss hook gathers over. Writes ``$OUT_DIR/rank{RANK}.json``.
"""

import inspect
import json
import os
import sys

import torch
import torch.distributed as dist

from megatron_rw.cpu.runtime import enable_cpu_runtime

ROWS, SEQ = 4, 16
LAYOUTS = {"dp4": dict(), "dp2xcp2": dict(context_parallel_size=2),
           "tp2xcp2": dict(tensor_model_parallel_size=2, context_parallel_size=2)}


def global_batch():
    """tokens[i, t] = 100 * i + t, so every slice tells which (row, position) it came from."""
    tokens = 100 * torch.arange(ROWS)[:, None] + torch.arange(SEQ)[None, :]
    return {"tokens": tokens, "labels": tokens + 1, "loss_mask": torch.ones(ROWS, SEQ),
            "position_ids": torch.arange(SEQ).expand(ROWS, SEQ).contiguous()}


def main():
    enable_cpu_runtime()
    dist.init_process_group("gloo")
    from megatron.core import parallel_state as ps
    from megatron.core.utils import get_batch_on_this_cp_rank

    from megatron_rw.compat import slice_for_context_parallel

    record = {"rank": dist.get_rank(), "layouts": {}}
    for name, sizes in LAYOUTS.items():
        ps.destroy_model_parallel()
        ps.initialize_model_parallel(**sizes)
        dp = ps.get_data_parallel_world_size(with_context_parallel=False)
        dp_rank = ps.get_data_parallel_rank(with_context_parallel=False)
        rows = ROWS // dp
        local = {k: v[dp_rank * rows:(dp_rank + 1) * rows] for k, v in global_batch().items()}
        mine = slice_for_context_parallel(local, ps.get_context_parallel_group())
        assert torch.equal(mine["labels"], mine["tokens"] + 1)
        record["layouts"][name] = {
            "dp_rank": dp_rank, "cp_rank": ps.get_context_parallel_rank(),
            "cp_size": ps.get_context_parallel_world_size(), "tokens": mine["tokens"].tolist()}
        if name == "dp4":
            # megatron-core's own function with the group left out, where CP is 1.
            try:
                omitted = get_batch_on_this_cp_rank(dict(local), is_hybrid_cp=False)
            except TypeError:  # 0.16.1: no is_hybrid_cp parameter
                omitted = get_batch_on_this_cp_rank(dict(local))
            record["group_omitted_tokens"] = omitted["tokens"].tolist()
    ps.destroy_model_parallel()
    if "gtp_remat_size" in inspect.signature(ps.initialize_model_parallel).parameters:
        # Weight-sharded TP (megatron-core 0.19): 2 replicates x 2 gtp_remat ranks, all four
        # holding distinct micro-batches. The reweighting group must span all four.
        from megatron_rw.collectives import ReweightGroups

        ps.initialize_model_parallel(gtp_remat_size=2)
        record["gtp"] = {
            "reweight_group": dist.get_world_size(ReweightGroups.from_parallel_state()
                                                  .data_parallel),
            "replicate_group": ps.get_data_parallel_world_size(with_context_parallel=False,
                                                               with_gtp_remat=False)}
        ps.destroy_model_parallel()
    with open(os.path.join(os.environ["OUT_DIR"], f"rank{dist.get_rank()}.json"), "w") as f:
        json.dump(record, f)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
