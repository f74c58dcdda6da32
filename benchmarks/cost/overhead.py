"""Step-time overhead of reweighting: reweighted (linupper) vs Megatron-LM's loss, interleaved.

    .venv/bin/python -m benchmarks.cost.overhead [--out results/overhead.json] [--pairs 100]

Launches benchmarks/cost/overhead_worker.py with torchrun (2 processes, CPU/gloo) for DP2 and TP2: a
tiny GPT (tests/_layouts.py: 4 layers, hidden 64, seq 32, vocab 128; 4 micro-batches of 4 rows
per DP rank per step) trained through megatron-core's get_forward_backward_func, DDP and
get_megatron_optimizer. Steps alternate A B / B A between

- A: Megatron-LM's pretrain_gpt loss_func contract (tests._layouts.gpt_loss_func), and
- B: megatron_rw.reweighted_loss_func, linupper, r = 0.4, past its 1000-step burn-in,

in the same processes on the same model. The machine is shared, so absolute times swing by 5x;
each pair's ratio B / A is taken between neighbouring steps, and medians and interquartile ranges
of those ratios are reported. A tiny model makes the hook's fixed cost look as large as it can.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile

from benchmarks.environment import environment
from tests.workers.launch import REPO, torchrun

WORKER = os.path.join(REPO, "benchmarks", "overhead_worker.py")
SEED = 1234  # tests/_layouts.build_model_and_optimizer's default: weights and data


def summary(values, ci: bool = False) -> dict:
    """Median and quartiles (statistics' exclusive method) of a list; with ``ci`` also a 95 %
    bootstrap interval of the median (seeded), which shrinks with more pairs while the IQR,
    the machine's noise, does not."""
    q1, _, q3 = statistics.quantiles(values, n=4)
    out = {"median": statistics.median(values), "q1": q1, "q3": q3, "n": len(values)}
    if ci:
        rng = random.Random(0)
        meds = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(2000))
        out["median_ci95"] = [meds[49], meds[1949]]
    return out


def analyse(layout: dict) -> dict:
    """Per-pair ratios reweighted / baseline, and absolute medians in ms."""
    a, b = layout["samples_s"]["baseline"], layout["samples_s"]["reweighted"]
    total = {v: [s + r for s, r in zip(d["step"], d["report"])] for v, d in (("a", a), ("b", b))}
    out = {
        "ratio_step": summary([y / x for x, y in zip(a["step"], b["step"])], ci=True),
        "ratio_step_with_report": summary([y / x for x, y in zip(total["a"], total["b"])], ci=True),
        "diff_step_ms": summary([(y - x) * 1e3 for x, y in zip(a["step"], b["step"])]),
    }
    for name, d in (("baseline", a), ("reweighted", b)):
        for field in ("step", "loss_fn", "report"):
            out[f"{name}_{field}_ms"] = summary([x * 1e3 for x in d[field]])
    return out


def print_table(analysed: dict) -> None:
    def iqr(s, fmt):
        return f"{s['median']:{fmt}} [{s['q1']:{fmt}}, {s['q3']:{fmt}}]"

    def ratio(s):
        lo, hi = s["median_ci95"]
        return f"{iqr(s, '.3f')} ({lo:.3f}..{hi:.3f})"

    print("\nmedian [IQR] (95 % bootstrap CI of the median) over interleaved pairs; "
          "ratio = reweighted / baseline per pair\n")
    print("| layout | step ratio | step+report ratio | baseline step ms | reweighted step ms "
          "| loss_fn ms A / B | report ms A / B |\n|---|---|---|---|---|---|---|")
    for name, s in analysed.items():
        a_b = {f: f"{s[f'baseline_{f}_ms']['median']:.2f} / {s[f'reweighted_{f}_ms']['median']:.2f}"
               for f in ("loss_fn", "report")}
        print(f"| {name} | {ratio(s['ratio_step'])} | {ratio(s['ratio_step_with_report'])} "
              f"| {iqr(s['baseline_step_ms'], '.1f')} | {iqr(s['reweighted_step_ms'], '.1f')} "
              f"| {a_b['loss_fn']} | {a_b['report']} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/overhead.json")
    parser.add_argument("--pairs", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=5, help="pairs excluded from the statistics")
    parser.add_argument("--layouts", nargs="+", default=["dp2", "tp2"])
    args = parser.parse_args()
    env = environment()
    with tempfile.TemporaryDirectory() as tmp:
        raw = os.path.join(tmp, "overhead.json")
        print(f"torchrun 2 processes: {' '.join(args.layouts)}, {args.warmup} warm-up + "
              f"{args.pairs} measured pairs each", flush=True)
        torchrun(WORKER, 2, ["--out", raw, "--pairs", str(args.pairs), "--warmup", str(args.warmup),
                             "--layouts", *args.layouts])
        with open(raw) as f:
            runs = json.load(f)
    analysed = {layout["layout"]: analyse(layout) for layout in runs["layouts"]}
    print_table(analysed)
    result = {
        "settings": {
            "processes": 2, "backend": "gloo", "device": "cpu",
            "threads_per_process": runs["threads"],
            "layouts": {l["layout"]: {k: l[k] for k in ("dp", "tp", "micro_batch_size",
                                                        "num_microbatches")}
                        for l in runs["layouts"]},
            "model": "tests/_layouts.py GPT: 4 layers, hidden 64, 4 heads, seq 32, vocab 128, fp32, "
                     "megatron-core DDP + Adam (get_megatron_optimizer), clip_grad 1.0",
            "baseline": "Megatron-LM pretrain_gpt loss_func contract (tests._layouts.gpt_loss_func)",
            "reweighted": "megatron_rw.reweighted_loss_func, linupper, r=0.4, "
                          "iteration past warmup_iters=1000",
            "pairs": args.pairs, "warmup_pairs": args.warmup, "order": "AB, BA alternating",
            "step": "zero grads + get_forward_backward_func + optimizer.step, max over ranks",
            "report": "Megatron-LM train_step style: one DP all-reduce per report key "
                      "(baseline 1 key, reweighted 7)",
            "seed": SEED,
        },
        "environment": {**env, "load_average_at_end": os.getloadavg()},
        "results": analysed,
        "raw_seconds": {l["layout"]: l["samples_s"] for l in runs["layouts"]},
    }
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
