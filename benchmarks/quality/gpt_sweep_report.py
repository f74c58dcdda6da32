"""Compare the runs of ``benchmarks.quality.gpt_sweep``: validation loss of each strategy against uniform.

    python -m benchmarks.quality.gpt_sweep_report [--runs-dir runs/sweep] [--out results]

Reads every ``<group>-<strategy>-r<r>-s<seed>/metrics.jsonl`` under the runs directory and groups
the runs into variants (group, strategy, r). Only finished runs (last evaluation at the sweep's
last iteration) enter the comparisons; unfinished and missing ones are listed. Writes
``gpt_sweep.json`` and three PNGs (``benchmarks.quality.gpt_sweep_plots``) and prints a summary.

Definitions (also written to the JSON):

- paired difference: variant minus uniform of the same group, for the same seed. The seed fixes
  the initialisation and the data order, so pairing removes most of the run-to-run noise.
- verdict: "lower" / "higher" when every one of >= 3 paired differences has the same sign and
  |median difference| exceeds the spread (max - min) of uniform's own seeds; otherwise
  "within seed noise" ("too few seeds" under 3 pairs). Lower loss is better.
- steps to target: the target is uniform's final ``valid/all`` loss (median over its seeds); per
  run, the first iteration at which its eval curve, linearly interpolated between evaluations
  (every ``--eval-interval`` steps), reaches the target; "not reached" if it never does.
- mean weight of a domain: the mean over logged intervals after burn-in (finite reweight r) of
  ``train/sample weight/<domain>`` (1 = uniform); weight mass = mean weight x the domain's share of
  the training blend (its share of the samples), i.e. its share of the total weight.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import sys
from collections import defaultdict
from typing import Dict, List, Optional

from benchmarks.quality import gpt_sweep
from benchmarks.quality.run_metrics import blend_shares  # noqa: F401  (the reports import it from here)

VALID = "valid/{}/lm loss"
WEIGHT = "train/sample weight/"
R_KEY = "train/reweight r"
MEAN_DOMAINS = "mean of domains"  # unweighted mean over domains (valid/all is the blend's loss)
MIN_PAIRS = len(gpt_sweep.SEEDS)
NAME = re.compile(r"^(?P<group>[a-z_]+)-(?P<strategy>[a-z_]+)-r(?P<r>[0-9.]+)-s(?P<seed>\d+)$")
DATA = {"clean": "data/small", "noisy": "data/small_noisy"}  # the runner's --*-data defaults


def _flag(name: str) -> int:
    return int(gpt_sweep.COMMON[gpt_sweep.COMMON.index(name) + 1])


EVAL_INTERVAL = _flag("--eval-interval")
BURN_IN = _flag("--sample-reweight-warmup-iters")
DEFINITIONS = {k: " ".join(v.split()) for k, v in {
    "paired_difference": "variant minus uniform of the same group, same seed (seed fixes init and "
                         "data order); negative = lower loss than uniform",
    "verdict": f"'lower'/'higher' if all >= {MIN_PAIRS} paired differences have the same sign and "
               "|median difference| > max - min of uniform's values over its seeds; else 'within "
               "seed noise'; 'too few seeds' under that many pairs",
    "steps_to_target": "target = median over uniform's seeds of valid/all lm loss at the last "
                       "iteration; per run, first iteration where the eval curve, linearly "
                       f"interpolated between evaluations (every {EVAL_INTERVAL} steps), is <= "
                       "target; null = not reached; median counts not reached as infinite",
    "mean_weight": "mean over logged intervals with finite train/reweight r (after burn-in) of "
                   "train/sample weight/<domain>, median over seeds; 1 = uniform",
    "weight_mass": "mean weight x the domain's share of the training blend = its share of the "
                   "total weight (uniform: the blend share)",
    "mean_of_domains": "unweighted mean of the per-domain validation losses",
}.items()}


def read_metrics(path: str, series=(R_KEY,)) -> Optional[dict]:
    """A run directory's ``metrics.jsonl`` -> eval curves, post-burn-in weight series and the
    post-burn-in series of the ``series`` keys; None without metrics."""
    metrics = os.path.join(path, "metrics.jsonl")
    if not os.path.exists(metrics):
        return None
    evals, weights, other = defaultdict(dict), defaultdict(dict), defaultdict(dict)
    with open(metrics, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            row = json.loads(line)
            it = row["iteration"]
            # a resumed run logs some iterations twice; it continues bit for bit, so the last wins
            for k, v in row.items():
                if k.startswith("valid/") and k.endswith("/lm loss"):
                    evals[k[len("valid/"):-len("/lm loss")]][it] = v
            if math.isfinite(row.get(R_KEY, math.inf)):  # reweighting was on for this interval
                for k, v in row.items():
                    if k.startswith(WEIGHT):
                        weights[k[len(WEIGHT):]][it] = v
                    elif k in series:
                        other[k][it] = v
    sort = lambda d: {k: sorted(v.items()) for k, v in sorted(d.items())}
    all_evals = evals.get("all", {})
    return {"eval": sort(evals), "weights": sort(weights), "series": sort(other),
            "last_eval": max(all_evals) if all_evals else None}


def load_run(path: str) -> Optional[dict]:
    """One run directory of this sweep -> its name fields, eval curves and weight series."""
    m = NAME.match(os.path.basename(os.path.normpath(path)))
    metrics = read_metrics(path) if m else None
    if metrics is None:
        return None
    return {"name": m.group(0), "group": m["group"], "strategy": m["strategy"],
            "r": float(m["r"]), "seed": int(m["seed"]), **metrics}


def variant_of(run: dict) -> str:
    """A run's variant: its own ``variant`` key (other harnesses), else group-strategy-r."""
    return run.get("variant") or f"{run['group']}-{run['strategy']}-r{run['r']:g}"


def uniform_of(group: str) -> str:
    """The uniform baseline variant of ``group`` in this sweep's naming."""
    return f"{group}-uniform-r1"


def spread(values: List[float]) -> dict:
    """Median and range of one quantity across seeds."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "n": len(values)}


def verdict(diffs: List[float], uniform_values: List[float], min_pairs: int = MIN_PAIRS) -> str:
    """Whether paired differences to uniform exceed seed noise (see DEFINITIONS['verdict'])."""
    if len(diffs) < min_pairs or len(uniform_values) < min_pairs:
        return "too few seeds"
    med, noise = statistics.median(diffs), max(uniform_values) - min(uniform_values)
    same_sign = all(d < 0 for d in diffs) or all(d > 0 for d in diffs)
    if same_sign and abs(med) > noise:
        return "lower" if med < 0 else "higher"
    return "within seed noise"


def steps_to_target(curve: List[tuple], target: float) -> Optional[float]:
    """First iteration at which the linearly interpolated eval curve is <= target, None if never.

    Before the first evaluation nothing is known, so a curve already below target there counts
    as reaching it at that evaluation."""
    prev = None
    for it, loss in curve:
        if loss <= target:
            if prev is None:
                return float(it)
            (i0, l0) = prev  # l0 > target >= loss, so the slope is non-zero
            return i0 + (l0 - target) / (l0 - loss) * (it - i0)
        prev = (it, loss)
    return None


def _iters(run: dict) -> int:
    """The iteration a run is finished at (its own ``iters`` key, else this sweep's)."""
    return run.get("iters", gpt_sweep.ITERS)


def _finals(run: dict, domains: List[str]) -> Dict[str, float]:
    """Validation losses at the last iteration: all, each domain and their unweighted mean."""
    last = {d: dict(run["eval"][d])[_iters(run)] for d in ["all", *domains]}
    last[MEAN_DOMAINS] = statistics.fmean(last[d] for d in domains)
    return last


def _median_curve(curves: List[List[tuple]]) -> dict:
    """Median and min/max across seeds at the iterations every seed has."""
    common = sorted(set.intersection(*(set(dict(c)) for c in curves)))
    cols = [[dict(c)[it] for c in curves] for it in common]
    return {"iterations": common, "median": [statistics.median(c) for c in cols],
            "min": [min(c) for c in cols], "max": [max(c) for c in cols]}


def summarise(runs: List[dict], shares: Dict[str, Dict[str, float]],
              baseline=uniform_of) -> Dict[str, dict]:
    """Per variant: curves, finals, paired differences to uniform, steps to target, weights.

    ``baseline(group)`` names the variant every other variant of ``group`` is paired with."""
    used = [r for r in runs if r["last_eval"] == _iters(r)]
    by_variant = defaultdict(dict)
    for r in used:
        by_variant[variant_of(r)][r["seed"]] = r
    domains = {g: sorted({d for r in used if r["group"] == g for d in r["eval"]} - {"all"})
               for g in {r["group"] for r in used}}
    out = {}
    for v, seeds in sorted(by_variant.items()):
        first = next(iter(seeds.values()))
        group, doms = first["group"], domains[first["group"]]
        finals = {s: _finals(r, doms) for s, r in sorted(seeds.items())}
        keys = ["all", *doms, MEAN_DOMAINS]
        uni = {s: _finals(r, doms) for s, r in by_variant.get(baseline(group), {}).items()}
        target = statistics.median(f["all"] for f in uni.values()) if uni else None
        s = {"group": group, "strategy": first["strategy"], "r": first["r"],
             "seeds": sorted(seeds),
             "curves": {k: _median_curve([r["eval"][k] for r in seeds.values()])
                        for k in ["all", *doms]},
             "final": {k: {**spread([f[k] for f in finals.values()]),
                           "per_seed": {str(sd): f[k] for sd, f in finals.items()}} for k in keys}}
        if uni and v != baseline(group):
            s["vs_uniform"] = {}
            for k in keys:
                diffs = {sd: finals[sd][k] - uni[sd][k] for sd in finals if sd in uni}
                entry = {"per_seed": {str(sd): d for sd, d in diffs.items()},
                         "uniform_spread": max(u[k] for u in uni.values()) -
                         min(u[k] for u in uni.values()),
                         "verdict": verdict(list(diffs.values()), [u[k] for u in uni.values()])}
                s["vs_uniform"][k] = {**(spread(list(diffs.values())) if diffs else {}), **entry}
        if target is not None:
            per = {sd: steps_to_target(r["eval"]["all"], target) for sd, r in seeds.items()}
            med = statistics.median(math.inf if x is None else x for x in per.values())
            s["steps_to_target"] = {"target": target, "median": None if math.isinf(med) else med,
                                    "per_seed": {str(k): x for k, x in per.items()}}
        s["weights"] = _weights(seeds.values(), shares.get(group, {}))
        out[v] = s
    return out


def _weights(runs, shares: Dict[str, float]) -> dict:
    """Mean weight per domain after burn-in (median over seeds), its weight mass and its curve."""
    doms = sorted({d for r in runs for d in r["weights"]})
    mean = {d: statistics.median(statistics.fmean(w for _, w in r["weights"][d])
                                 for r in runs if r["weights"].get(d)) for d in doms}
    return {"mean": mean, "share": {d: shares.get(d) for d in doms},
            "mass": {d: mean[d] * shares[d] if d in shares else None for d in doms},
            "curves": {d: _median_curve([r["weights"][d] for r in runs if r["weights"].get(d)])
                       for d in doms}}


def _steps(x: Optional[float]) -> str:
    return "n.r." if x is None else f"{x:.0f}"


def print_summary(report: dict, width: int = 22, last: str = str(gpt_sweep.ITERS),
                  source: str = "gpt_sweep.json") -> None:
    """The tables a reader needs: finals vs uniform, per-domain differences, weights.

    ``width``: of the variant column; ``last``: how the header names the final iteration;
    ``source``: the JSON file whose definitions the header points to."""
    variants = report["variants"]
    print(f"runs used: {len(report['runs_used'])}; unfinished: "
          f"{', '.join(report['unfinished']) or 'none'}; missing: {len(report['missing'])}")
    print(f"\nvalid/all lm loss at iteration {last} (median [min, max] over seeds); "
          f"diff = variant - uniform, paired by seed; verdict: see {source} definitions")
    print(f"{'variant':{width}s} {'n':>2s} {'valid/all':>25s} {'diff vs uniform':>26s} "
          f"{'verdict':>17s} {'mean-of-domains':>17s}  steps to uniform's final: median, per seed")
    for v, s in variants.items():
        f, d = s["final"]["all"], s.get("vs_uniform", {})
        diff = (f"{d['all']['median']:+.4f} [{d['all']['min']:+.4f}, {d['all']['max']:+.4f}]"
                if d.get("all", {}).get("n") else "")
        st = s.get("steps_to_target")  # absent when the group has no finished uniform run
        steps = (f"{_steps(st['median'])} ({' '.join(map(_steps, st['per_seed'].values()))})"
                 if st else "")
        print(f"{v:{width}s} {f['n']:2d} {f['median']:8.4f} [{f['min']:.4f}, {f['max']:.4f}] "
              f"{diff:>26s} {d.get('all', {}).get('verdict', ''):>17s} "
              f"{d.get(MEAN_DOMAINS, {}).get('verdict', ''):>17s}  {steps}")
    print(f"\nper-domain validation loss diff vs uniform at {last} (median over seeds;"
          " * = beyond seed noise)")
    for group in sorted({s["group"] for s in variants.values()}):
        rows = {v: s for v, s in variants.items() if s["group"] == group and "vs_uniform" in s}
        if not rows:
            continue
        keys = [k for k in next(iter(rows.values()))["vs_uniform"] if k != "all"]
        print(f"{group:{width}s} " + " ".join(f"{k.replace('mean of domains', 'mean')[:9]:>10s}"
                                         for k in keys))
        for v, s in rows.items():
            cells = [s["vs_uniform"][k] for k in keys]
            print(f"{v:{width}s} " + " ".join(
                f"{c['median']:+9.4f}{'*' if c['verdict'] in ('lower', 'higher') else ' '}"
                if c.get("n") else f"{'-':>10s}" for c in cells))
    print("\nmean sample weight per domain after burn-in (median over seeds; 1 = uniform); "
          "[weight mass / blend share] for the noisy group's extra domains")
    for v, s in variants.items():
        w = s["weights"]
        cells = [f"{d}={w['mean'][d]:.3f}" + (
            f" [{w['mass'][d]:.3f}/{w['share'][d]:.3f}]"
            if d in ("duplicated", "random") and w["mass"].get(d) is not None else "")
            for d in w["mean"]]
        print(f"{v:{width}s} " + " ".join(cells))


def build(runs_dir: str) -> dict:
    """Everything gpt_sweep.json holds."""
    names = sorted(os.listdir(runs_dir)) if os.path.isdir(runs_dir) else []
    runs = [r for r in (load_run(os.path.join(runs_dir, n)) for n in names) if r]
    shares = {g: blend_shares(os.path.join(p, "manifest.json")) for g, p in DATA.items()}
    present = {r["name"] for r in runs}
    return {
        "settings": {"iterations": gpt_sweep.ITERS, "eval_interval": EVAL_INTERVAL,
                     "burn_in_iterations": BURN_IN, "common_flags": gpt_sweep.COMMON,
                     "plan": [r.name for r in gpt_sweep.plan()], "runs_dir": runs_dir},
        "seeds": list(gpt_sweep.SEEDS),
        "definitions": DEFINITIONS,
        "blend_shares": shares,
        "runs_used": [r["name"] for r in runs if r["last_eval"] == gpt_sweep.ITERS],
        "unfinished": [r["name"] for r in runs if r["last_eval"] != gpt_sweep.ITERS],
        "missing": [r.name for r in gpt_sweep.plan() if r.name not in present],
        "runs": {r["name"]: {"variant": variant_of(r), "seed": r["seed"],
                             "last_eval": r["last_eval"],
                             "eval": {d: [[it, round(x, 5)] for it, x in c]
                                      for d, c in r["eval"].items()}} for r in runs},
        "variants": summarise(runs, shares),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs-dir", default="runs/sweep")
    p.add_argument("--out", default="results", help="directory for gpt_sweep.json and PNGs")
    p.add_argument("--no-plots", action="store_true", help="only the JSON and the printed tables")
    a = p.parse_args(argv)
    report = build(a.runs_dir)
    if not report["variants"]:
        print(f"gpt_sweep_report: error: no finished runs in {a.runs_dir}", file=sys.stderr)
        return 1
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "gpt_sweep.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1)
    print_summary(report)
    written = ["gpt_sweep.json"]
    if not a.no_plots:
        from benchmarks.quality import gpt_sweep_plots  # matplotlib only when plotting
        written += gpt_sweep_plots.plot_all(report, a.out)
    print(f"\nwrote {', '.join(os.path.join(a.out, w) for w in written)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
