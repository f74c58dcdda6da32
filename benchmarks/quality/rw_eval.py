r"""Issue 11's evaluation: every new reweighting feature against uniform, resumable across sessions.

    python -m benchmarks.quality.rw_eval --list                # plan, status, estimated hours per group
    nice -n 10 python -m benchmarks.quality.rw_eval --commit   # run what is left; commit results as it goes
    python -m benchmarks.quality.rw_eval_report                # only regenerate results/rw_eval*.{json,md,png}

A session that leaves it running (results land on the branch checked out where it runs):

    nohup nice -n 10 python -m benchmarks.quality.rw_eval --commit --runs-dir /work/runs/rw_eval \
        > /work/runs/rw_eval.log 2>&1 &

Every run is ``examples/pretrain_gpt_rw.sh`` (DP 2 on 2 CPU processes) through
``benchmarks.quality.gpt_sweep.run_one``, into ``runs/rw_eval/<group>-<variant>-s<seed>``. Groups:

- ``clean``/``noisy`` (tiny_cpu, seq 128, ``data/small`` / ``data/small_noisy``): uniform,
  linupper r 1.0, target ESS 0.9 and 0.7 (linupper), robust r 1.0, and ``robust-best``.
- ``noisy1024``: document units. At seq 128 a row holds 1.23 documents on average
  (results/docs_per_row.json: books, code, reference, tech docs average ~2,000-2,700 tokens), so
  ``document`` would equal ``sample`` for 81 % of rows; at 512 the noisy blend averages 1.94, at
  1024 2.89 (60 % of rows hold >= 2; at most 31, in qa: within the default 32 document slots
  per row, so no row's last documents share a weight). So seq 1024, with the seq-128 groups'
  tokens per step (4 rows x 1024 = 32 x 128) for every variant of the comparison: uniform,
  linupper r 1.0 with sample units and the same with document units. Budget: a seq-1024 iteration costs ~3.4x a seq-128 one
  here (attention), so this group trains 300 steps (1.2 M tokens), evaluates every 100, and runs
  on the noisy corpus only (its validation sets are the clean ones; it adds the random and
  duplicated documents, the case where a row mixes documents of very different value).
- ``scale`` (small_cpu: 3.99x tiny_cpu's parameters, 2 seeds, 700 steps = 1.75x tiny's tokens):
  uniform, linupper r 1.0 and ``best``; the report sets its gap to uniform beside tiny_cpu's
  (clean group, same variant flags, same seeds).

Budget (results/rw_eval_timing.json, 2-core time): ~2.9 h for clean + noisy (36 runs of ~5 min),
~1.5 h for noisy1024 (9 x ~10 min), ~1.6 h for scale (6 x ~16 min): ~6.0 h (``--list`` prints
the sums; measured under a load average of ~40, so the wall time then was ~5.5x that).

Seed-major: all of seed 1234 before seed 2345, so a partial evaluation still compares every
variant. ``robust-best`` and ``best`` wait for flags chosen from the first results (the report's
``ranking`` lists the candidates, lowest loss difference to uniform first): set
``COMBO_FLAGS``/``BEST_FLAGS`` in ``benchmarks.quality.rw_eval_plan`` (and commit), or pass
``--combo-flags``/``--best-flags``
(a quoted flag string). Until then, and while this checkout's trainer refuses a variant's flags
(a feature not merged yet), those runs are listed as blocked and skipped; the rest go on.

Corpora: ``data/small`` (``python -m megatron_rw.data.prepare --profile small --out data/small``)
and ``data/small_noisy`` (``python -m benchmarks.quality.noisy_corpus --base data/small --out
data/small_noisy``), or ``--clean-data``/``--noisy-data``. Run directories live under the
git-ignored ``runs/``: a later session must use the same ``--runs-dir`` (an absolute path if it
works in another checkout) to find and resume them; the committed ``results/rw_eval.json`` lists
what is done (``runs_used``) but cannot resume a run.

Resuming (the evaluation spans sessions): run the same command again. A run whose checkpoint
tracker is at its last iteration is done; an interrupted one continues from its last checkpoint
(``--save-interval`` 100), bit for bit. Each run directory keeps ``run.json`` with its flags; a
run whose recorded flags differ from the plan's is refused (rename or delete its directory).
With ``--commit``, after each finished run the report is regenerated and only
``results/rw_eval.json``, ``results/rw_eval.md`` (its tables) and ``results/rw_eval_*.png`` are
committed (``git commit -- paths``).
``--max-runs N`` stops after N runs (to fit a session). Timing estimates come from
``results/rw_eval_timing.json`` (``python -m benchmarks.quality.rw_eval_timing``).
"""

from __future__ import annotations

import argparse
import functools
import os
import shlex
import sys

from benchmarks.quality import gpt_sweep
from benchmarks.quality.rw_eval_runs import ARCHIVE, archive_finished, check_record, children_cpu_s
from benchmarks.quality.rw_eval_runs import commit_results, note_time, refused
from benchmarks.quality.rw_eval_runs import status as run_status
from benchmarks.quality.rw_eval_plan import BEST_FLAGS, COMBO_FLAGS, plan


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs-dir", default="runs/rw_eval")
    p.add_argument("--results", default="results", help="directory of rw_eval.json and PNGs")
    p.add_argument("--clean-data", default="data/small")
    p.add_argument("--noisy-data", default="data/small_noisy")
    p.add_argument("--combo-flags", help="robust-best's flags, one quoted string")
    p.add_argument("--best-flags", help="the scale point's best variant's flags")
    p.add_argument("--only", nargs="*", help="run names (default: all)")
    p.add_argument("--group", nargs="*", help="groups (default: all)")
    p.add_argument("--max-runs", type=int, help="stop after this many runs")
    p.add_argument("--iters", type=int, help="smoke: shorten every run (use its own --runs-dir)")
    p.add_argument("--timing", default="results/rw_eval_timing.json")
    p.add_argument("--commit", action="store_true", help="commit the results after each run")
    p.add_argument("--list", action="store_true", help="print the plan, status and estimates")
    a = p.parse_args(argv)
    combo = tuple(shlex.split(a.combo_flags)) if a.combo_flags else COMBO_FLAGS
    best = tuple(shlex.split(a.best_flags)) if a.best_flags else BEST_FLAGS
    runs = [r for r in plan(combo, best, a.iters) if (not a.only or r.name in a.only)
            and (not a.group or r.group in a.group)]
    # Finished runs are also kept (and committed) under results/: not redone if runs/ is lost.
    status = functools.partial(run_status, archive=os.path.join(a.results, ARCHIVE))
    if a.list:
        from benchmarks.quality.rw_eval_estimate import print_plan
        print_plan(runs, a.runs_dir, a.timing, refused, status)
        return 0
    data = {"clean": a.clean_data, "noisy": a.noisy_data}
    errors = gpt_sweep.missing_data(data, [r.corpus for r in runs])
    for error in errors:
        print(f"rw_eval: error: {error}", file=sys.stderr)
    if errors:
        return 1
    done = 0
    for k, run in enumerate(runs, 1):
        tag = f"[{k:2d}/{len(runs)}] {run.name}"
        if status(run, a.runs_dir) == "done":
            print(f"{tag}: done", flush=True)
            continue
        why = refused(run) or check_record(run, a.runs_dir)
        if why:
            print(f"{tag}: blocked: {why}", flush=True)
            continue
        if a.max_runs is not None and done >= a.max_runs:
            print(f"rw_eval: stopping after --max-runs {a.max_runs}")
            break
        print(f"{tag}: running ({shlex.join(run.variant_flags)})", flush=True)
        cpu0 = children_cpu_s()
        seconds = gpt_sweep.run_one(run, a.runs_dir, data, sys.executable)
        note_time(run, a.runs_dir, seconds, children_cpu_s() - cpu0)
        done += 1
        print(f"{tag}: finished in {seconds / 60:.1f} min", flush=True)
        _report(a, f"rw_eval: {run.name} finished ({k}/{len(runs)} in plan order)")
    return 0


def _report(a, message: str) -> None:
    """Regenerate the report (and commit it); a report failure must not stop the evaluation."""
    from benchmarks.quality import rw_eval_report
    try:
        archive_finished(a.runs_dir, os.path.join(a.results, ARCHIVE))
        rw_eval_report.main(["--runs-dir", a.runs_dir, "--out", a.results, "--quiet"])
        if a.commit and commit_results(a.results, message):
            print(f"committed {a.results}/rw_eval*", flush=True)
    except Exception as e:  # noqa: BLE001 -- logged; the next finished run retries
        print(f"rw_eval: report/commit failed: {e!r}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
