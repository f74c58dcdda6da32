"""The training runs ``benchmarks.quality.loss_distribution`` reads, with the settings docs/results.md §5
quotes; then that analysis.

    python -m benchmarks.quality.loss_distribution_run                          # uniform: the z table
    python -m benchmarks.quality.loss_distribution_run --strategy robust --r 0.4 \\
        --out results/loss_distribution_robust.json                     # the two check runs
    python -m benchmarks.quality.loss_distribution_run --strategy linupper --r 0.4 \\
        --out results/loss_distribution_linupper.json

Each run: ``examples/pretrain_gpt_rw.sh`` with the tiny_cpu config on the noisy corpus
(``benchmarks.quality.noisy_corpus``), seed 1234, 300 iterations (warm-up 30) and global batch
32, on ONE process with micro-batch 16, so every logged micro-batch is one whole global micro-batch of the
evaluation's layout (2 ranks x 8 rows) and ``sample_weights.jsonl`` holds all its rows; burn-in
40 iterations; the per-sample log every 5 iterations. A finished run (checkpoint at iteration
300) is not trained again; an interrupted one resumes from its checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import List

from benchmarks.quality import gpt_sweep, loss_distribution

ITERS = 300  # the committed runs': tiny_cpu's iterations and warm-up then (its demo now runs 150)
FLAGS = ("--train-iters", str(ITERS), "--lr-warmup-iters", "30", "--micro-batch-size", "16",
         "--sample-reweight-warmup-iters", "40", "--log-interval", "5", "--log-sample-weights",
         "--seed", "1234")


@dataclasses.dataclass(frozen=True)
class LossDistributionRun:
    """What ``gpt_sweep.run_one`` needs of a run, on one process."""

    strategy: str
    r: float
    config = gpt_sweep.CONFIG
    corpus = "noisy"
    iters = ITERS
    procs = 1

    @property
    def name(self) -> str:
        r = "" if self.strategy == "uniform" else f"-r{self.r:g}"
        return f"lossdist-{self.strategy}{r}-s1234"

    def flags(self) -> List[str]:
        return [*FLAGS, "--sample-reweight-strategy", self.strategy,
                "--sample-reweight-r", str(self.r)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--strategy", default="uniform")
    p.add_argument("--r", type=float, default=0.4)
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--data", default="data/small_noisy")
    p.add_argument("--out", default="results/loss_distribution.json")
    p.add_argument("--png", default=None, help="passed on to benchmarks.quality.loss_distribution")
    a = p.parse_args(argv)
    run = LossDistributionRun(a.strategy, a.r)
    out = os.path.join(a.runs_dir, run.name)
    if not gpt_sweep.finished(out, run.iters):
        print(f"loss_distribution_run: training {run.name}: {' '.join(run.flags())}", flush=True)
        seconds = gpt_sweep.run_one(run, a.runs_dir, {"noisy": a.data}, sys.executable)
        print(f"loss_distribution_run: trained in {seconds / 60:.1f} min", flush=True)
    return loss_distribution.main(["--run", out, "--data", a.data, "--out", a.out,
                                   *(["--png", a.png] if a.png else [])])


if __name__ == "__main__":
    sys.exit(main())
