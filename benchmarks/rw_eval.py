r"""Issue 11's evaluation: every new reweighting feature against uniform, resumable across sessions.

    python -m benchmarks.rw_eval --list                # plan, status, estimated hours per group
    nice -n 10 python -m benchmarks.rw_eval --commit   # run what is left; commit results as it goes
    python -m benchmarks.rw_eval_report                # only regenerate results/rw_eval*.{json,md,png}

A session that leaves it running (results land on the branch checked out where it runs):

    nohup nice -n 10 python -m benchmarks.rw_eval --commit --runs-dir /work/runs/rw_eval \
        > /work/runs/rw_eval.log 2>&1 &

Every run is ``examples/pretrain_gpt_rw.sh`` (DP 2 on 2 CPU processes) through
``benchmarks.gpt_sweep.run_one``, into ``runs/rw_eval/<group>-<variant>-s<seed>``. Groups:

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
``COMBO_FLAGS``/``BEST_FLAGS`` below (and commit), or pass ``--combo-flags``/``--best-flags``
(a quoted flag string). Until then, and while this checkout's trainer refuses a variant's flags
(a feature not merged yet), those runs are listed as blocked and skipped; the rest go on.

Corpora: ``data/small`` (``python -m megatron_rw.data.prepare --profile small --out data/small``)
and ``data/small_noisy`` (``python -m benchmarks.noisy_corpus --base data/small --out
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
``results/rw_eval_timing.json`` (``python -m benchmarks.rw_eval_timing``).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import shlex
import sys
from typing import Dict, List, Optional, Tuple

from benchmarks import gpt_sweep
from benchmarks.rw_eval_runs import ARCHIVE, archive_finished, check_record, children_cpu_s
from benchmarks.rw_eval_runs import commit_results, note_time, refused
from benchmarks.rw_eval_runs import status as run_status

REPO = gpt_sweep.REPO
TINY = gpt_sweep.CONFIG
SMALL = os.path.join(REPO, "examples", "configs", "small_cpu.sh")
SEEDS = gpt_sweep.SEEDS

# Chosen after the first seed's results (see the module docstring); a tuple of flags, or None.
# Combo (seed 1234): of the other knobs only the target ESS applies at seq 128 (a row is one
# document for 81 % of rows, so document units would nearly equal sample units), and ESS 0.9
# cost less than 0.7 (+0.029/+0.025 vs +0.122/+0.130 over uniform, clean/noisy). Robust at
# r 1.0 sat at an ESS of 0.95: the combo asks whether a sharper robust weighting helps more.
COMBO_FLAGS: Optional[Tuple[str, ...]] = ("--sample-reweight-strategy", "robust",
                                          "--sample-reweight-target-ess", "0.9")
# Best (seed 1234, both combos in): robust r 1.0, the lowest mean difference to uniform over
# clean and noisy (-0.0002 / -0.0177; the combo +0.0218 / -0.0151, linupper r 1.0 +0.0098 / +0.0063).
BEST_FLAGS: Optional[Tuple[str, ...]] = ("--sample-reweight-strategy", "robust",
                                         "--sample-reweight-r", "1.0")

STRATEGY = "--sample-reweight-strategy"
LINUPPER_R1 = (STRATEGY, "linupper", "--sample-reweight-r", "1.0")
# The seq-128 groups' variants. --sample-reweight-r is ignored under a target ESS (the config's
# 0.4 stays on the command line harmlessly); robust at r 1.0 so it pairs with linupper r 1.0.
MAIN = {
    "uniform": (STRATEGY, "uniform"),
    "linupper-r1": LINUPPER_R1,
    "ess0.9": (STRATEGY, "linupper", "--sample-reweight-target-ess", "0.9"),
    "ess0.7": (STRATEGY, "linupper", "--sample-reweight-target-ess", "0.7"),
    "robust-r1": (STRATEGY, "robust", "--sample-reweight-r", "1.0"),
    "robust-best": "combo",
}
DOC = {"uniform": (STRATEGY, "uniform"), "linupper-r1": LINUPPER_R1,
       "linupper-r1-doc": (*LINUPPER_R1, "--sample-reweight-unit", "document")}
SCALE = {"uniform": (STRATEGY, "uniform"), "linupper-r1": LINUPPER_R1, "best": "best"}
# Document group: 4 x 1024 tokens per step, the seq-128 groups' 32 x 128; one micro-batch of
# 2 rows per rank, so each softmax sees 4 rows (sample units) or ~12 documents (document units).
SEQ1024 = ("--seq-length", "1024", "--max-position-embeddings", "1024",
           "--micro-batch-size", "2", "--global-batch-size", "4")
DOC_ITERS = 300  # budget (see the module docstring); burn-in and warm-up 10 %, as in the sweep
DOC_FLAGS = ("--train-iters", str(DOC_ITERS), "--lr-warmup-iters", "30", "--eval-interval", "100",
             "--eval-iters", "4", "--save-interval", "100", "--log-interval", "10",
             "--sample-reweight-warmup-iters", "30", *SEQ1024)
SCALE_ITERS = 700  # 1.75x tiny's 400: 2.9 M tokens, ~0.7 of data/small's 3.9 M training tokens
SCALE_FLAGS = ("--train-iters", str(SCALE_ITERS), "--lr-warmup-iters", "60", "--eval-interval",
               "100", "--eval-iters", "4", "--save-interval", "100", "--log-interval", "10",
               "--sample-reweight-warmup-iters", "70")

# Timing profiles (results/rw_eval_timing.json): the config and the flags that change its cost.
PROFILES = {"tiny": (TINY, ()), "tiny_seq1024": (TINY, SEQ1024), "small": (SMALL, ())}


@dataclasses.dataclass(frozen=True)
class Group:
    """Runs that share corpus, config and common flags; variants are paired with ``uniform``."""

    name: str
    corpus: str                  # key of the runner's --clean-data / --noisy-data
    config: str
    profile: str                 # key of results/rw_eval_timing.json
    iters: int
    flags: Tuple[str, ...]       # after the config's, before the variant's
    variants: Dict[str, object]  # name -> flags, or "combo"/"best" (chosen later)
    seeds: Tuple[int, ...] = SEEDS


GROUPS = (
    Group("clean", "clean", TINY, "tiny", gpt_sweep.ITERS, tuple(gpt_sweep.COMMON), MAIN),
    Group("noisy", "noisy", TINY, "tiny", gpt_sweep.ITERS, tuple(gpt_sweep.COMMON), MAIN),
    Group("noisy1024", "noisy", TINY, "tiny_seq1024", DOC_ITERS, DOC_FLAGS, DOC),
    Group("scale", "clean", SMALL, "small", SCALE_ITERS, SCALE_FLAGS, SCALE, SEEDS[:2]),
)


@dataclasses.dataclass(frozen=True)
class EvalRun:
    """One run; ``variant_flags`` is None while its flags are still to be chosen."""

    group: str
    variant: str
    seed: int
    corpus: str
    config: str
    profile: str
    iters: int
    common: Tuple[str, ...]
    variant_flags: Optional[Tuple[str, ...]]
    eval_interval: int

    @property
    def name(self) -> str:
        return f"{self.group}-{self.variant}-s{self.seed}"

    def flags(self) -> List[str]:
        return [*self.common, "--seed", str(self.seed), *(self.variant_flags or ())]

    def record(self) -> dict:
        """What run.json keeps: enough to recognise the run and to report it without the plan."""
        return {"name": self.name, "group": self.group, "variant": self.variant,
                "seed": self.seed, "corpus": self.corpus,
                "config": os.path.relpath(self.config, REPO), "iters": self.iters,
                "flags": self.flags(), "variant_flags": list(self.variant_flags or ())}


def _flag(flags, name: str, default: int) -> int:
    """The last value of ``name`` in ``flags`` (argparse keeps the last)."""
    idx = [i for i, f in enumerate(flags) if f == name]
    return int(flags[idx[-1] + 1]) if idx else default


def smoke_flags(iters: int) -> Tuple[str, ...]:
    """Overrides for a short proof run: everything (burn-in, evals, a checkpoint) within iters."""
    return ("--train-iters", str(iters), "--lr-warmup-iters", str(max(iters // 4, 1)),
            "--eval-interval", str(max(iters // 2, 1)), "--save-interval", str(iters),
            "--log-interval", str(max(iters // 4, 1)),
            "--sample-reweight-warmup-iters", str(iters // 4))


def plan(combo: Optional[Tuple[str, ...]] = COMBO_FLAGS,
         best: Optional[Tuple[str, ...]] = BEST_FLAGS,
         iters: Optional[int] = None) -> List[EvalRun]:
    """Every run, seed-major; ``iters`` (smoke runs only) shortens every run to that many."""
    chosen = {"combo": combo, "best": best}
    runs = []
    for seed in SEEDS:
        for g in GROUPS:
            if seed not in g.seeds:
                continue
            common = (*g.flags, *smoke_flags(iters)) if iters else g.flags
            for variant, flags in g.variants.items():
                vflags = chosen[flags] if isinstance(flags, str) else flags
                runs.append(EvalRun(g.name, variant, seed, g.corpus, g.config, g.profile,
                                    iters or g.iters, common,
                                    tuple(vflags) if vflags is not None else None,
                                    _flag(common, "--eval-interval", 50)))
    return runs


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
        from benchmarks.rw_eval_estimate import print_plan
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
    from benchmarks import rw_eval_report
    try:
        archive_finished(a.runs_dir, os.path.join(a.results, ARCHIVE))
        rw_eval_report.main(["--runs-dir", a.runs_dir, "--out", a.results, "--quiet"])
        if a.commit and commit_results(a.results, message):
            print(f"committed {a.results}/rw_eval*", flush=True)
    except Exception as e:  # noqa: BLE001 -- logged; the next finished run retries
        print(f"rw_eval: report/commit failed: {e!r}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
