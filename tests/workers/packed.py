"""Worker for tests/test_packed.py: packed micro-batches weigh the original rows (or their
documents), never the flattened row. 2 processes, gloo.

One micro-batch of ``ROWS`` rows of ``SEQ`` tokens with documents (``cu_seqlens`` per row, as
megatron-core's GPTDataset gives them under ``--dataloader-inter-document-masking``) and fixed
per-token losses. For samples and for documents as units, linupper and uniform:

- ``dp2``: each rank holds two rows. Unpacked (``[2, SEQ]``) and packed with megatron-core's own
  ``flatten_batch_for_packed_sequences`` (``[1, 2 * SEQ]`` plus ``megatron_rw.units.packed_units``)
  through the data-parallel all-gather; both against a one-process reference of all rows.
- ``cp2``: both ranks hold the same two rows, packed, then sliced for context parallelism the
  way Megatron slices a packed row under inter-document masking (per-sequence zigzag of the
  flattened row; ``megatron_rw.compat.slice_for_context_parallel``); against the one-process
  unpacked result of those rows.

Writes ``$OUT_DIR/rank{RANK}.json``: per case the largest relative differences of loss, token count,
gradients and weights, and (uniform) whether the packed loss is bit for bit Megatron's own sum.
"""

import json
import os

import torch
import torch.distributed as dist

from megatron_rw.collectives import ReweightGroups
from megatron_rw.compat import slice_for_context_parallel
from megatron_rw.config import ReweightConfig
from megatron_rw.loss import reweighted_loss_func
from megatron_rw.telemetry import SampleTelemetry
from megatron_rw.units import packed_units

ROWS, SEQ, MAX_DOCS = 4, 16, 4
# Document lengths per row (each sums to SEQ); the dataset right-pads cu_seqlens with SEQ.
DOCS = [[5, 11], [16], [3, 4, 9], [8, 2, 2, 4]]


def global_batch():
    g = torch.Generator().manual_seed(7)
    cu = torch.full((ROWS, MAX_DOCS + 2), SEQ, dtype=torch.int32)
    for i, lengths in enumerate(DOCS):
        cu[i, :len(lengths) + 1] = torch.cumsum(torch.tensor([0] + lengths), 0)
    # Rows of different difficulty, so that linupper's weights differ between them.
    losses = 1 + torch.rand(ROWS, SEQ, generator=g) * torch.linspace(0.5, 5, ROWS)[:, None]
    mask = (torch.rand(ROWS, SEQ, generator=g) > 0.15).float()
    return {"loss_mask": mask, "losses": losses, "cu_seqlens": cu}


def document_slots(cu, max_docs):
    """[rows, SEQ] slot of each token's document within its row: the unpacked reference."""
    slots = torch.zeros(cu.shape[0], SEQ, dtype=torch.long)
    for i in range(cu.shape[0]):
        for d, (a, b) in enumerate(zip(cu[i, :-1].tolist(), cu[i, 1:].tolist())):
            slots[i, a:b] = min(d, max_docs - 1)
    return slots


def run(config, mask, losses, groups, units=None, num_units=None):
    """(loss, num_tokens, d loss / d losses, this rank's unit weights)."""
    kept = {}
    out = losses.clone().requires_grad_(True)
    loss, tokens, _ = reweighted_loss_func(
        mask, out, config=config, iteration=0, groups=groups, units=units, num_units=num_units,
        telemetry=SampleTelemetry(sink=kept.update))
    loss.backward()
    return loss.detach(), int(tokens), out.grad, kept["weight"]


def packed(rows):
    """megatron-core's own flattening of a micro-batch (what 0.19's get_batch does)."""
    from megatron.core.utils import flatten_batch_for_packed_sequences

    batch = {"tokens": torch.zeros_like(rows["losses"], dtype=torch.long),
             "labels": torch.zeros_like(rows["losses"], dtype=torch.long),
             "loss_mask": rows["loss_mask"].clone(), "position_ids": None,
             "cu_seqlens": rows["cu_seqlens"].clone(),
             "max_seqlen": torch.tensor([[SEQ]] * rows["losses"].shape[0], dtype=torch.int32)}
    flat = flatten_batch_for_packed_sequences(batch)
    # The model's per-token losses come out in the flattened row's order.
    return flat["loss_mask"], rows["losses"].reshape(1, -1)


def diff(a, b):
    """Largest difference relative to b's largest magnitude (at least 1): float32 sums of a
    few hundred tokens in another order differ in the last bits."""
    b = b.double()
    return float((a.double() - b).abs().max() / b.abs().max().clamp(min=1))


def main():
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    assert world == 2
    group = dist.new_group(list(range(world)))
    full = global_batch()
    record = {}
    for unit in ("sample", "document"):
        for strategy in ("linupper", "uniform"):
            config = ReweightConfig(strategy=strategy, r=0.4, warmup_iters=0, unit=unit,
                                    max_documents=MAX_DOCS)
            k = config.units_per_row
            slots = document_slots(full["cu_seqlens"], k) if unit == "document" else None
            ref = run(config, full["loss_mask"], full["losses"], ReweightGroups(),
                      units=slots)
            mine = slice(2 * rank, 2 * rank + 2)
            local = {key: v[mine] for key, v in full.items()}

            # dp2, unpacked: this rank's rows of the reference.
            unpacked = run(config, local["loss_mask"], local["losses"],
                           ReweightGroups(data_parallel=group),
                           units=None if slots is None else slots[mine])
            # dp2, packed: one row, the units from cu_seqlens.
            mask, out = packed(local)
            units = packed_units(local["cu_seqlens"], SEQ, k)
            pk = run(config, mask, out, ReweightGroups(data_parallel=group), units=units,
                     num_units=2 * k)
            total = torch.stack([unpacked[0], pk[0]])
            dist.all_reduce(total, group=group)
            case = {
                "unpacked_loss_sum_vs_reference": diff(total[0], ref[0]),
                "packed_loss_sum_vs_reference": diff(total[1], ref[0]),
                "packed_vs_unpacked_loss": diff(pk[0], unpacked[0]),
                "packed_vs_unpacked_tokens": abs(pk[1] - unpacked[1]),
                "packed_vs_unpacked_grad": diff(pk[2].reshape(2, SEQ), unpacked[2]),
                "unpacked_grad_vs_reference": diff(unpacked[2], ref[2][mine]),
                "packed_vs_unpacked_weights": diff(pk[3], unpacked[3]),
                "weights_vs_reference": diff(pk[3], ref[3][2 * rank * k:(2 * rank + 2) * k]),
                # Over the units that hold tokens (unused document slots weigh 0).
                "weights_spread": float(ref[3].max() - ref[3][ref[3] > 0].min()),
            }
            if strategy == "uniform":
                # Megatron-LM's loss_func on the packed row: one flat product and sum.
                case["packed_uniform_bitwise"] = bool(torch.equal(
                    pk[0], torch.sum(out.view(-1).float() * mask.view(-1).float())))

            # cp2: the first two rows, packed, this rank's zigzag chunks of the flattened row.
            rows = {key: v[:2] for key, v in full.items()}
            ref2 = run(config, rows["loss_mask"], rows["losses"], ReweightGroups(),
                       units=None if slots is None else slots[:2])
            mask, out = packed(rows)
            units = packed_units(rows["cu_seqlens"], SEQ, k)
            positions = torch.arange(2 * SEQ).reshape(1, -1)
            sliced = slice_for_context_parallel(
                {"loss_mask": mask, "losses": out, "units": units, "positions": positions},
                group)
            cp = run(config, sliced["loss_mask"], sliced["losses"],
                     ReweightGroups(context_parallel=group), units=sliced["units"],
                     num_units=2 * k)
            cp_total = cp[0].clone()
            dist.all_reduce(cp_total, group=group)
            where = sliced["positions"].view(-1)
            case.update({
                "cp_positions": where.tolist(),
                "cp_loss_sum_vs_reference": diff(cp_total, ref2[0]),
                "cp_grad_vs_reference": diff(cp[2].view(-1), ref2[2].reshape(-1)[where]),
                "cp_weights_vs_reference": diff(cp[3], ref2[3]),
            })
            record[f"{unit}/{strategy}"] = case
    with open(os.path.join(os.environ["OUT_DIR"], f"rank{rank}.json"), "w") as f:
        json.dump(record, f, indent=1)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
