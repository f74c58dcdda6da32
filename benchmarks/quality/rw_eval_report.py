"""Report of ``benchmarks.quality.rw_eval``: each variant against uniform, noise weight shares, scale point.

    python -m benchmarks.quality.rw_eval_report [--runs-dir runs/rw_eval] [--out results] [--no-plots]

Reads every run directory holding ``run.json`` (written by the runner) and ``metrics.jsonl``; the
statistics are ``benchmarks.quality.gpt_sweep_report``'s (``summarise``: paired-by-seed differences to
the group's uniform, the same verdict rule, steps to uniform's final loss, per-domain validation
loss, mean weight and weight mass per training domain). Added here:

- per variant: its flags, and the median over seeds of the median post-burn-in ``train/reweight
  r`` and ``train/sample weight ess`` (what a target ESS chose, what a fixed r gave);
- ``noise``: for the noisy groups, the duplicated and random documents' share of the total weight
  (their weight mass) next to their share of the rows (the blend share; uniform gets exactly that);
- ``scale``: for each scale-group variant, its paired difference to uniform at small_cpu beside
  the clean group's tiny_cpu variant with the same flags, on the same seeds;
- ``units``: document units minus sample units (linupper r 1.0 at sequence length 1024), paired
  by seed: the feature's own effect, with the verdict rule's answer (the rows' seed spread as
  the noise);
- ``ranking``: the seq-128 variants other than uniform and robust by their mean (over clean and
  noisy) median valid/all difference to uniform: the candidates for the ``best`` flags.

Writes ``rw_eval.json``, its tables as Markdown in ``rw_eval.md`` (``benchmarks.quality.rw_eval_table``)
and, unless ``--no-plots``, ``rw_eval_diffs.png``, ``rw_eval_noise.png``, ``rw_eval_scale.png``
and ``rw_eval_units.png`` (``benchmarks.quality.rw_eval_plots``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from typing import Dict, List, Optional

from benchmarks.quality import gpt_sweep_report as rep
from benchmarks.quality import rw_eval_plan, rw_eval_table
from benchmarks.quality.rw_eval_runs import ARCHIVE

ESS_KEY = "train/sample weight ess"
SERIES = (rep.R_KEY, ESS_KEY)
NOISE = ("duplicated", "random")
DEFINITIONS = {**rep.DEFINITIONS,
               "steps_to_target": rep.DEFINITIONS["steps_to_target"].replace(
                   f"(every {rep.EVAL_INTERVAL} steps)", "(every --eval-interval steps of the "
                   "run's group)"),
               "reweight_r": "median over seeds of the median over post-burn-in log intervals of "
                             "train/reweight r (a target ESS chooses it per micro-batch)",
               "weight_ess": "same for train/sample weight ess, (sum w)^2 / (N sum w^2)",
               "noise_share": "weight mass of the duplicated / random training domains (share of "
                              "the total weight, median over seeds) vs their blend share (their "
                              "share of the rows; with document units a row's domain is its "
                              "dataset's, so this stays the share of the rows)",
               "scale": "difference to uniform (paired by seed) at small_cpu vs the clean group's "
                        "tiny_cpu variant with the same variant flags, on the scale group's seeds",
               "units": "noisy1024: linupper r 1.0 with document units minus the same with "
                        "sample units (rows), paired by seed, per validation loss; verdict by "
                        "the same rule with the rows' values over those seeds as the noise",
               "ranking": "variants of clean and noisy except uniform and robust*, by the mean over "
                          "both groups of the median valid/all difference to uniform (lowest "
                          "first); only variants finished in both groups"}


def load_run(path: str) -> Optional[dict]:
    """A run directory of rw_eval -> the dict gpt_sweep_report.summarise takes."""
    try:
        with open(os.path.join(path, "run.json"), encoding="utf-8") as f:
            info = json.load(f)
    except (OSError, ValueError):
        return None
    metrics = rep.read_metrics(path, SERIES)
    if metrics is None:
        return None
    return {**info, "variant": f"{info['group']}-{info['variant']}", "label": info["variant"],
            "strategy": info["variant"], "r": None, **metrics}


def _median_of_medians(runs: List[dict], key: str) -> Optional[float]:
    per = [statistics.median(v for _, v in r["series"][key]) for r in runs
           if r["series"].get(key)]
    return statistics.median(per) if per else None


def scale_point(variants: Dict[str, dict], flags: Dict[str, list]) -> Dict[str, dict]:
    """Each scale variant's gap to uniform beside tiny's (clean group, same flags, same seeds)."""
    out = {}
    for v, s in variants.items():
        if s["group"] != "scale" or "vs_uniform" not in s:
            continue
        tiny = next((t for t, ts in variants.items() if ts["group"] == "clean"
                     and flags.get(t) == flags[v] and "vs_uniform" in ts), None)
        small = s["vs_uniform"]["all"]["per_seed"]
        entry = {"small": {"per_seed": small, "median": statistics.median(small.values())},
                 "tiny_variant": tiny}
        if tiny:
            t = variants[tiny]["vs_uniform"]["all"]["per_seed"]
            same = {sd: t[sd] for sd in small if sd in t}
            entry["tiny"] = {"per_seed": same,
                             "median": statistics.median(same.values()) if same else None,
                             "median_all_seeds": statistics.median(t.values())}
        out[v] = entry
    return out


def units(variants: Dict[str, dict], group: str = "noisy1024",
          rows: str = "linupper-r1", documents: str = "linupper-r1-doc") -> Optional[dict]:
    """Document units against sample units with everything else equal: the paired difference
    (same seed) of every validation loss, documents minus rows, with the verdict rule's answer
    taking the rows' values over seeds as the noise (rows are this comparison's baseline). None
    until a seed has both."""
    a, b = variants.get(f"{group}-{documents}"), variants.get(f"{group}-{rows}")
    if not a or not b:
        return None
    out = {}
    for k, fa in a["final"].items():
        fb = b["final"][k]["per_seed"]
        diffs = {sd: x - fb[sd] for sd, x in fa["per_seed"].items() if sd in fb}
        if diffs:
            out[k] = {"per_seed": diffs, "median": statistics.median(diffs.values()),
                      "min": min(diffs.values()), "max": max(diffs.values()), "n": len(diffs),
                      "verdict": rep.verdict(list(diffs.values()),
                                             [fb[sd] for sd in diffs])}
    return out or None


def ranking(variants: Dict[str, dict], groups=("clean", "noisy")) -> List[dict]:
    """Variants of the seq-128 groups (not uniform, not robust*) by the mean over ``groups`` of
    their median valid/all difference to uniform: the candidates for ``robust-best``'s and the
    scale point's ``best`` flags. Only variants with a paired result in every group rank."""
    by_label = {}
    for v, s in variants.items():
        if s["group"] in groups and "vs_uniform" in s and not s["label"].startswith("robust"):
            by_label.setdefault(s["label"], {})[s["group"]] = s
    out = []
    for label, per in by_label.items():
        if set(per) != set(groups):
            continue
        diffs = {g: per[g]["vs_uniform"]["all"]["median"] for g in groups}
        out.append({"label": label, "flags": per[groups[0]]["flags"], "median_diff": diffs,
                    "mean": statistics.fmean(diffs.values()),
                    "verdicts": {g: per[g]["vs_uniform"]["all"]["verdict"] for g in groups},
                    "seeds": min(len(p["seeds"]) for p in per.values())})
    return sorted(out, key=lambda r: r["mean"])


def build(runs_dir: str, data: Dict[str, str], archive: Optional[str] = None) -> dict:
    """Everything rw_eval.json holds, from the runs directory and, for runs not there, the
    committed archive of finished runs (``rw_eval_runs.archive_finished``)."""
    paths = {}
    for folder in (archive, runs_dir):
        if folder is None:
            continue
        for n in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
            paths[n] = os.path.join(folder, n)
    runs = [r for r in (load_run(paths[n]) for n in sorted(paths)) if r]
    corpus_shares = {c: rep.blend_shares(os.path.join(p, "manifest.json")) for c, p in data.items()}
    groups = {g.name: g for g in rw_eval_plan.GROUPS}
    shares = {g: corpus_shares.get(groups[g].corpus if g in groups else g, {})
              for g in {r["group"] for r in runs}}
    variants = rep.summarise(runs, shares, baseline=lambda g: f"{g}-uniform")
    flags = {}
    for v, s in variants.items():
        mine = [r for r in runs if r["variant"] == v and r["last_eval"] == r["iters"]]
        flags[v] = mine[0]["variant_flags"]
        s.update(label=mine[0]["label"], flags=flags[v],
                 reweight_r=_median_of_medians(mine, rep.R_KEY),
                 weight_ess=_median_of_medians(mine, ESS_KEY))
    noise = {v: {d: {"mass": s["weights"]["mass"].get(d),
                     "blend_share": s["weights"]["share"].get(d)} for d in NOISE}
             for v, s in variants.items() if any(d in s["weights"]["mass"] for d in NOISE)}
    present = {r["name"] for r in runs}
    plan = rw_eval_plan.plan()
    return {
        "settings": {"groups": {g.name: {"corpus": g.corpus, "config": os.path.relpath(
                         g.config, rw_eval_plan.REPO), "iterations": g.iters, "common_flags": list(
                         g.flags), "seeds": list(g.seeds), "variants": {
                         k: (list(f) if not isinstance(f, str) else f) for k, f in
                         g.variants.items()}} for g in rw_eval_plan.GROUPS},
                     "plan": [r.name for r in plan], "runs_dir": runs_dir},
        "definitions": DEFINITIONS,
        "blend_shares": corpus_shares,
        "runs_used": [r["name"] for r in runs if r["last_eval"] == r["iters"]],
        "unfinished": [r["name"] for r in runs if r["last_eval"] != r["iters"]],
        "missing": [r.name for r in plan if r.name not in present],
        "runs": {r["name"]: {"variant": r["variant"], "seed": r["seed"], "flags": r["flags"],
                             "last_eval": r["last_eval"],
                             "eval": {d: [[it, round(x, 5)] for it, x in c]
                                      for d, c in r["eval"].items()}} for r in runs},
        "variants": variants,
        "noise": noise,
        "scale": scale_point(variants, flags),
        "units": units(variants),
        "ranking": ranking(variants),
    }


def _fmt(x: Optional[float], spec: str = "+.4f") -> str:
    return "-" if x is None else format(x, spec)


def print_extra(report: dict) -> None:
    """The tables gpt_sweep_report does not print: r/ESS, noise shares, the scale point."""
    print("\nchosen temperature and ESS after burn-in (median over seeds)")
    for v, s in report["variants"].items():
        if s["reweight_r"] is not None and s["label"] != "uniform":  # its r is never used
            print(f"  {v:28s} r {_fmt(s['reweight_r'], '.3f'):>7s}  "
                  f"ESS {_fmt(s['weight_ess'], '.3f'):>6s}  {' '.join(s['flags'])}")
    print("\nshare of the total weight: duplicated / random documents (blend share in brackets)")
    for v, n in report["noise"].items():
        print(f"  {v:28s} " + "  ".join(
            f"{d} {_fmt(n[d]['mass'], '.3f')} [{_fmt(n[d]['blend_share'], '.3f')}]" for d in NOISE))
    print("\ncandidates for the best flags: mean over clean and noisy of the median valid/all "
          "difference to uniform (lowest first)")
    for r in report["ranking"]:
        per = ", ".join(f"{g} {d:+.4f} {r['verdicts'][g]}" for g, d in r["median_diff"].items())
        print(f"  {r['label']:16s} {r['mean']:+.4f}  ({per}; {r['seeds']} seeds)  "
              + " ".join(r["flags"]))
    print("\nscale point: valid/all difference to uniform, median (per seed)")
    for v, e in report["scale"].items():
        t = e.get("tiny") or {}
        print(f"  {v:28s} small {_fmt(e['small']['median'])} "
              f"({' '.join(_fmt(x) for x in e['small']['per_seed'].values())})   "
              f"tiny [{e['tiny_variant']}] {_fmt(t.get('median'))} "
              f"({' '.join(_fmt(x) for x in t.get('per_seed', {}).values())})")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs-dir", default="runs/rw_eval")
    p.add_argument("--out", default="results")
    p.add_argument("--clean-data", default="data/small")
    p.add_argument("--noisy-data", default="data/small_noisy")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--quiet", action="store_true", help="write the files, print only their names")
    a = p.parse_args(argv)
    # The committed archive of finished runs lives next to the report (rw_eval_runs.ARCHIVE).
    report = build(a.runs_dir, {"clean": a.clean_data, "noisy": a.noisy_data},
                   archive=os.path.join(a.out, ARCHIVE))
    if not report["variants"]:
        print(f"rw_eval_report: error: no finished runs in {a.runs_dir}", file=sys.stderr)
        return 1
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "rw_eval.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1)
    if not a.quiet:
        rep.print_summary(report, width=28, last="each group's last", source="rw_eval.json")
        print_extra(report)
    with open(os.path.join(a.out, "rw_eval.md"), "w", encoding="utf-8") as f:
        f.write(rw_eval_table.markdown(report))
    written = ["rw_eval.json", "rw_eval.md"]
    if not a.no_plots:
        from benchmarks.quality import rw_eval_plots  # matplotlib only when plotting
        written += rw_eval_plots.plot_all(report, a.out)
    print(f"wrote {', '.join(os.path.join(a.out, w) for w in written)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
