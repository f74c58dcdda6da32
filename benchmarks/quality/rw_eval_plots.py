"""The PNGs of ``benchmarks.quality.rw_eval_report``, drawn from its JSON report alone.

- ``rw_eval_diffs.png``: per group, validation loss minus uniform's (same seed) per domain
  (``gpt_sweep_plots.plot_domains``, the sweep's figure, for every group);
- ``rw_eval_noise.png``: share of the total weight that duplicated and random documents get per
  variant, against their share of the rows (what uniform gives them);
- ``rw_eval_scale.png``: the scale point: each variant's difference to uniform at tiny_cpu and
  small_cpu, one line per seed;
- ``rw_eval_units.png``: document units minus rows (the same run otherwise, same seed) per
  validation loss, one marker per seed and the median.
"""

from __future__ import annotations

import os
from typing import List

from benchmarks.quality import gpt_sweep_plots, rw_eval_plan
from benchmarks.quality.gpt_sweep_plots import _plt, label

NOISE = ("duplicated", "random")


def _empty(path: str, text: str) -> None:
    """A placeholder, so the set of output files stays fixed while runs are missing."""
    plt = _plt()
    fig, a = plt.subplots(figsize=(6, 2))
    a.text(0.5, 0.5, text, ha="center")
    a.axis("off")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_noise(report: dict, path: str) -> None:
    """Weight mass of the duplicated and random domains per noisy-group variant."""
    noise = report["noise"]
    if not noise:
        return _empty(path, "no finished noisy-corpus run yet")
    plt = _plt()
    fig, axes = plt.subplots(1, len(NOISE), figsize=(7 * len(NOISE), 4.8), squeeze=False)
    for a, d in zip(axes[0], NOISE):
        names = list(noise)
        mass = [noise[v][d]["mass"] or 0.0 for v in names]
        share = next((noise[v][d]["blend_share"] for v in names if noise[v][d]["blend_share"]),
                     None)
        a.bar(range(len(names)), mass, color=["black" if v.endswith("-uniform") else "tab:blue"
                                              for v in names])
        if share:
            a.axhline(share, color="grey", ls="--", lw=1, label=f"share of the rows ({share:.3f})")
            a.legend(fontsize=8)
        a.set_xticks(range(len(names)), names, rotation=35, ha="right", fontsize=8)
        a.set(title=f"{d} documents: share of the total weight after burn-in\n(median "
                    "over seeds; above the line = more than uniform)",
              ylabel="weight mass")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_scale(report: dict, path: str) -> None:
    """Difference to uniform at tiny_cpu vs small_cpu, per variant and seed."""
    scale = {v: e for v, e in report["scale"].items() if e.get("tiny")}
    if not scale:
        return _empty(path, "no finished scale-point comparison yet")
    plt = _plt()
    fig, axes = plt.subplots(1, len(scale), figsize=(5 * len(scale), 4.5), squeeze=False)
    for a, (v, e) in zip(axes[0], scale.items()):
        for seed, small in e["small"]["per_seed"].items():
            tiny = e["tiny"]["per_seed"].get(seed)
            if tiny is not None:
                a.plot([0, 1], [tiny, small], marker="o", label=f"seed {seed}")
        a.axhline(0, color="black", lw=0.8)
        a.set_xticks([0, 1], ["tiny_cpu (1.6 M)", "small_cpu (6.3 M)"])
        a.set(title=f"{label(report['variants'][v])}: valid/all - uniform\n(tiny: "
                    f"{e['tiny_variant']})", ylabel="loss - uniform (same seed)")
        a.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_units(report: dict, path: str) -> None:
    """Documents minus rows per validation loss: each seed's paired difference and the median."""
    units = report.get("units")
    if not units:
        return _empty(path, "no seed with both the document and the row run yet")
    plt = _plt()
    names = list(units)
    fig, a = plt.subplots(figsize=(1.1 * len(names) + 2, 4.5))
    seeds = sorted({sd for e in units.values() for sd in e["per_seed"]})
    for j, sd in enumerate(seeds):
        xs = [i + 0.12 * (j - (len(seeds) - 1) / 2) for i, k in enumerate(names)
              if sd in units[k]["per_seed"]]
        a.plot(xs, [units[k]["per_seed"][sd] for k in names if sd in units[k]["per_seed"]],
               ls="none", marker="o", label=f"seed {sd}")
    a.hlines([units[k]["median"] for k in names], [i - 0.3 for i in range(len(names))],
             [i + 0.3 for i in range(len(names))], color="black", label="median")
    a.axhline(0, color="grey", lw=0.8)
    a.set_xticks(range(len(names)), names, rotation=35, ha="right", fontsize=8)
    a.set(title="document units minus rows (noisy, seq 1024, linupper r 1.0, same seed)\n"
                "below 0 = documents as units ended lower", ylabel="validation loss difference")
    a.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_all(report: dict, out_dir: str) -> List[str]:
    """Write the four PNGs; returns their file names."""
    groups = [g.name for g in rw_eval_plan.GROUPS]
    names = {"rw_eval_diffs.png": lambda r, p: gpt_sweep_plots.plot_domains(r, p, groups),
             "rw_eval_noise.png": plot_noise, "rw_eval_scale.png": plot_scale,
             "rw_eval_units.png": plot_units}
    for name, fn in names.items():
        fn(report, os.path.join(out_dir, name))
    return list(names)
