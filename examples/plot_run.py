"""Summarise a pretrain_gpt run: per-domain validation table, weights by domain, one PNG.

    python examples/plot_run.py runs/demo [--out runs/demo/run.png]

Reads what the run wrote next to its checkpoints: ``metrics.jsonl`` (every logged scalar) and,
with ``--log-sample-weights``, ``sample_weights.jsonl`` (per-sample loss, normalised loss, weight
and domain on logged iterations). Needs matplotlib.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections import defaultdict
from typing import Dict, List

TRAIN_LOSS, WEIGHTED, R = "train/lm loss", "train/weighted lm loss", "train/reweight r"


def read_jsonl(path: str) -> List[dict]:
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def series(rows: List[dict], key: str):
    pts = [(r["iteration"], r[key]) for r in rows if key in r]
    return [p[0] for p in pts], [p[1] for p in pts]


def domains_of(rows: List[dict], prefix: str, suffix: str = "") -> List[str]:
    found = {k[len(prefix):len(k) - len(suffix)] for r in rows for k in r
             if k.startswith(prefix) and k.endswith(suffix)}
    return sorted(found - {"all"})


def burn_in_end(rows: List[dict]):
    """Last logged iteration still in burn-in (r = inf) before r turns finite: the burn-in's end
    to within one log interval (exact when the burn-in is a multiple of it). None if the run
    never reweighted; 0 if it had no burn-in."""
    logged = [(r["iteration"], r[R]) for r in rows if R in r]
    finite = [it for it, r in logged if math.isfinite(r)]
    if not finite:
        return None
    before = [it for it, r in logged if not math.isfinite(r) and it < min(finite)]
    return max(before) if before else 0


def summary(rows: List[dict]) -> Dict[str, dict]:
    """Per domain: first and last validation loss, and the mean weight and mean per-sample
    training loss over the logged intervals after burn-in."""
    start = burn_in_end(rows)
    out = {}
    for d in domains_of(rows, "valid/", "/lm loss") + ["all"]:
        its, vals = series(rows, f"valid/{d}/lm loss")
        if not vals:
            continue
        entry = {"first_eval": (its[0], vals[0]), "last_eval": (its[-1], vals[-1])}
        after = [r for r in rows if start is not None and r["iteration"] > start]
        _, w = series(after, f"train/sample weight/{d}")
        _, l = series(after, f"train/sample loss/{d}")
        entry["mean_weight"] = sum(w) / len(w) if w else None
        entry["mean_train_loss"] = sum(l) / len(l) if l else None
        out[d] = entry
    return out


def print_summary(table: Dict[str, dict]) -> None:
    first = next(iter(table.values()))
    i0, i1 = first["first_eval"][0], first["last_eval"][0]
    print(f"{'domain':14s} {'val loss @' + str(i0):>14s} {'val loss @' + str(i1):>14s}   "
          f"after burn-in: {'train loss':>10s} {'mean weight':>11s}")
    for d, e in table.items():
        l = "" if e["mean_train_loss"] is None else f"{e['mean_train_loss']:.3f}"
        w = "" if e["mean_weight"] is None else f"{e['mean_weight']:.3f}"
        print(f"{d:14s} {e['first_eval'][1]:14.3f} {e['last_eval'][1]:14.3f}   "
              f"{'':14s} {l:>10s} {w:>11s}")


def plot(rows: List[dict], samples: List[dict], out: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(2, 2, figsize=(12, 8.5))
    start = burn_in_end(rows)

    a = ax[0, 0]
    for key, label in ((TRAIN_LOSS, "lm loss (unweighted)"), (WEIGHTED, "weighted lm loss")):
        a.plot(*series(rows, key), label=label)
    a.set(title="training loss", xlabel="iteration", ylabel="loss")

    b = ax[0, 1]
    for d in domains_of(rows, "valid/", "/lm loss"):
        b.plot(*series(rows, f"valid/{d}/lm loss"), marker="o", ms=3, label=d)
    b.plot(*series(rows, "valid/all/lm loss"), "k--", lw=2, label="all (blend)")
    b.set(title="validation loss per domain", xlabel="iteration", ylabel="lm loss")
    b.legend(fontsize=8, ncol=2)

    c = ax[1, 0]
    names = domains_of(rows, "train/sample weight/")
    # a logged iteration past the burn-in's end reweighted (its r was finite)
    after = [s for s in samples if start is not None and math.isfinite(s["r"])]
    by_domain = defaultdict(lambda: ([], []))
    for s in after:
        for i, ok in enumerate(s["valid"]):
            if ok:
                d = names[s["domain"][i]] if "domain" in s and s["domain"][i] < len(names) else "?"
                by_domain[d][0].append(s["normalised"][i])
                by_domain[d][1].append(s["weight"][i])
    for d, (x, w) in sorted(by_domain.items()):
        c.scatter(x, w, s=8, alpha=0.6, label=d)
    c.axhline(1.0, color="k", lw=0.8, ls=":")
    c.set(title="sample weight vs normalised loss (after burn-in)",
          xlabel="normalised loss x in [-1, 1] (within its global micro-batch)", ylabel="weight")
    if by_domain:
        c.legend(fontsize=8, ncol=2, markerscale=2)

    e = ax[1, 1]
    for d in names:
        e.plot(*series(rows, f"train/sample weight/{d}"), label=d)
    e.axhline(1.0, color="k", lw=0.8, ls=":")
    e.set(title="mean sample weight per domain (training)", xlabel="iteration",
          ylabel="mean weight (1 = uniform)")
    if names:
        e.legend(fontsize=8, ncol=2)

    for panel in (ax[0, 0], ax[0, 1], ax[1, 1]):
        if start is not None:
            panel.axvline(start, color="grey", lw=0.8, ls="--")
    ax[0, 0].legend(fontsize=8)
    fig.suptitle("megatron-rw: " + os.path.basename(os.path.dirname(os.path.abspath(out))) +
                 ("" if start is None else f" (dashed line: burn-in ends at iteration {start})"))
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", help="the run's --save directory (holds metrics.jsonl)")
    p.add_argument("--out", help="PNG path (default: RUN_DIR/run.png)")
    args = p.parse_args(argv)
    rows = read_jsonl(os.path.join(args.run_dir, "metrics.jsonl"))
    if not rows:
        print(f"plot_run: error: no metrics in {args.run_dir}/metrics.jsonl", file=sys.stderr)
        return 1
    samples = read_jsonl(os.path.join(args.run_dir, "sample_weights.jsonl"))
    table = summary(rows)
    if table:
        print_summary(table)
    out = args.out or os.path.join(args.run_dir, "run.png")
    plot(rows, samples, out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
