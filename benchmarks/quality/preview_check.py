"""Does ``--sample-reweight-preview`` change nothing, and does it predict the weights of a real run?

    python -m benchmarks.quality.preview_check [--runs-dir runs/preview_check] [--out results]

Two training runs: the evaluation's ``noisy-uniform-s1234`` (``benchmarks.quality.rw_eval``: tiny_cpu,
the noisy corpus, 400 iterations, DP 2) and the same with ``--sample-reweight-preview robust
--sample-reweight-r 1.0`` added, both through the launcher (Megatron's loop). Then two
comparisons, written to ``preview_check.json``:

- **nothing changes**: every loss, gradient norm and validation loss it logs (``train/lm loss``,
  ``train/weighted lm loss``, ``train/grad norm``, ``train/sample loss/<domain>``,
  ``valid/<domain>/lm loss``, at every logged iteration) against the uniform run: the number of
  values compared and of values
  not equal bit for bit (as JSON keeps them: the shortest repr of a double, so exact);
- **what the preview predicts**: its mean ``preview weight/<domain>`` after burn-in against the
  mean weight per domain that ``noisy-robust-r1`` (the same flags, training with them) really
  gave, per finished seed of the evaluation, and the share of the total weight of the
  duplicated and random documents (mean weight × blend share); drawn in ``preview_check.png``.

The runs resume from their checkpoints if interrupted, and are not redone once finished. (The
figures in results/preview_check.json came from the former trainer at commit 4954e89, against
the archived uniform run ``results/rw_eval_runs/noisy-uniform-s1234``.)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
from typing import Dict, List

from benchmarks.quality import gpt_sweep, rw_eval_plan
from benchmarks.quality.gpt_sweep_report import BURN_IN, blend_shares
from benchmarks.quality.rw_eval_runs import ARCHIVE

BASE = "noisy-uniform-s1234"
PREVIEW = ("--sample-reweight-preview", "robust", "--sample-reweight-r", "1.0")
REAL = "noisy-robust-r1"  # rw_eval's variant training with the previewed flags
SAME = ("train/lm loss", "train/weighted lm loss", "train/grad norm")
WEIGHT = "train/sample weight/"
PREVIEW_WEIGHT = "train/preview weight/"
ESS = "train/preview weight ess"


def preview_run() -> rw_eval_plan.EvalRun:
    """``BASE`` with the preview flags appended (a name of its own: it is not part of the plan)."""
    base = next(r for r in rw_eval_plan.plan() if r.name == BASE)
    return dataclasses.replace(base, variant="uniform-preview-robust",
                               variant_flags=(*base.variant_flags, *PREVIEW))


def read_rows(path: str) -> Dict[int, dict]:
    """metrics.jsonl -> {iteration: merged row}; a resumed run's repeated rows: the last wins
    (it continues bit for bit)."""
    rows: Dict[int, dict] = {}
    with open(os.path.join(path, "metrics.jsonl"), encoding="utf-8") as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                rows.setdefault(row["iteration"], {}).update(row)
    return rows


def compared_keys(row: dict) -> List[str]:
    return [k for k in row if k in SAME or k.startswith("train/sample loss/")
            or (k.startswith("valid/") and k.endswith("/lm loss"))]


def unchanged(preview: Dict[int, dict], base: Dict[int, dict]) -> dict:
    """Every compared value of ``base`` against ``preview``'s at the same iteration."""
    compared, differ = 0, []
    for it, row in sorted(base.items()):
        for k in compared_keys(row):
            compared += 1
            if preview.get(it, {}).get(k) != row[k]:
                differ.append({"iteration": it, "key": k, "base": row[k],
                               "preview": preview.get(it, {}).get(k)})
    return {"values_compared": compared, "values_different": len(differ),
            "first_differences": differ[:10],
            "iterations": [min(base), max(base)] if base else None}


def mean_after(rows: Dict[int, dict], prefix: str, burn_in: int) -> Dict[str, float]:
    """Mean over logged intervals after ``burn_in`` of every ``prefix<domain>`` key."""
    per: Dict[str, List[float]] = {}
    for it, row in rows.items():
        if it > burn_in:
            for k, v in row.items():
                if k.startswith(prefix):
                    per.setdefault(k[len(prefix):], []).append(v)
    return {d: statistics.fmean(v) for d, v in sorted(per.items())}


def real_weights(runs_dir: str, archive: str, burn_in: int) -> Dict[str, Dict[str, float]]:
    """Mean weight per domain after burn-in of each finished seed of ``REAL``."""
    out = {}
    for seed in rw_eval_plan.SEEDS:
        name = f"{REAL}-s{seed}"
        for folder in (runs_dir, archive):
            path = os.path.join(folder, name)
            if os.path.exists(os.path.join(path, "metrics.jsonl")):
                rows = read_rows(path)
                if max(rows) == gpt_sweep.ITERS:
                    out[str(seed)] = mean_after(rows, WEIGHT, burn_in)
                    break
    return out


def compare(preview: Dict[str, float], real: Dict[str, Dict[str, float]],
            shares: Dict[str, float]) -> dict:
    """Per domain: the preview's mean weight, the real run's (median over seeds, and per seed),
    both as shares of the total weight."""
    out = {}
    for d, w in preview.items():
        seeds = {s: r[d] for s, r in real.items() if d in r}
        med = statistics.median(seeds.values()) if seeds else None
        share = shares.get(d)
        out[d] = {"preview": w, "real_median": med, "real_per_seed": seeds,
                  "preview_mass": w * share if share is not None else None,
                  "real_mass": med * share if share is not None and med is not None else None}
    return out


def plot(report: dict, path: str) -> None:
    """Per domain: the preview's mean weight beside each seed of the real run's."""
    from benchmarks.quality.gpt_sweep_plots import _plt  # matplotlib only when plotting
    plt = _plt()
    doms = list(report["weights"])
    seeds = sorted({s for c in report["weights"].values() for s in c["real_per_seed"]})
    bars = {"preview (uniform run, seed 1234)": [report["weights"][d]["preview"] for d in doms],
            **{f"{REAL}, seed {s}": [report["weights"][d]["real_per_seed"].get(s, 0.0)
                                     for d in doms] for s in seeds}}
    fig, a = plt.subplots(figsize=(10, 4.2))
    width = 0.8 / len(bars)
    for k, (name, values) in enumerate(bars.items()):
        a.bar([i + (k - (len(bars) - 1) / 2) * width for i in range(len(doms))], values, width,
              label=name, color="black" if k == 0 else None)
    a.axhline(1.0, color="grey", lw=0.8, ls="--")
    a.set_xticks(range(len(doms)), doms, rotation=20)
    a.set(ylabel="mean weight after burn-in (1 = uniform)",
          title="--sample-reweight-preview robust on a uniform run vs robust training with it")
    a.set_ylim(0, 1.45)  # room for the legend above the bars
    a.legend(fontsize=8, ncol=len(bars), loc="upper center")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs-dir", default="runs/preview_check")
    p.add_argument("--eval-runs-dir", default="runs/rw_eval",
                   help="where rw_eval's runs are (the committed archive is read too)")
    p.add_argument("--noisy-data", default="data/small_noisy")
    p.add_argument("--out", default="results")
    p.add_argument("--no-plot", action="store_true", help="skip preview_check.png")
    a = p.parse_args(argv)
    archive = os.path.join(a.out, ARCHIVE)
    errors = gpt_sweep.missing_data({"noisy": a.noisy_data}, ["noisy"])
    if errors:
        print(f"preview_check: error: {errors[0]}", file=sys.stderr)
        return 1
    base_run = next(r for r in rw_eval_plan.plan() if r.name == BASE)
    run = preview_run()
    for r in (base_run, run):
        if not gpt_sweep.finished(os.path.join(a.runs_dir, r.name), r.iters):
            print(f"preview_check: training {r.name} ({' '.join(r.flags())})", flush=True)
            seconds = gpt_sweep.run_one(r, a.runs_dir, {"noisy": a.noisy_data}, sys.executable)
            print(f"preview_check: trained in {seconds / 60:.1f} min", flush=True)
    out_dir = os.path.join(a.runs_dir, run.name)
    preview, base = read_rows(out_dir), read_rows(os.path.join(a.runs_dir, BASE))
    burn_in = BURN_IN  # the noisy group's (gpt_sweep.COMMON)
    shares = blend_shares(os.path.join(a.noisy_data, "manifest.json"))
    report = {
        "run": run.name, "flags": run.flags(), "base": BASE, "real": REAL,
        "unchanged": unchanged(preview, base),
        "weights": compare(mean_after(preview, PREVIEW_WEIGHT, burn_in),
                           real_weights(a.eval_runs_dir, archive, burn_in), shares),
        "preview_ess": statistics.fmean(row[ESS] for it, row in preview.items()
                                        if it > burn_in and ESS in row),
        "definitions": {
            "weights": "mean over logged intervals after burn-in of each domain's mean weight "
                       "(1 = uniform); real = the same for noisy-robust-r1, which trains with "
                       "the previewed weights, per seed and its median",
            "mass": "mean weight x the domain's share of the training blend = its share of "
                    "the total weight"}}
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "preview_check.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1)
    u = report["unchanged"]
    print(f"unchanged: {u['values_different']} of {u['values_compared']} logged losses, grad "
          f"norms and validation losses differ from {BASE} (iterations {u['iterations']})")
    print(f"{'domain':14s} {'preview':>8s} {'real (median)':>14s}  real per seed")
    for d, c in report["weights"].items():
        real = "-" if c["real_median"] is None else f"{c['real_median']:.3f}"
        print(f"{d:14s} {c['preview']:8.3f} {real:>14s}  " + " ".join(
            f"{s}:{w:.3f}" for s, w in c["real_per_seed"].items()))
    written = [os.path.join(a.out, "preview_check.json")]
    if not a.no_plot:
        written.append(os.path.join(a.out, "preview_check.png"))
        plot(report, written[-1])
    print(f"wrote {', '.join(written)}")
    return 0 if u["values_different"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
