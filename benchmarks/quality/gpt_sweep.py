"""Small-GPT pretraining sweep on real multi-domain text: strategies x seeds, resumable.

    python -m benchmarks.quality.gpt_sweep [--runs-dir runs/sweep] [--only NAME ...] [--list]

Every run is ``examples/pretrain_gpt_rw.sh`` with the ``tiny_cpu`` config on 2 CPU processes
(data parallel 2), so each is the same command a user would type. A finished run (its checkpoint
tracker at the last iteration) is skipped; an interrupted one resumes from its last checkpoint
(``--load``), which continues bit for bit. ``python -m benchmarks.quality.gpt_sweep_report`` turns the
runs into ``results/gpt_sweep*.{json,png}``.

Settings (all runs): 400 iterations of 32 x 128 tokens (1.6 M tokens, under one epoch of the small
corpus), burn-in 40 iterations (10 %, the paper's 1000 steps are ~5 % of its runs), validation on
every clean domain every 50 iterations. Strategies at the paper's r: linupper 0.4, quadratic 1.0,
extremes 0.4, plus linupper at r = 1.0. The ``noisy`` group trains on the corpus of
``benchmarks.quality.noisy_corpus`` (10 % duplicated documents, 10 % random tokens).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import socket
import subprocess
import sys
import time
from typing import List

from benchmarks.quality import run_metrics

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LAUNCHER = os.path.join(REPO, "examples", "pretrain_gpt_rw.sh")
CONFIG = os.path.join(REPO, "examples", "configs", "tiny_cpu.sh")
SEEDS = (1234, 2345, 3456)
ITERS = 400
COMMON = ["--train-iters", str(ITERS), "--lr-warmup-iters", "30", "--eval-interval", "50",
          "--eval-iters", "4", "--save-interval", "100", "--log-interval", "10",
          "--sample-reweight-warmup-iters", "40"]


@dataclasses.dataclass(frozen=True)
class Run:
    """One run of this sweep. ``run_one`` needs only ``name``, ``corpus``, ``config``, ``iters``
    and ``flags()`` (and ``procs``, 2 if absent), so other harnesses (``benchmarks.quality.rw_eval``)
    pass their own run types."""

    group: str      # "clean" or "noisy" (corpus)
    strategy: str
    r: float
    seed: int
    config = CONFIG  # class attributes, not fields: every run of this sweep shares them
    iters = ITERS

    @property
    def name(self) -> str:
        return f"{self.group}-{self.strategy}-r{self.r:g}-s{self.seed}"

    @property
    def corpus(self) -> str:
        return self.group

    def flags(self) -> List[str]:
        return [*COMMON, "--seed", str(self.seed), "--sample-reweight-strategy", self.strategy,
                "--sample-reweight-r", str(self.r)]


def plan() -> List[Run]:
    runs = []
    for seed in SEEDS:  # seed-major: a partial sweep still has every strategy for seed 1
        for strategy, r in (("uniform", 1.0), ("linupper", 0.4), ("quadratic", 1.0),
                            ("extremes", 0.4), ("linupper", 1.0)):
            runs.append(Run("clean", strategy, r, seed))
        for strategy, r in (("uniform", 1.0), ("linupper", 0.4)):
            runs.append(Run("noisy", strategy, r, seed))
    return runs


def finished(out: str, iters: int = ITERS) -> bool:
    """Whether the run in ``out`` saved its checkpoint at (or past) iteration ``iters``."""
    try:
        with open(os.path.join(out, "latest_checkpointed_iteration.txt")) as f:
            return int(f.read().strip()) >= iters
    except (OSError, ValueError):
        return False


def missing_data(data: dict, corpora) -> List[str]:
    """Error lines for the corpora in ``corpora`` whose prepared directory is missing."""
    errors = []
    for corpus in sorted(set(corpora)):
        path = data[corpus]
        if not os.path.exists(os.path.join(path, "manifest.json")):
            hint = ("python -m megatron_rw.data.prepare --profile small --out " + path
                    if corpus == "clean" else "python -m benchmarks.quality.noisy_corpus --out " + path)
            errors.append(f"{path}/manifest.json missing; run {hint}")
    return errors


def free_port() -> int:
    """A TCP port no one listens on now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_one(run: Run, runs_dir: str, data: dict, python: str, on_line=None) -> float:
    """Train ``run`` (launcher + its config + its flags) into ``runs_dir/<name>``; returns seconds.

    Output is appended to ``train.log`` (and each line passed to ``on_line``, if given); a run
    interrupted before resumes from its checkpoint. The launcher trains with Megatron's own loop;
    its TensorBoard events then become ``metrics.jsonl`` (``benchmarks.quality.run_metrics``), the rows
    the reports read (``--log-timers-to-tensorboard`` for the iteration time)."""
    out = os.path.join(runs_dir, run.name)
    os.makedirs(out, exist_ok=True)
    # A free rendezvous port unless one is set: the launcher's default (6000) is often taken by
    # another job on a shared machine, and the run would die with EADDRINUSE.
    env = dict(os.environ, PYTHON=python, CONFIG=run.config, DATA=data[run.corpus], OUT=out,
               GPUS_PER_NODE=str(getattr(run, "procs", 2)),
               MASTER_PORT=os.environ.get("MASTER_PORT") or str(free_port()))
    start = time.perf_counter()
    with open(os.path.join(out, "train.log"), "a") as log:
        proc = subprocess.Popen(["bash", LAUNCHER, *run.flags(), "--log-timers-to-tensorboard"],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
        for line in proc.stdout:
            log.write(line)
            log.flush()  # so train.log shows a running run's progress
            if on_line is not None:
                on_line(line)
            if "validation loss at iteration" in line:  # progress: one line per evaluation
                print(f"    {line.strip()[:110]}", flush=True)
        if proc.wait():
            raise RuntimeError(f"{run.name} failed (exit {proc.returncode}); see {out}/train.log")
    run_metrics.write_metrics(out, run_metrics.blend_shares(
        os.path.join(data[run.corpus], "manifest.json")))
    return time.perf_counter() - start


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs-dir", default="runs/sweep")
    p.add_argument("--clean-data", default="data/small")
    p.add_argument("--noisy-data", default="data/small_noisy")
    p.add_argument("--only", nargs="*", help="run names to run (default: all)")
    p.add_argument("--list", action="store_true", help="print the plan and what is done")
    a = p.parse_args(argv)
    runs = [r for r in plan() if not a.only or r.name in a.only]
    data = {"clean": a.clean_data, "noisy": a.noisy_data}
    errors = missing_data(data, [r.corpus for r in runs])
    for error in errors:
        print(f"gpt_sweep: error: {error}", file=sys.stderr)
    if errors:
        return 1
    for k, run in enumerate(runs, 1):
        out = os.path.join(a.runs_dir, run.name)
        if a.list or finished(out):
            print(f"[{k:2d}/{len(runs)}] {run.name}: {'done' if finished(out) else 'to do'}")
            continue
        print(f"[{k:2d}/{len(runs)}] {run.name}: running", flush=True)
        seconds = run_one(run, a.runs_dir, data, sys.executable)
        print(f"[{k:2d}/{len(runs)}] {run.name}: finished in {seconds / 60:.1f} min", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
