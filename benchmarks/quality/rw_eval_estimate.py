"""``rw_eval --list``: the plan, each run's status and estimated time, and totals per group.

An estimate is ``startup + iters x s/iter + evaluations x eval`` with the numbers
``benchmarks.quality.rw_eval_timing`` measured for the run's profile (results/rw_eval_timing.json) under
``nice``. Two figures: "2-core" scales that by the share of the 2 cores the timing run got (its
CPU seconds / (2 x wall)), i.e. the time with both cores to itself, the budget's unit; "wall" is
at the load measured. Finished runs count in a group's total but not in what is left; a partial
run counts its remaining iterations.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Callable, List, Optional


def load_timing(path: str) -> dict:
    """Profile -> measured timings; empty if not measured yet."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)["profiles"]
    except (OSError, KeyError, ValueError):
        return {}


def estimate_s(run, timing: dict, from_iter: int = 0, two_core: bool = False) -> Optional[float]:
    """Seconds for ``run`` from iteration ``from_iter`` to its end (at the measured load, or
    with ``two_core`` on 2 idle cores); None without a timing for its profile."""
    t = timing.get(run.profile)
    if t is None:
        return None
    left = run.iters - from_iter
    evals = left // run.eval_interval + (run.iters % run.eval_interval != 0)  # + the final one
    wall = t["startup_s"] + left * t["s_per_iter"] + evals * t["eval_s"]
    return wall * t["cpu_share"] if two_core else wall


def _hours(s: Optional[float]) -> str:
    return "   ?  " if s is None else f"{s / 3600:5.2f}h"


def print_plan(runs: List, runs_dir: str, timing_path: str,
               refused: Callable, status: Callable) -> dict:
    """Print one line per run and the totals per group; returns {group: [2-core, wall, left
    2-core, left wall, runs]} in seconds (None where a profile has no timing)."""
    timing = load_timing(timing_path)
    if not timing:
        print(f"(no {timing_path}: run python -m benchmarks.quality.rw_eval_timing for estimates)")
    totals = defaultdict(lambda: [0.0, 0.0, 0.0, 0.0, 0])
    add = lambda a, b: None if a is None or b is None else a + b
    for k, run in enumerate(runs, 1):
        st = status(run, runs_dir)
        why = None if st == "done" else refused(run)
        done_at = run.iters if st == "done" else int(st[9:-1]) if st.startswith("partial") else 0
        est = [estimate_s(run, timing, 0, True), estimate_s(run, timing),
               estimate_s(run, timing, done_at, True), estimate_s(run, timing, done_at)]
        g = totals[run.group]
        for i in range(4):
            if i < 2 or st != "done":
                g[i] = add(g[i], est[i])
        g[4] += 1
        mins = "  ?  " if est[0] is None else f"{est[0] / 60:5.1f}"
        print(f"[{k:2d}/{len(runs)}] {run.name:32s} {mins} min  {st}"
              + (f"; blocked: {why}" if why else ""))
    print(f"\n{'group':10s} {'runs':>4s} {'2-core':>7s} {'wall':>7s} {'left':>7s} {'(wall)':>7s}"
          "   estimated from measured s/iteration")
    for group, g in totals.items():
        print(f"{group:10s} {g[4]:4d} " + " ".join(f"{_hours(x):>7s}" for x in g[:4]))
    sums = [None if any(g[i] is None for g in totals.values())
            else sum(g[i] for g in totals.values()) for i in range(4)]
    print(f"{'all':10s} {sum(g[4] for g in totals.values()):4d} "
          + " ".join(f"{_hours(x):>7s}" for x in sums))
    return dict(totals)
