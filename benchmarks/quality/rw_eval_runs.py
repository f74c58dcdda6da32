"""Bookkeeping of ``benchmarks.quality.rw_eval``'s runs: whether this checkout's trainer accepts a run's
flags, its status, its ``run.json`` (flags it was started with, cost per session), and committing
the evaluation's result files, and nothing else.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import resource
import shlex
import subprocess
import time
from typing import Optional, Tuple

from benchmarks.quality import gpt_sweep

REPO = gpt_sweep.REPO
RESULTS = ("rw_eval.json", "rw_eval.md", "rw_eval_diffs.png", "rw_eval_noise.png",
           "rw_eval_scale.png", "rw_eval_units.png")
# Each finished run's run.json and metrics.jsonl (~50 KB), committed with the report: the report
# can be rebuilt from them and a finished run is not redone if the runs directory (git-ignored,
# with the checkpoints) is lost between sessions.
ARCHIVE = "rw_eval_runs"  # inside the results directory
ARCHIVED_FILES = ("run.json", "metrics.jsonl")


def archive_finished(runs_dir: str, archive: str) -> list:
    """Copy run.json and metrics.jsonl of every finished run (its checkpoint at its last
    iteration) into ``archive/<name>/``; returns the names archived now or before."""
    import shutil

    names = []
    for name in sorted(os.listdir(runs_dir)) if os.path.isdir(runs_dir) else []:
        src = os.path.join(runs_dir, name)
        try:
            with open(os.path.join(src, "run.json"), encoding="utf-8") as f:
                iters = json.load(f)["iters"]
        except (OSError, ValueError, KeyError):
            continue
        if not gpt_sweep.finished(src, iters):
            continue
        os.makedirs(os.path.join(archive, name), exist_ok=True)
        for file in ARCHIVED_FILES:
            shutil.copyfile(os.path.join(src, file), os.path.join(archive, name, file))
        names.append(name)
    return names


def archived(run, archive: Optional[str]) -> bool:
    """True if ``archive/<name>`` holds the run's finished record with the planned iterations."""
    if archive is None:
        return False
    folder = os.path.join(archive, run.name)
    try:
        with open(os.path.join(folder, "run.json"), encoding="utf-8") as f:
            same = json.load(f).get("iters") == run.iters
    except (OSError, ValueError):
        return False
    return same and os.path.exists(os.path.join(folder, "metrics.jsonl"))


@functools.lru_cache(maxsize=None)
def config_flags(config: str) -> Tuple[str, ...]:
    """The flags a config contributes, expanded by bash as the launcher does."""
    script = (f'source "{config}"; printf "%s\\n" "${{MODEL_ARGS[@]}}" "${{TRAIN_ARGS[@]}}" '
              '"${REWEIGHT_ARGS[@]}"')
    return tuple(subprocess.run(["bash", "-c", script], capture_output=True, text=True,
                                check=True).stdout.splitlines())


def refused(run) -> Optional[str]:
    """Why this checkout's trainer would refuse the run's flags (e.g. a feature not merged yet)."""
    if run.variant_flags is None:
        which = "combo" if run.variant == "robust-best" else "best"
        return f"flags not chosen yet (--{which}-flags)"
    from benchmarks.megatron_args import LAUNCHER_FLAGS, parse_flags  # torch: only when asked
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            parse_flags([*config_flags(run.config), *run.flags(), *LAUNCHER_FLAGS])
    except SystemExit:
        last = (err.getvalue().strip().splitlines() or ["?"])[-1]
        return "trainer refuses: " + last.split(" error: ", 1)[-1]
    return None


def status(run, runs_dir: str, archive: Optional[str] = None) -> str:
    """done / partial (iteration) / to do; a run in ``archive`` is done."""
    out = os.path.join(runs_dir, run.name)
    if gpt_sweep.finished(out, run.iters) or archived(run, archive):
        return "done"
    try:
        with open(os.path.join(out, "latest_checkpointed_iteration.txt")) as f:
            return f"partial ({int(f.read())})"
    except (OSError, ValueError):
        return "to do"


def check_record(run, runs_dir: str) -> Optional[str]:
    """Write run.json for a new run; for an existing one, say if its flags differ from the plan."""
    path = os.path.join(runs_dir, run.name, "run.json")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            old = json.load(f)
        if old.get("flags") != run.flags() or old.get("iters") != run.iters:
            return f"{path} records other flags: {shlex.join(old.get('flags', []))}"
        return None
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(run.record(), f, indent=1)
    return None


def children_cpu_s() -> float:
    """User + system CPU seconds of every finished, waited-for descendant (all ranks)."""
    u = resource.getrusage(resource.RUSAGE_CHILDREN)
    return u.ru_utime + u.ru_stime


def note_time(run, runs_dir: str, wall_s: float, cpu_s: float) -> None:
    """Append this session's wall and CPU seconds to run.json: what the run really cost, to check
    and refine the estimates (2-core time ~ cpu_s / 2)."""
    path = os.path.join(runs_dir, run.name, "run.json")
    with open(path, encoding="utf-8") as f:
        info = json.load(f)
    info.setdefault("sessions", []).append({"wall_s": round(wall_s, 1), "cpu_s": round(cpu_s, 1)})
    with open(path, "w", encoding="utf-8") as f:
        json.dump(info, f, indent=1)


def commit_results(results_dir: str, message: str, repo: str = REPO) -> bool:
    """Commit only the evaluation's result files (if changed); other changes stay uncommitted."""
    paths = [os.path.join(results_dir, n) for n in RESULTS + (ARCHIVE,)
             if os.path.exists(os.path.join(results_dir, n))]
    if not paths:
        return False
    # Someone may be committing in the same repository (git's index.lock): retry, and if it
    # still fails leave the files for the next run's commit rather than stop the evaluation.
    for attempt in range(5):
        try:
            subprocess.run(["git", "-C", repo, "add", "--", *paths], check=True)
            unchanged = subprocess.run(
                ["git", "-C", repo, "diff", "--cached", "--quiet", "--", *paths])
            if unchanged.returncode == 0:
                return False
            subprocess.run(["git", "-C", repo, "commit", "-q", "-m", message, "--", *paths],
                           check=True)
            return True
        except subprocess.CalledProcessError as e:
            print(f"rw_eval: git failed ({e}); attempt {attempt + 1} of 5", flush=True)
            time.sleep(10)
    print("rw_eval: results not committed; the next finished run's commit will carry them",
          flush=True)
    return False
