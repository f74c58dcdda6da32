"""Where redundant and unlearnable samples sit in a micro-batch's loss distribution.

    python -m benchmarks.quality.loss_distribution --run runs/lossdist-uniform-s1234 \
        --data data/small_noisy [--out results/loss_distribution.json] [--png ...]

Reads ``sample_weights.jsonl`` of a run trained with ``--log-sample-weights`` on the corpus of
``benchmarks.quality.noisy_corpus``. The log holds the first data-parallel replica's rows only, so train
the run with ONE data-parallel rank and ``--micro-batch-size`` equal to the global micro-batch
you want to study (16 = the sweep's 2 ranks x 8): then every logged micro-batch is exactly the N
losses the weights are computed from.

Per logged micro-batch, over its valid losses: quartiles q25, q50, q75 (linear interpolation)
and IQR = q75 - q25. Per row: ``z = (loss - q50) / IQR``, the distance from the batch's median
in IQRs (for a normal distribution IQR = 1.35 sigma). Rows are grouped as ``random`` (random
token ids), ``duplicated`` (documents repeated 250 times) and ``clean`` (the 7 real domains);
statistics per group and per window of iterations. ``--strategies`` also replays each logged
micro-batch through ``compute_sample_weights`` (the losses of this run, weights of another
strategy): each group's mean weight, its share of the total weight, and how often an injected
random row's weight is above its batch's median weight; ``sensitivity`` does the same for the
``robust`` strategy's constants around the chosen ones, and ``logged`` summarises the weights the
run itself applied.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import math
import os
import statistics
import sys
from collections import defaultdict
from typing import Dict, List, Sequence, Tuple

import torch

from megatron_rw import compute_sample_weights
from megatron_rw.data.domains import domain_name
from megatron_rw.robust import FALL, LOW_RAMP, PLATEAU_END, robust_positions, robust_score

GROUPS = ("clean", "duplicated", "random")
Z_QUANTILES = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95)
THRESHOLDS = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0)
# robust's (LOW_RAMP, PLATEAU_END, FALL) tried around the chosen (2, 1, 1), at r = 0.4
GRID = {"low_ramp": (1.0, 1.5, 2.0, 3.0), "plateau_end": (0.5, 1.0, 1.5), "fall": (0.5, 1.0, 2.0)}


def train_domain_names(manifest: str) -> List[str]:
    """Domain names in ``dataset_id`` order (the training blend's order)."""
    with open(manifest, encoding="utf-8") as f:
        words = json.load(f)["data_path"]["train"].split()
    return [domain_name(p) for p in words[1::2]]


def group_of(domain: str) -> str:
    return domain if domain in ("duplicated", "random") else "clean"


def load_batches(run: str, names: Sequence[str]) -> List[dict]:
    """One entry per logged micro-batch: iteration, valid losses [n] and their groups."""
    out = []
    with open(os.path.join(run, "sample_weights.jsonl"), encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            row = json.loads(line)
            keep = [i for i, (ok, l) in enumerate(zip(row["valid"], row["loss"]))
                    if ok and math.isfinite(l)]
            out.append({"iteration": row["iteration"], "r": row["r"],
                        "loss": torch.tensor([row["loss"][i] for i in keep], dtype=torch.float64),
                        "weight": [row["weight"][i] for i in keep],
                        "group": [group_of(names[row["domain"][i]]) for i in keep]})
    return out


def batch_positions(loss: torch.Tensor) -> Tuple[torch.Tensor, dict]:
    """``z = (loss - q50) / IQR`` per row, and the batch's quartiles."""
    q25, q50, q75 = torch.quantile(loss, torch.tensor([0.25, 0.5, 0.75], dtype=loss.dtype))
    iqr = (q75 - q25).clamp(min=1e-6)
    return (loss - q50) / iqr, {"q25": q25.item(), "q50": q50.item(), "q75": q75.item(),
                                "iqr": iqr.item()}


def quantiles(values: List[float]) -> dict:
    if not values:
        return {"n": 0}
    t = torch.tensor(values, dtype=torch.float64)
    qs = torch.quantile(t, torch.tensor(Z_QUANTILES, dtype=torch.float64)).tolist()
    out = {"n": len(values), "min": min(values), "max": max(values)}
    out.update({f"q{round(100 * q):02d}": v for q, v in zip(Z_QUANTILES, qs)})
    return out


def window_summary(batches: List[dict]) -> dict:
    """Per group: raw loss and z quantiles, share of rows beyond each z threshold."""
    z = defaultdict(list)
    loss = defaultdict(list)
    iqr, q50 = [], []
    for b in batches:
        zb, stats = batch_positions(b["loss"])
        iqr.append(stats["iqr"])
        q50.append(stats["q50"])
        for g, zi, li in zip(b["group"], zb.tolist(), b["loss"].tolist()):
            z[g].append(zi)
            loss[g].append(li)
    out = {"micro_batches": len(batches),
           "batch_iqr_median": statistics.median(iqr) if iqr else None,
           "batch_median_loss_median": statistics.median(q50) if q50 else None}
    for g in GROUPS:
        n = len(z[g])
        out[g] = {"loss": quantiles(loss[g]), "z": quantiles(z[g]),
                  "share_z_above": {f"{h:g}": sum(v > h for v in z[g]) / n if n else None
                                    for h in THRESHOLDS},
                  "share_z_below": {f"-{h:g}": sum(v < -h for v in z[g]) / n if n else None
                                    for h in THRESHOLDS}}
    return out


def group_weights(batches: List[dict], weigh) -> dict:
    """Per group: mean weight and share of the total weight, with ``weigh(batch) -> [n]``."""
    w_sum, n = defaultdict(float), defaultdict(int)
    above_median, random_rows = 0, 0
    for b in batches:
        w = torch.as_tensor(weigh(b), dtype=torch.float64)
        med = w.median().item()
        for g, wi in zip(b["group"], w.tolist()):
            w_sum[g] += wi
            n[g] += 1
            if g == "random":
                random_rows += 1
                above_median += wi > med
    total_w, total_n = sum(w_sum.values()), sum(n.values())
    return {g: {"mean_weight": w_sum[g] / n[g] if n[g] else None,
                "share_of_weight": w_sum[g] / total_w if total_w else None,
                "share_of_rows": n[g] / total_n if total_n else None} for g in GROUPS} | {
        "random_rows_above_batch_median_weight": above_median / random_rows if random_rows else None}


def replay(batches: List[dict], strategy: str, r: float) -> dict:
    """Weights ``strategy`` at ``r`` would give the logged losses, per group."""
    return group_weights(batches, lambda b: compute_sample_weights(b["loss"].float(), strategy, r))


def robust_variant(loss: torch.Tensor, r: float, **knots) -> torch.Tensor:
    """``robust``'s weights with other constants (mean 1; every logged row is valid)."""
    loss = loss.float()
    z = robust_positions(loss, torch.ones_like(loss, dtype=torch.bool), 1.0)
    return len(loss) * torch.softmax(robust_score(z, 1.0, **knots) / r, dim=0)


def sensitivity(batches: List[dict], r: float = 0.4) -> List[dict]:
    """Group mean weights for every combination of ``GRID``'s constants."""
    out = []
    for values in itertools.product(*GRID.values()):
        knots = dict(zip(GRID, values))
        rep = group_weights(batches, lambda b: robust_variant(b["loss"], r, **knots))
        out.append(knots | {g: rep[g]["mean_weight"] for g in GROUPS} | {
            "random_rows_above_batch_median_weight": rep["random_rows_above_batch_median_weight"]})
    return out


def run_metrics(run: str) -> dict:
    """From the run's ``metrics.jsonl``: each domain's mean of ``train/sample weight/<domain>``
    over the logged intervals after burn-in (finite r), and the last validation losses."""
    weights, last_eval = defaultdict(list), {}
    path = os.path.join(run, "metrics.jsonl")
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line) if line.strip() else {}
            if math.isfinite(row.get("train/reweight r", math.inf)):
                for k, v in row.items():
                    if k.startswith("train/sample weight/"):
                        weights[k[len("train/sample weight/"):]].append(v)
            if any(k.startswith("valid/") for k in row):
                last_eval = {"iteration": row["iteration"]} | {
                    k[len("valid/"):-len("/lm loss")]: v for k, v in row.items()
                    if k.startswith("valid/") and k.endswith("/lm loss")}
    return {"mean_weight_per_domain": {d: statistics.mean(v) for d, v in sorted(weights.items())},
            "last_validation_loss": last_eval}


def parse_windows(text: str) -> List[Tuple[int, int]]:
    return [tuple(int(v) for v in w.split(":")) for w in text.split(",")]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="run directory with sample_weights.jsonl")
    p.add_argument("--data", default="data/small_noisy", help="the run's corpus (manifest.json)")
    p.add_argument("--windows", default="30:70,130:170,260:301",
                   help="iteration windows [start:end) to summarise, comma separated")
    p.add_argument("--burn-in", type=int, default=40,
                   help="replayed weights use the iterations after this one")
    p.add_argument("--strategies", nargs="*",
                   default=["linupper:0.4", "robust:0.4", "linupper:1.0", "robust:1.0"],
                   help="strategy:r pairs to replay on the logged losses")
    p.add_argument("--out", default="results/loss_distribution.json")
    p.add_argument("--png", default=None, help="also draw the z distributions here")
    a = p.parse_args(argv)

    names = train_domain_names(os.path.join(a.data, "manifest.json"))
    batches = load_batches(a.run, names)
    if not batches:
        print(f"loss_distribution: no rows in {a.run}/sample_weights.jsonl", file=sys.stderr)
        return 1
    windows = {f"{s}-{e - 1}": window_summary([b for b in batches if s <= b["iteration"] < e])
               for s, e in parse_windows(a.windows)}
    after = [b for b in batches if b["iteration"] > a.burn_in]
    windows[f"after burn-in ({a.burn_in + 1}-)"] = window_summary(after)
    replays = {}
    for spec in a.strategies:
        strategy, r = spec.split(":")
        replays[spec] = replay(after, strategy, float(r))
    # The weights the run applied (1 everywhere for a uniform run).
    logged = group_weights([b for b in after if math.isfinite(b["r"])], lambda b: b["weight"])
    report = {
        "command": "python -m benchmarks.quality.loss_distribution " + " ".join(sys.argv[1:] if argv is None
                                                                        else argv),
        "run": os.path.abspath(a.run),
        "rows_per_micro_batch": sorted({len(b["loss"]) for b in batches}),
        "definitions": {
            "z": "(loss - q50) / (q75 - q25) over the valid losses of the row's micro-batch",
            "share_z_above": "share of the group's rows with z > threshold",
            "replay": "compute_sample_weights on each logged micro-batch after burn-in; "
                      "mean_weight 1 = uniform; share_of_weight = the group's share of the "
                      "total weight (uniform: its share of the rows)",
            "sensitivity": "replay of robust at r = 0.4 with other (low_ramp, plateau_end, "
                           "fall)",
            "logged": "the weights the run itself applied, after burn-in, per group",
            "metrics": "from metrics.jsonl: mean over logged intervals after burn-in of "
                       "train/sample weight/<domain>; the last evaluation's losses"},
        "windows": windows,
        "replay": replays,
        "sensitivity": sensitivity(after),
        "logged": logged,
        "metrics": run_metrics(a.run),
    }
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1)
    print_summary(report)
    if a.png:
        plot(batches, parse_windows(a.windows), a.png)
    print(f"wrote {a.out}" + (f" and {a.png}" if a.png else ""))
    return 0


def print_summary(report: dict) -> None:
    print(f"rows per micro-batch: {report['rows_per_micro_batch']}")
    for name, w in report["windows"].items():
        if not w["micro_batches"]:
            print(f"\niterations {name}: no logged micro-batches")
            continue
        print(f"\niterations {name}: {w['micro_batches']} micro-batches, median batch IQR "
              f"{w['batch_iqr_median']:.3f}, median batch median loss "
              f"{w['batch_median_loss_median']:.3f}")
        for g in GROUPS:
            z, loss = w[g]["z"], w[g]["loss"]
            if not z["n"]:
                continue
            print(f"  {g:10s} n={z['n']:4d} loss q50 {loss['q50']:.2f} | z q05 {z['q05']:+.2f} "
                  f"q25 {z['q25']:+.2f} q50 {z['q50']:+.2f} q75 {z['q75']:+.2f} "
                  f"q95 {z['q95']:+.2f} max {z['max']:+.2f} | z>2 {w[g]['share_z_above']['2']:.3f}"
                  f" z>3 {w[g]['share_z_above']['3']:.3f} z<-1 {w[g]['share_z_below']['-1']:.3f}")
    for spec, rep in report["replay"].items():
        cells = "  ".join(f"{g} {rep[g]['mean_weight']:.3f}/{rep[g]['share_of_weight']:.3f}"
                          for g in GROUPS)
        print(f"replay {spec:14s} mean weight/share: {cells}  random above batch median "
              f"{rep['random_rows_above_batch_median_weight']:.2f}")
    rep = report["logged"]
    cells = "  ".join(f"{g} {rep[g]['mean_weight']:.3f}/{rep[g]['share_of_weight']:.3f}"
                      for g in GROUPS if rep[g]["mean_weight"] is not None)
    print(f"logged (the run's own weights) mean weight/share: {cells}")
    print("sensitivity (robust r 0.4; low_ramp plateau_end fall: mean weight clean/dup/random):")
    for row in report["sensitivity"]:
        print(f"  {row['low_ramp']:g} {row['plateau_end']:g} {row['fall']:g}: {row['clean']:.3f} "
              f"{row['duplicated']:.3f} {row['random']:.3f}")


def plot(batches: List[dict], windows: List[Tuple[int, int]], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(windows), figsize=(4.2 * len(windows), 3.6), sharey=True)
    colours = {"clean": "tab:blue", "duplicated": "tab:red", "random": "tab:purple"}
    for ax, (s, e) in zip(axes, windows):
        per = defaultdict(list)
        for b in batches:
            if s <= b["iteration"] < e:
                zb, _ = batch_positions(b["loss"])
                for g, zi in zip(b["group"], zb.tolist()):
                    per[g].append(zi)
        for g in GROUPS:
            if per[g]:
                ax.hist(per[g], bins=40, range=(-12, 12), density=True, alpha=0.5,
                        color=colours[g], label=f"{g} ({len(per[g])})")
        # robust's knots: score 0 below -LOW_RAMP, top on [0, PLATEAU_END], 0 beyond + FALL
        for knot in (-LOW_RAMP, 0.0, PLATEAU_END, PLATEAU_END + FALL):
            ax.axvline(knot, color="black", lw=0.6, ls="--")
        ax.set_title(f"iterations {s}-{e - 1} (dashed: robust's knots)")
        ax.set_xlabel("(loss - batch median) / batch IQR")
        ax.legend(fontsize=7)
    axes[0].set_ylabel("density")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
