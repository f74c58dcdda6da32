"""Latency of the weights' collectives, ``gather`` against ``reduce``, by data-parallel size.

    .venv/bin/python -m benchmarks.cost.collective_latency [--dp 2 4 8 16] [--rounds 200]
        [--out results/collective_latency.json]

For each DP size, one torchrun launch of DP processes (CPU/gloo, one thread each) on this host.
Each round calls ``megatron_rw.batch_weights.local_weights`` (what the hook runs per micro-batch:
the collectives and the weight math) once with ``gather`` and once with ``reduce``, in a seeded
random order, each after a barrier; a call's time is the slowest rank's (the next micro-batch
waits for it). Settings: linupper, r = 0.4, past burn-in, ``--micro-batch-size`` 4 samples per
rank (N = 4 DP).

Reported per DP size: each variant's median and quartiles in µs, and per round the ratio
reduce / gather (median, quartiles, 95 % bootstrap interval of the median). gloo on one host is
not NCCL on a cluster: its all-gather and all-reduce run over TCP loopback, and with more
processes than cores (16 on 2 here) the ranks also wait for the scheduler. What it can show is
how the two grow with the number of ranks on the same transport; the model for NCCL at scale is
``benchmarks.cost.scaling_model``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
B = 4
VARIANTS = ("gather", "reduce")


def _worker(out: str, rounds: int, warmup: int) -> None:
    sys.path.insert(0, REPO)
    import torch
    import torch.distributed as dist

    from megatron_rw.batch_weights import local_weights
    from megatron_rw.config import ReweightConfig

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.set_num_threads(1)
    torch.manual_seed(rank)
    losses = 3 + torch.rand(B)
    configs = {v: ReweightConfig(strategy="linupper", r=0.4, warmup_iters=0, collective=v)
               for v in VARIANTS}
    order = random.Random(1234)
    times = {v: [] for v in VARIANTS}
    for k in range(warmup + rounds):
        for v in order.sample(VARIANTS, len(VARIANTS)):
            dist.barrier()
            start = time.perf_counter()
            local_weights(losses, configs[v], 1, dist.group.WORLD)
            elapsed = torch.tensor([time.perf_counter() - start], dtype=torch.float64)
            dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)  # the slowest rank's
            if k >= warmup:
                times[v].append(elapsed.item())
    if rank == 0:
        with open(out, "w") as f:
            json.dump(times, f)
    dist.destroy_process_group()


def measure(dp: int, rounds: int, warmup: int) -> dict:
    from benchmarks.cost.overhead import summary
    from tests.workers.launch import torchrun

    with tempfile.TemporaryDirectory() as tmp:
        raw = os.path.join(tmp, "times.json")
        torchrun(os.path.abspath(__file__), dp, ["--worker", raw, "--rounds", str(rounds),
                                                 "--warmup", str(warmup)])
        with open(raw) as f:
            times = json.load(f)
    ratios = [r / g for g, r in zip(times["gather"], times["reduce"])]
    return {"dp": dp, "global_micro_batch": dp * B,
            **{f"{v}_us": summary([t * 1e6 for t in times[v]]) for v in VARIANTS},
            "ratio_reduce_over_gather": summary(ratios, ci=True)}


def plot(rows: list, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    dps = [r["dp"] for r in rows]
    for v in VARIANTS:
        med = [r[f"{v}_us"]["median"] for r in rows]
        err = [[m - r[f"{v}_us"]["q1"] for m, r in zip(med, rows)],
               [r[f"{v}_us"]["q3"] - m for m, r in zip(med, rows)]]
        ax.errorbar(dps, med, yerr=err, marker="o", capsize=3, label=v)
    ax.set(xscale="log", yscale="log", xlabel="data-parallel processes (gloo, one host)",
           ylabel="µs per call (slowest rank; median, IQR)",
           title="local_weights: gather vs reduce")
    ax.set_xticks(dps, [str(d) for d in dps])
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dp", type=int, nargs="+", default=[2, 4, 8, 16])
    p.add_argument("--rounds", type=int, default=200)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--out", default="results/collective_latency.json")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        _worker(a.worker, a.rounds, a.warmup)
        return 0
    sys.path.insert(0, REPO)
    from benchmarks.environment import environment

    rows = []
    for dp in a.dp:
        print(f"collective_latency: DP {dp} ...", flush=True)
        rows.append(measure(dp, a.rounds, a.warmup))
        r = rows[-1]
        print(f"  gather {r['gather_us']['median']:.0f} µs, reduce {r['reduce_us']['median']:.0f}"
              f" µs, reduce/gather {r['ratio_reduce_over_gather']['median']:.2f} "
              f"{r['ratio_reduce_over_gather']['median_ci95']}", flush=True)
    result = {"environment": environment(), "command": "python -m benchmarks.cost.collective_latency "
              + " ".join(sys.argv[1:] if argv is None else argv),
              "settings": {"strategy": "linupper", "r": 0.4, "rows_per_rank": B,
                           "rounds": a.rounds, "warmup_rounds": a.warmup, "backend": "gloo",
                           "threads_per_process": 1, "cpu_cores": os.cpu_count()},
              "rows": rows}
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(result, f, indent=1)
    png = os.path.splitext(a.out)[0] + ".png"
    plot(rows, png)
    print(f"wrote {a.out}, {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
