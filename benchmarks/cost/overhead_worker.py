"""Worker of benchmarks/cost/overhead.py (started by torchrun, gloo, CPU): interleaved step timings.

    torchrun --nproc-per-node 2 benchmarks/cost/overhead_worker.py --out OUT.json --layouts dp2 tp2

For each layout it builds the tiny GPT of tests/_layouts.py once (megatron-core GPTModel, DDP,
``get_megatron_optimizer``) and alternates optimizer steps between two loss functions in the SAME
processes and on the SAME model, so both see the same machine state:

- A, baseline: Megatron-LM's ``pretrain_gpt.loss_func`` contract (``tests._layouts.gpt_loss_func``);
- B, reweighted: ``reweighted_loss_func`` with linupper, r = 0.4, past its burn-in.

Pairs alternate their order (AB, BA, AB, ...) so that a slow drift of the shared machine does not
favour the variant that always runs second. Every step starts after a barrier; a step's time is
the max over ranks (the slowest rank sets the pace of a synchronous step). Per step it records:

- ``step``: zero grads + ``get_forward_backward_func()`` + ``optimizer.step()``;
- ``loss_fn``: seconds spent inside the loss function, summed over micro-batches (for B this
  includes waiting on the DP all-gather for the slower rank);
- ``report``: Megatron-LM ``train_step``'s reduction of the reports, one DP all-reduce per key
  (B reports 7 keys, A one), timed separately because a trainer may batch them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from functools import partial

warnings.filterwarnings("ignore")  # Megatron warns about missing TE/Apex on every import

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)
from megatron_rw.cpu.runtime import backend, enable_cpu_runtime  # noqa: E402

enable_cpu_runtime()

from megatron.core import parallel_state as ps  # noqa: E402
from megatron.core.pipeline_parallel import get_forward_backward_func  # noqa: E402

from megatron_rw import ReweightConfig, reweighted_loss_func  # noqa: E402
from tests import _layouts as L  # noqa: E402

# The paper's burn-in; steps are numbered past it so that r = 0.4 is in force (not r = inf).
REWEIGHT = ReweightConfig(strategy="linupper", r=0.4, warmup_iters=1000)


class TimedLoss:
    """Wraps a loss function and accumulates the wall time spent inside it."""

    def __init__(self, fn):
        self.fn, self.seconds = fn, 0.0

    def __call__(self, loss_mask, output_tensor):
        t0 = time.perf_counter()
        out = self.fn(loss_mask, output_tensor)
        self.seconds += time.perf_counter() - t0
        return out


def forward_step(loss_fn, data_iterator, model):
    batch = next(data_iterator)
    output = model(batch["tokens"], batch["position_ids"], None, labels=batch["labels"])
    return output, partial(loss_fn, batch["loss_mask"])


def reduce_reports_per_key(reports):
    """Megatron-LM train_step's averaging: per key, sum [value, count] over micro-batches, then
    one all-reduce over DP x CP per key (last pipeline stage only)."""
    group = ps.get_data_parallel_group(with_context_parallel=True)
    out = {}
    for key in reports[0] if reports else ():
        pair = torch.vstack([r[key].view(-1).float() for r in reports]).sum(dim=0)
        dist.all_reduce(pair, group=group)
        out[key] = pair[0] / pair[1]
    return out


def _synchronize() -> None:
    """On a GPU kernels run asynchronously: wait for them so the clock times the work, not its
    launch. (A no-op on CPU, where the CPU runtime stubs it.)"""
    torch.cuda.synchronize()


def timed_step(chunk, optimizer, batches, loss_fn, micro_batch_size, seq_length=L.SEQ):
    """One synchronous optimizer step; returns (step_s, loss_fn_s, report_s), max over ranks.
    ``loss_fn_s`` is host time inside the loss function (on a GPU: launching its kernels)."""
    timed = TimedLoss(loss_fn)
    dist.barrier()
    _synchronize()
    t0 = time.perf_counter()
    chunk.zero_grad_buffer()
    optimizer.zero_grad()
    reports = get_forward_backward_func()(
        forward_step_func=partial(forward_step, timed), data_iterator=iter(batches), model=chunk,
        num_microbatches=len(batches), seq_length=seq_length, micro_batch_size=micro_batch_size,
        forward_only=False)
    optimizer.step()
    _synchronize()
    t1 = time.perf_counter()
    reduce_reports_per_key(reports)
    _synchronize()
    t2 = time.perf_counter()
    # On the current device: NCCL reduces only CUDA tensors (on CPU "cuda" is the CPU).
    times = torch.tensor([t1 - t0, timed.seconds, t2 - t1], dtype=torch.float64,
                         device=torch.cuda.current_device())
    dist.all_reduce(times, op=dist.ReduceOp.MAX)  # outside the timed region
    return times.tolist()


def loss_function(name: str, step_no: int):
    """Variant ``name``'s loss function for the ``step_no``-th step of the benchmark."""
    if name == "baseline":
        return L.gpt_loss_func
    return partial(reweighted_loss_func, config=REWEIGHT,
                   iteration=REWEIGHT.warmup_iters + step_no)


FIELDS = ("step", "loss_fn", "report")


def interleaved_samples(step, pairs: int, warmup: int) -> dict:
    """Alternate ``step(name, step_no)`` between the variants, AB then BA, for ``warmup`` + ``pairs``
    pairs; returns ``{variant: {field: [seconds of each measured step]}}``. Warm-up pairs
    (allocator, communicator set-up, first-call caches) are not recorded."""
    samples = {v: {f: [] for f in FIELDS} for v in ("baseline", "reweighted")}
    step_no = 0
    for i in range(warmup + pairs):
        order = ("baseline", "reweighted") if i % 2 == 0 else ("reweighted", "baseline")
        for name in order:
            t = step(name, step_no)
            step_no += 1
            if i >= warmup:
                for f, value in zip(FIELDS, t):
                    samples[name][f].append(value)
    return samples


def run_layout(text, pairs, warmup, micro, b):
    layout = L.parse_layout(text)
    chunks, optimizer, _ = L.build_model_and_optimizer(layout)
    dp = ps.get_data_parallel_world_size(with_context_parallel=False)
    # Built once: the data does not change the cost of a step, and generating it would add noise.
    batches = [L.local_micro_batch(L.global_micro_batch(0, m, rows=b * dp)) for m in range(micro)]

    def step(name, step_no):
        return timed_step(chunks[0], optimizer, batches, loss_function(name, step_no), b)

    samples = interleaved_samples(step, pairs, warmup)
    ps.destroy_model_parallel()
    return {"layout": layout.name, "dp": dp, "tp": layout.tp, "micro_batch_size": b,
            "num_microbatches": micro, "samples_s": samples}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--layouts", nargs="+", default=["dp2", "tp2"])
    parser.add_argument("--pairs", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--micro", type=int, default=4, help="micro-batches per step")
    parser.add_argument("--b", type=int, default=4, help="micro-batch size per DP rank")
    args = parser.parse_args()

    dist.init_process_group(backend())
    results = []
    for text in args.layouts:
        results.append(run_layout(text, args.pairs, args.warmup, args.micro, args.b))
        if dist.get_rank() == 0:
            med = {v: sorted(s["step"])[len(s["step"]) // 2] * 1e3
                   for v, s in results[-1]["samples_s"].items()}
            print(f"{results[-1]['layout']}: median step ms {med}", flush=True)
    if dist.get_rank() == 0:
        with open(args.out, "w") as f:
            json.dump({"layouts": results, "threads": torch.get_num_threads()}, f)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
