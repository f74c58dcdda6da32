"""What documents as units and a target ESS cost in the hook, and which collective they should use.

    .venv/bin/python -m benchmarks.cost.unit_costs [--out results/unit_costs.json] [--rounds 300]

Two processes (CPU/gloo, DP2), one global micro-batch of 2 x 4 rows of 1024 tokens per call.
In rounds, each variant once per round in a shuffled order (seeded), timed per call:

- hook variants (``reweighted_loss_func`` forward, no backward): ``sample`` (linupper, fixed r),
  ``document`` (32 slots per row, fixed r), ``document+ess`` (target ESS 0.7);
- the collective patterns the document variants could use: ``gather b`` (what samples gather),
  ``gather b*32`` (the padded per-slot losses, what the hook does), and the statistics-only
  alternative as dependent all-reduces of its real sizes: 2 rounds for a fixed r (min/max of the
  losses, then max score, Σexp and the count) and 5 for a target ESS (plus three search rounds of
  32 candidates x (Σw, Σw²)).

Reported: per variant the median and quartiles in µs, and per round the ratio to ``sample`` (or
to ``gather b``), median and quartiles. The machine is shared: compare the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
B, S, K = 4, 1024, 32


def _worker(out: str, rounds: int) -> None:
    sys.path.insert(0, REPO)
    import torch
    import torch.distributed as dist

    from megatron_rw.collectives import ReweightGroups
    from megatron_rw.config import ReweightConfig
    from megatron_rw.loss import reweighted_loss_func

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(rank)
    torch.set_num_threads(1)
    out_t = 3 + torch.rand(B, S) * torch.linspace(0.5, 3, B)[:, None]
    mask = torch.ones(B, S)
    units = (torch.arange(S) // 200).clamp(max=K - 1).expand(B, S).contiguous()  # ~5 docs/row
    groups = ReweightGroups(data_parallel=dist.group.WORLD)
    configs = {
        "sample": ReweightConfig(strategy="linupper", r=0.4, warmup_iters=0),
        "document": ReweightConfig(strategy="linupper", r=0.4, warmup_iters=0, unit="document",
                                   max_documents=K),
        "document+ess": ReweightConfig(strategy="linupper", warmup_iters=0, unit="document",
                                       max_documents=K, target_ess=0.7),
    }

    def hook(cfg):
        mine = units if cfg.unit == "document" else None  # given units are always used
        return lambda: reweighted_loss_func(mask, out_t, config=cfg, iteration=0, groups=groups,
                                            units=mine)

    def gather(n):
        src = torch.rand(n)
        dst = torch.empty(n * dist.get_world_size())
        return lambda: dist.all_gather_into_tensor(dst, src)

    def reduces(shapes):
        tensors = [torch.rand(*s) for s in shapes]
        return lambda: [dist.all_reduce(t, op=dist.ReduceOp.MAX) for t in tensors]

    variants = {name: hook(cfg) for name, cfg in configs.items()}
    variants.update({"gather b": gather(B), f"gather b*{K}": gather(B * K),
                     "stats fixed r (2 all-reduces)": reduces([(2,), (3,)]),
                     "stats target ESS (5 all-reduces)": reduces([(2,), (3,), (32, 2), (32, 2),
                                                                  (32, 2)])})
    names = list(variants)
    times = {n: [] for n in names}
    rng = random.Random(1234)  # the same order on both ranks: collectives must match
    for n in names:  # warm-up
        variants[n]()
    for _ in range(rounds):
        order = names[:]
        rng.shuffle(order)
        for n in order:
            dist.barrier()
            t0 = time.perf_counter()
            variants[n]()
            times[n].append(time.perf_counter() - t0)
    if rank == 0:
        with open(out, "w") as f:
            json.dump(times, f)
    dist.destroy_process_group()


def _summary(values):
    q1, med, q3 = statistics.quantiles(values, n=4)
    return {"median": statistics.median(values), "q1": q1, "q3": q3, "n": len(values)}


def analyse(times: dict) -> dict:
    out = {"us": {n: _summary([t * 1e6 for t in v]) for n, v in times.items()}, "ratio": {}}
    for n, v in times.items():
        ref = "sample" if n in ("sample", "document", "document+ess") else "gather b"
        out["ratio"][f"{n} / {ref}"] = _summary([a / b for a, b in zip(v, times[ref])])
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.path.join(REPO, "results", "unit_costs.json"))
    p.add_argument("--rounds", type=int, default=300)
    p.add_argument("--worker-out", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker_out:
        _worker(a.worker_out, a.rounds)
        return 0
    from benchmarks.environment import environment
    from tests.workers.launch import torchrun

    with tempfile.TemporaryDirectory() as tmp:
        raw = os.path.join(tmp, "times.json")
        torchrun(os.path.abspath(__file__), 2, ["--rounds", str(a.rounds), "--worker-out", raw])
        with open(raw) as f:
            times = json.load(f)
    result = {"settings": {"processes": 2, "backend": "gloo", "rows_per_rank": B,
                           "seq_length": S, "slots_per_row": K, "rounds": a.rounds,
                           "documents_per_row": 5, "shuffle_seed": 1234},
              "environment": environment(), **analyse(times)}
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(result, f, indent=1)
    for n, s in result["us"].items():
        print(f"{n:36s} {s['median']:9.1f} µs [{s['q1']:.1f}, {s['q3']:.1f}]")
    for n, s in result["ratio"].items():
        print(f"{n:48s} {s['median']:.3f} [{s['q1']:.3f}, {s['q3']:.3f}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
