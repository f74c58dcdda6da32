"""The PNGs of ``benchmarks.quality.gpt_sweep_report``, drawn from its JSON report alone.

Kept apart so the report's numbers (and its test) never need matplotlib, and so the figures can be
redrawn from ``results/gpt_sweep.json`` without the run directories.
"""

from __future__ import annotations

import os
from typing import List

EXTRA = ("duplicated", "random")  # benchmarks.quality.noisy_corpus's training-only domains
# red and purple are kept for the extra domains, so the real-text ones never share their colour
DOMAIN_COLOURS = ["tab:blue", "tab:orange", "tab:green", "tab:brown", "tab:pink", "tab:gray",
                  "tab:olive", "tab:cyan"]
EXTRA_COLOURS = {"duplicated": "tab:red", "random": "tab:purple"}
ZOOM_FROM = 250  # the zoomed panels show the last evaluations, where the variants separate


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _colours(variants: List[str]) -> dict:
    """One colour per variant after the group (strategy+r here), shared by every group; uniform
    (``uniform-r1`` here, ``uniform`` in benchmarks.quality.rw_eval) always black."""
    keys = sorted({v.split("-", 1)[1] for v in variants} - {"uniform-r1", "uniform"})
    palette = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown",
               "tab:pink", "tab:olive", "tab:cyan"]
    out = {"uniform-r1": "black", "uniform": "black"}
    out.update({k: palette[i % len(palette)] for i, k in enumerate(keys)})
    return out


def _band(ax, curve: dict, colour: str, label: str, start: int = 0) -> None:
    """Median line with the min-max band across seeds."""
    pts = [(i, m, lo, hi) for i, m, lo, hi in zip(curve["iterations"], curve["median"],
                                                   curve["min"], curve["max"]) if i >= start]
    if not pts:
        return
    its, med, lo, hi = zip(*pts)
    ax.plot(its, med, color=colour, marker="o", ms=3, lw=1.5, label=label)
    ax.fill_between(its, lo, hi, color=colour, alpha=0.15, lw=0)


def plot_val(report: dict, path: str) -> None:
    """valid/all vs iteration: clean group in full and zoomed, noisy group zoomed."""
    plt = _plt()
    variants = report["variants"]
    colours = _colours(list(variants))
    fig, ax = plt.subplots(1, 3, figsize=(17, 5.2))
    panels = ((ax[0], "clean", 0, "clean corpus: valid/all lm loss"),
              (ax[1], "clean", ZOOM_FROM, f"clean corpus, iterations >= {ZOOM_FROM}"),
              (ax[2], "noisy", ZOOM_FROM, f"noisy corpus (clean validation), >= {ZOOM_FROM}"))
    for a, group, start, title in panels:
        if not any(s["group"] == group for s in variants.values()):
            a.text(0.5, 0.5, f"no finished {group} run yet", ha="center", transform=a.transAxes)
            a.set(xticks=[], yticks=[])
            a.set_title(title)
            continue
        for v, s in variants.items():
            if s["group"] == group:
                n = len(s["seeds"])
                label = f"{s['strategy']} r={s['r']:g} ({n} seed{'s' if n > 1 else ''})"
                _band(a, s["curves"]["all"], colours[v.split("-", 1)[1]], label, start)
        target = next((s["steps_to_target"]["target"] for s in variants.values()
                       if s["group"] == group and "steps_to_target" in s), None)
        if target is not None:
            a.axhline(target, color="grey", lw=0.8, ls=":", label="uniform's final (median)")
        a.set(title=title, xlabel="iteration", ylabel="lm loss")
        a.legend(fontsize=8)
    fig.suptitle("validation loss: median over seeds, band = min-max across seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def label(s: dict) -> str:
    """A variant's legend entry: its own ``label`` (benchmarks.quality.rw_eval), else strategy and r."""
    return s.get("label") or f"{s['strategy']} r={s['r']:g}"


def plot_domains(report: dict, path: str, groups=("clean", "noisy")) -> None:
    """Final per-domain loss difference to uniform, error bars = range over seeds; the grey box
    is +- uniform's own seed spread (a difference inside it is within seed noise)."""
    plt = _plt()
    variants = report["variants"]
    colours = _colours(list(variants))
    groups = [g for g in groups if any("vs_uniform" in s and s["group"] == g
                                       for s in variants.values())]
    if not groups:  # nothing paired yet: still write the file so the outputs stay a fixed set
        fig, a = plt.subplots(figsize=(6, 2))
        a.text(0.5, 0.5, "no variant with a finished uniform baseline yet", ha="center")
        a.axis("off")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return
    fig, axes = plt.subplots(len(groups), 1, figsize=(13, 4.6 * len(groups)), squeeze=False)
    for a, group in zip(axes[:, 0], groups):
        rows = {v: s for v, s in variants.items() if s["group"] == group and "vs_uniform" in s}
        keys = list(next(iter(rows.values()))["vs_uniform"])
        width = 0.8 / len(rows)
        for k, key in enumerate(keys):
            noise = next(iter(rows.values()))["vs_uniform"][key]["uniform_spread"]
            a.add_patch(plt.Rectangle((k - 0.42, -noise), 0.84, 2 * noise, color="grey",
                                      alpha=0.2, lw=0))
        for j, (v, s) in enumerate(rows.items()):
            cells = [s["vs_uniform"][key] for key in keys]
            xs = [k - 0.4 + width * (j + 0.5) for k in range(len(keys))]
            med = [c.get("median", 0.0) for c in cells]
            err = [[m - c.get("min", m) for m, c in zip(med, cells)],
                   [c.get("max", m) - m for m, c in zip(med, cells)]]
            a.bar(xs, med, width, yerr=err, capsize=2, color=colours[v.split("-", 1)[1]],
                  label=label(s))
            for x, m, c in zip(xs, med, cells):  # mark the differences beyond seed noise
                if c["verdict"] in ("lower", "higher"):  # past the whisker, where it is readable
                    a.annotate("*", (x, c["max"] if m > 0 else c["min"]), ha="center",
                               va="bottom" if m > 0 else "top", fontsize=12)
        a.axhline(0, color="black", lw=0.8)
        a.set_xticks(range(len(keys)), keys, rotation=20)
        a.set(ylabel="loss - uniform (same seed)",
              title=f"{group} corpus: validation loss - uniform at the last iteration\n(bar = "
                    "median, whiskers = min-max over seeds, grey = +- uniform's seed spread, "
                    "* = beyond seed noise)")
        a.legend(fontsize=8, ncol=4)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_weights(report: dict, path: str) -> None:
    """Mean weight per domain over training (linupper r=0.4) and the noisy group's weight mass."""
    plt = _plt()
    variants = report["variants"]
    burn_in = report["settings"]["burn_in_iterations"]
    fig, ax = plt.subplots(1, 3, figsize=(17, 5.2))
    for a, group in zip(ax[:2], ("clean", "noisy")):
        s = variants.get(f"{group}-linupper-r0.4")
        if s is None:
            a.text(0.5, 0.5, f"no finished {group}-linupper-r0.4 run yet", ha="center",
                   transform=a.transAxes)
            a.set(xticks=[], yticks=[])
            continue
        real = [d for d in s["weights"]["curves"] if d not in EXTRA]
        for d, c in s["weights"]["curves"].items():
            extra = d in EXTRA
            colour = EXTRA_COLOURS.get(d) or DOMAIN_COLOURS[real.index(d) % len(DOMAIN_COLOURS)]
            a.plot(c["iterations"], c["median"], lw=2.5 if extra else 1.0, color=colour,
                   alpha=1.0 if extra or group == "clean" else 0.6, label=d)
        a.axhline(1.0, color="black", lw=0.8, ls=":")
        a.axvline(burn_in, color="grey", lw=0.8, ls="--")
        a.set(title=f"{group} corpus, linupper r=0.4: mean weight per domain\n(median of "
                    f"{len(s['seeds'])} seeds, after burn-in)",
              xlabel="iteration (dashed: burn-in ends)",
              ylabel="mean sample weight (1 = uniform)")
        a.legend(fontsize=8, ncol=2)
    c = ax[2]
    noisy = {v: s for v, s in variants.items() if s["group"] == "noisy"}
    doms = sorted({d for s in noisy.values() for d in s["weights"]["mass"]},
                  key=lambda d: (d in EXTRA, d))
    width = 0.8 / max(len(noisy), 1)
    for j, (v, s) in enumerate(noisy.items()):
        mass = [s["weights"]["mass"].get(d) or 0.0 for d in doms]
        c.bar([k - 0.4 + width * (j + 0.5) for k in range(len(doms))], mass, width,
              label=f"{s['strategy']} r={s['r']:g}", color="black" if s["strategy"] == "uniform"
              else "tab:blue", alpha=0.7)
    c.set_xticks(range(len(doms)), doms, rotation=30)
    if not noisy:
        c.text(0.5, 0.5, "no finished noisy run yet", ha="center", transform=c.transAxes)
        c.set(xticks=[], yticks=[])
    c.set(title="noisy corpus: share of the total weight per domain\n(after burn-in; uniform = "
                "blend share)",
          ylabel="mean weight x blend share")
    if noisy:
        c.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_all(report: dict, out_dir: str) -> List[str]:
    """Write the three PNGs; returns their file names."""
    names = {"gpt_sweep_val.png": plot_val, "gpt_sweep_domains.png": plot_domains,
             "gpt_sweep_weights.png": plot_weights}
    for name, fn in names.items():
        fn(report, os.path.join(out_dir, name))
    return list(names)
