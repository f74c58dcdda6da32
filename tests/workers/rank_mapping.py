"""Worker for the multi-node rank-mapping test (started by torchrun, two "nodes" on 127.0.0.1).

Layout: TP=2 inside each node, DP=2 across the nodes, so on node 1 RANK != LOCAL_RANK and the
data-parallel rank differs from both. Every rank hooks Megatron's parallel_state, computes the
reweighted loss of its data-parallel shard of one global micro-batch, recovers the weights it
applied from the gradient (d loss / d token loss = weight * mask) and writes them to
``$OUT_DIR/rank{RANK}.json`` together with its rank identities.
"""

import json
import os
import sys

import torch
import torch.distributed as dist

from megatron_rw import ReweightConfig, reweighted_loss_func
from megatron_rw.cpu.runtime import enable_cpu_runtime

B, S = 3, 8


def global_micro_batch(dp_size: int):
    """Deterministic per-token losses and masks for all DP * B samples."""
    g = torch.Generator().manual_seed(1234)
    losses = torch.rand(dp_size * B, S, generator=g) * 4 + torch.arange(dp_size * B)[:, None] * 0.1
    mask = torch.ones(dp_size * B, S)
    mask[1, :3] = 0  # unequal token counts
    mask[4] = 0      # a padding sample
    return losses, mask


def main():
    enable_cpu_runtime()
    dist.init_process_group("gloo")
    from megatron.core import parallel_state as ps

    ps.initialize_model_parallel(tensor_model_parallel_size=2)
    dp_rank = ps.get_data_parallel_rank(with_context_parallel=False)
    dp_size = ps.get_data_parallel_world_size(with_context_parallel=False)
    losses, mask = global_micro_batch(dp_size)
    rows = slice(dp_rank * B, (dp_rank + 1) * B)
    out = losses[rows].clone().requires_grad_(True)
    cfg = ReweightConfig(strategy="linupper", r=0.4, warmup_iters=0)
    loss, num_tokens, _ = reweighted_loss_func(mask[rows], out, config=cfg, iteration=0)
    loss.backward()
    applied = torch.where(mask[rows] > 0, out.grad, torch.nan).nanmean(dim=1)  # NaN for padding
    record = {
        "rank": dist.get_rank(), "local_rank": int(os.environ["LOCAL_RANK"]),
        "node_rank": int(os.environ["GROUP_RANK"]), "dp_rank": dp_rank, "dp_size": dp_size,
        "tp_rank": ps.get_tensor_model_parallel_rank(), "weights": applied.tolist(),
        "num_tokens": int(num_tokens),
    }
    with open(os.path.join(os.environ["OUT_DIR"], f"rank{dist.get_rank()}.json"), "w") as f:
        json.dump(record, f)
    ps.destroy_model_parallel()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
