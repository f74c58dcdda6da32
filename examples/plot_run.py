"""Summarise a reweighted Megatron run: per-domain validation table, weights by domain, one PNG.

    python examples/plot_run.py runs/demo [--out runs/demo/run.png]

Reads what Megatron's training loop wrote to ``RUN_DIR/tensorboard`` (``--tensorboard-dir``;
megatron_rw.megatron_training.run_log): the loss report of every step (``lm loss``, ``weighted lm loss``, the
weights' ESS, maximum and minimum, each domain's ``sample share/<d>`` and ``sample weight
share/<d>``), each validation set's ``lm loss`` (one per domain with ``--multiple-validation-sets``)
and the run's arguments (the burn-in's length). A domain's mean weight over a stretch of steps
is its share of the weight over its share of the samples (weights average 1 per step). Needs
matplotlib and tensorboard.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Dict, Optional

from megatron_rw.megatron_training.run_log import Scalars, read_run, series, validation_sets

LM, WEIGHTED = "lm loss", "weighted lm loss"
ESS, W_MAX, W_MIN = "sample weight ess", "sample weight max", "sample weight min"
SAMPLE_SHARE, WEIGHT_SHARE = "sample share/", "sample weight share/"
WINDOW = 10  # steps per point of the per-domain mean-weight curves


def burn_in_end(args: Dict[str, str]) -> Optional[int]:
    """Last iteration of the burn-in (uniform weights), None where the run never reweighted:
    Megatron's iteration ``n`` is the step with ``curr_iteration = n - 1``, and steps with
    ``curr_iteration < --sample-reweight-warmup-iters`` are the burn-in."""
    if args.get("sample_reweight_strategy", "uniform") == "uniform":
        return None
    return int(args.get("sample_reweight_warmup_iters", "0"))


def domains(scalars: Scalars) -> list:
    return sorted({tag[len(WEIGHT_SHARE):] for row in scalars.values() for tag in row
                   if tag.startswith(WEIGHT_SHARE)})


def mean_weight(scalars: Scalars, domain: str, after: int, before: float = math.inf):
    """A domain's mean weight over the steps in ``(after, before]``: its weight share over its
    sample share, summed over those steps (None where it drew no sample)."""
    rows = [r for it, r in scalars.items() if after < it <= before]
    samples = sum(r.get(SAMPLE_SHARE + domain, 0.0) for r in rows)
    weight = sum(r.get(WEIGHT_SHARE + domain, 0.0) for r in rows)
    return weight / samples if samples > 0 else None


def summary(scalars: Scalars, args: Dict[str, str]) -> Dict[str, dict]:
    """Per validation set: its first and last ``lm loss``; per training domain also its share
    of the samples and its mean weight after burn-in."""
    start = burn_in_end(args)
    trained = domains(scalars)
    out = {}
    for name, tag in validation_sets(scalars).items():
        its, vals = series(scalars, tag)
        entry = {"first_eval": (its[0], vals[0]), "last_eval": (its[-1], vals[-1]),
                 "sample_share": None, "mean_weight": None}
        if name in trained:
            _, shares = series(scalars, SAMPLE_SHARE + name)
            entry["sample_share"] = sum(shares) / len(shares) if shares else None
            if start is not None:
                entry["mean_weight"] = mean_weight(scalars, name, start)
        out[name or "validation"] = entry
    if len(out) > 1:
        firsts = [e["first_eval"][1] for e in out.values()]
        lasts = [e["last_eval"][1] for e in out.values()]
        any_entry = next(iter(out.values()))
        out["mean of sets"] = {
            "first_eval": (any_entry["first_eval"][0], sum(firsts) / len(firsts)),
            "last_eval": (any_entry["last_eval"][0], sum(lasts) / len(lasts)),
            "sample_share": None, "mean_weight": None}
    return out


def print_summary(table: Dict[str, dict]) -> None:
    first = next(iter(table.values()))
    i0, i1 = first["first_eval"][0], first["last_eval"][0]
    print(f"{'domain':14s} {'val loss @' + str(i0):>14s} {'val loss @' + str(i1):>14s}   "
          f"{'sample share':>12s} {'mean weight after burn-in':>26s}")
    for d, e in table.items():
        share = "" if e["sample_share"] is None else f"{e['sample_share']:.3f}"
        weight = "" if e["mean_weight"] is None else f"{e['mean_weight']:.3f}"
        print(f"{d:14s} {e['first_eval'][1]:14.3f} {e['last_eval'][1]:14.3f}   "
              f"{share:>12s} {weight:>26s}")


def plot(scalars: Scalars, args: Dict[str, str], out: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(2, 2, figsize=(12, 8.5))
    start = burn_in_end(args)

    a = ax[0, 0]
    for key, label in ((LM, "lm loss (unweighted)"), (WEIGHTED, "weighted lm loss")):
        a.plot(*series(scalars, key), label=label, lw=0.9)
    a.set(title="training loss", xlabel="iteration", ylabel="loss")
    a.legend(fontsize=8)

    b = ax[0, 1]
    for name, tag in validation_sets(scalars).items():
        b.plot(*series(scalars, tag), marker="o", ms=3, label=name or "validation")
    b.set(title="validation loss per domain", xlabel="iteration", ylabel="lm loss")
    b.legend(fontsize=8, ncol=2)

    c = ax[1, 0]
    for key, label in ((ESS, "ESS / N"), (W_MAX, "largest weight"), (W_MIN, "smallest weight")):
        c.plot(*series(scalars, key), label=label, lw=0.9)
    c.axhline(1.0, color="k", lw=0.8, ls=":")
    c.set(title="weights of each global micro-batch", xlabel="iteration",
          ylabel="weight (mean 1) or ESS / N")
    c.legend(fontsize=8)

    e = ax[1, 1]
    last = max(scalars) if scalars else 0
    ends = list(range(WINDOW, last + WINDOW, WINDOW))
    for d in domains(scalars):
        points = [(end, mean_weight(scalars, d, end - WINDOW, end)) for end in ends]
        points = [(x, y) for x, y in points if y is not None]
        e.plot([p[0] for p in points], [p[1] for p in points], label=d)
    e.axhline(1.0, color="k", lw=0.8, ls=":")
    e.set(title=f"mean sample weight per domain (per {WINDOW} steps)", xlabel="iteration",
          ylabel="mean weight (1 = uniform)")
    if domains(scalars):
        e.legend(fontsize=8, ncol=2)

    for panel in ax.flat:
        if start is not None:
            panel.axvline(start, color="grey", lw=0.8, ls="--")
    fig.suptitle("megatron-rw: " + os.path.basename(os.path.dirname(os.path.abspath(out))) +
                 ("" if start is None else f" (dashed line: burn-in ends at iteration {start})"))
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", help="the run's output directory (holds tensorboard/)")
    p.add_argument("--out", help="PNG path (default: RUN_DIR/run.png)")
    args = p.parse_args(argv)
    try:
        scalars, run_args = read_run(os.path.join(args.run_dir, "tensorboard"))
    except FileNotFoundError as e:
        print(f"plot_run: error: {e}", file=sys.stderr)
        return 1
    table = summary(scalars, run_args)
    if table:
        print_summary(table)
    out = args.out or os.path.join(args.run_dir, "run.png")
    plot(scalars, run_args, out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
