"""Time per iteration of each benchmarks.quality.rw_eval configuration on this machine (20 iterations each).

    nice -n 10 python -m benchmarks.quality.rw_eval_timing [--iters 20] [--profiles tiny small ...]

For each profile (tiny_cpu at seq 128, tiny_cpu at seq 1024 with the document groups' batch, and
small_cpu) one short linupper run through the evaluation's own launcher path, timestamping each
output line as it arrives. From those: seconds per training iteration (median of the logged
intervals after the first, which holds the warm-up), the start-up (launch to the first iteration,
less that interval's iterations) and one evaluation (the eval-iters batches on every validation
set: the time from the last iteration's log line to its validation line). Writes
``results/rw_eval_timing.json``, from which ``rw_eval --list`` estimates each run as
``startup + iters x s/iter + evaluations x eval`` (checkpoint saves are in the noise here).

The machine is shared, so wall times depend on what else runs. Each profile also records the CPU
seconds all its processes used (``cpu_s``) and ``cpu_share`` = cpu_s / (2 cores x wall): the share
of the 2 cores the run got. ``rw_eval --list`` gives both estimates: wall time at the measured
load, and 2-core time (wall x cpu_share: what the run costs when it has both cores to itself).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time

from benchmarks import environment
from benchmarks.quality import gpt_sweep, rw_eval_plan, rw_eval_runs

ITER_LINE = re.compile(r"iteration\s+(\d+)/\s*\d+ .*elapsed time per iteration \(ms\): ([0-9.]+)")
PARAMS = re.compile(r"number of parameters on \(tensor, pipeline\) model parallel rank \(0, 0\): (\d+)")
CORES = 2  # the evaluation's budget is in time on 2 cores (DP 2, one rank per core)


def time_profile(name: str, config: str, flags, iters: int, data: str, runs_dir: str) -> dict:
    """One short run; the timings described in the module docstring."""
    log = max(iters // 4, 1)
    run = rw_eval_plan.EvalRun("timing", name, 1234, "clean", config, name, iters,
                          (*flags, "--train-iters", str(iters), "--log-interval", str(log),
                           "--eval-interval", str(iters), "--eval-iters", "4",
                           "--save-interval", str(iters), "--lr-warmup-iters", "2",
                           "--sample-reweight-warmup-iters", "2"),
                          rw_eval_plan.LINUPPER_R1, iters)
    stamps = []  # (seconds since launch, line)
    cpu0 = rw_eval_runs.children_cpu_s()
    start = time.perf_counter()
    wall = gpt_sweep.run_one(run, runs_dir, {"clean": data}, sys.executable,
                             on_line=lambda ln: stamps.append((time.perf_counter() - start, ln)))
    return {"config": os.path.relpath(config, rw_eval_plan.REPO), "flags": list(flags),
            "iterations": iters, **analyse(stamps, wall, rw_eval_runs.children_cpu_s() - cpu0)}


def analyse(stamps, wall: float, cpu: float) -> dict:
    """Timings from the (seconds since launch, output line) pairs of one run, its wall and CPU
    seconds: see the module docstring."""
    iters_at = [(t, int(m[1]), float(m[2]) / 1000) for t, ln in stamps
                if (m := ITER_LINE.search(ln))]
    valid_t = next(t for t, ln in stamps if "validation loss at iteration" in ln)
    per_iter = statistics.median(s for _, _, s in iters_at[1:])  # the first holds the warm-up
    t_first, it_first, _ = iters_at[0]
    params = next((int(m[1]) for _, ln in stamps if (m := PARAMS.search(ln))), None)
    return {"s_per_iter": per_iter, "s_per_iter_intervals": [s for _, _, s in iters_at],
            "startup_s": t_first - it_first * per_iter, "eval_s": valid_t - iters_at[-1][0],
            "wall_s": wall, "cpu_s": cpu, "cpu_share": min(cpu / (CORES * wall), 1.0),
            "parameters": params}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--profiles", nargs="*", help="default: all")
    p.add_argument("--data", default="data/small")
    p.add_argument("--out", default="results/rw_eval_timing.json")
    a = p.parse_args(argv)
    errors = gpt_sweep.missing_data({"clean": a.data}, ["clean"])
    if errors:
        print(f"rw_eval_timing: error: {errors[0]}", file=sys.stderr)
        return 1
    old = {}
    if os.path.exists(a.out):  # timing one profile keeps the others' numbers
        with open(a.out, encoding="utf-8") as f:
            old = json.load(f).get("profiles", {})
    measured = {}
    with tempfile.TemporaryDirectory(prefix="rw_eval_timing.") as tmp:
        for name, (config, flags) in rw_eval_plan.PROFILES.items():
            if a.profiles and name not in a.profiles:
                continue
            print(f"timing {name}: {a.iters} iterations ...", flush=True)
            measured[name] = r = time_profile(name, config, flags, a.iters, a.data, tmp)
            print(f"  {r['s_per_iter']:.3f} s/iteration, start-up {r['startup_s']:.1f} s, "
                  f"one evaluation {r['eval_s']:.1f} s, {r['parameters']} parameters", flush=True)
    report = {"environment": environment.environment(), "nice": os.nice(0),
              "profiles": {**old, **measured}}
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    with open(a.out, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
