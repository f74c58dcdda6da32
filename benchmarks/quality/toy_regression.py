"""Toy linear regression: does loss-based reweighting speed up minibatch SGD? (the paper's Fig. 7 setting)

    .venv/bin/python -m benchmarks.quality.toy_regression [--seeds 5] [--out results/]

The paper reports that on a small linear regression with heterogeneous samples, minibatch SGD whose
per-sample losses are reweighted by LinUpper converges fastest and Quadratic beats uniform. It does
not publish its data, so this is our own setup; data and training were fixed before any run.

Data, per seed (d = 20): a true weight vector ``w* ~ N(0, I/d)`` and a training set of 2000 samples
made of groups ``x ~ N(0, s^2 I)``, ``y = x.w* + N(0, noise^2)``:

- ``redundant`` (s = 0.1, noise 0): low-variance inputs. Their losses are small and their gradients
  carry little information per sample; this is the "redundant / easy" data the paper down-weights.
- ``informative`` (s = 1, noise 0.1): full-variance inputs with little label noise.
- ``noisy`` (s = 1, noise 1): label noise as large as the signal (Var x.w* = 1); high loss forever.

Two settings: ``clean`` = 80 % redundant + 20 % informative; ``noisy`` = 70 % redundant + 20 %
informative + 10 % noisy. Test loss: ``0.5 * mean((x.w - x.w*)^2)`` on 2000 held-out samples whose
inputs come from the same group mixture and whose labels have no noise.

Training: initial weights ``w0 ~ N(0, I/d)``; minibatch SGD, batch 16 without replacement (reshuffled
every epoch), lr 0.05, 1000 steps, no burn-in. Each step takes the minibatch's losses
``l_i = 0.5 (x_i.w - y_i)^2``, weights ``w_i = compute_sample_weights(l, strategy, r)`` (mean 1; the
minibatch is the paper's "global micro-batch") and descends ``mean_i(w_i l_i)``. The seed sets ``w*``,
``w0``, the data and the batch order; every strategy sees the same ones.

Reported per strategy at r = 1 and per r of the sweep (median, min and max over seeds):
- final test loss: the mean over the last 10 % of steps. At a fixed lr SGD ends in a noise floor
  where one step's value is a random draw; the first run showed uniform there by step ~600.
- steps to target: the first step whose test loss is <= uniform's final test loss (same seed), and
  steps to 10x target, the same for 10x that level: the speed of the descent before the floor.
- verdict per metric: "better"/"worse" when the min-max ranges over seeds do not overlap uniform's.
- the mean weight each group received, and a control added after the first run: uniform at twice
  the lr, since mean-1 weights move step size from some samples to others.
"""

import argparse
import dataclasses
import json
import os
import re
import statistics
import time
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch.func import vmap

from benchmarks.environment import environment
from megatron_rw import compute_sample_weights


@dataclasses.dataclass(frozen=True)
class Group:
    """One kind of training sample: ``x ~ N(0, input_std^2 I)``, ``y = x.w* + N(0, label_noise^2)``."""

    name: str
    fraction: float  # share of the training set
    input_std: float
    label_noise: float


@dataclasses.dataclass(frozen=True)
class Setting:
    """Everything that defines one experiment except the seed, strategy and r."""

    name: str
    groups: Tuple[Group, ...]
    dim: int = 20
    n_train: int = 2000
    n_test: int = 2000
    batch: int = 16
    lr: float = 0.05
    steps: int = 1000
    log_every: int = 25  # the JSON keeps curves at these steps only; steps-to-target uses every step


_REDUNDANT = dict(name="redundant", input_std=0.1, label_noise=0.0)
_INFORMATIVE = dict(name="informative", input_std=1.0, label_noise=0.1)
SETTINGS = (
    Setting("clean", (Group(fraction=0.8, **_REDUNDANT), Group(fraction=0.2, **_INFORMATIVE))),
    Setting("noisy", (Group(fraction=0.7, **_REDUNDANT), Group(fraction=0.2, **_INFORMATIVE),
                      Group("noisy", 0.1, input_std=1.0, label_noise=1.0))),
)
STRATEGIES = ("uniform", "linupper", "quadratic", "extremes")
R_MAIN = 1.0  # the paper's figure uses r = 1
R_SWEEP = (0.1, 0.3, 1.0, 3.0, 10.0)
SWEEP_STRATEGIES = ("linupper", "quadratic", "extremes")
FINAL_FRACTION = 0.1  # "final test loss" = mean over this last fraction of the steps
METRICS = ("final_test_loss", "steps_to_10x_target", "steps_to_target")  # lower is better for all


def _inputs(setting: Setting, n: int, gen: torch.Generator):
    """``n`` inputs split over the groups by fraction (exact counts) and each row's group index."""
    counts = [round(g.fraction * n) for g in setting.groups]
    counts[-1] = n - sum(counts[:-1])
    group = torch.cat([torch.full((c,), k) for k, c in enumerate(counts)])
    std = torch.tensor([g.input_std for g in setting.groups], dtype=torch.float64)[group]
    return torch.randn(n, setting.dim, generator=gen, dtype=torch.float64) * std[:, None], group


def make_data(setting: Setting, seeds: Sequence[int]) -> Dict[str, torch.Tensor]:
    """Per-seed problems stacked on a leading seed axis (so every seed trains in one tensor op)."""
    keys = ("w_star", "w0", "x", "y", "group", "x_test", "y_test", "order")
    out: Dict[str, List[torch.Tensor]] = {k: [] for k in keys}
    noise_std = torch.tensor([g.label_noise for g in setting.groups], dtype=torch.float64)
    for seed in seeds:
        gen = torch.Generator().manual_seed(seed)
        w_star = torch.randn(setting.dim, generator=gen, dtype=torch.float64) / setting.dim**0.5
        w0 = torch.randn(setting.dim, generator=gen, dtype=torch.float64) / setting.dim**0.5
        x, group = _inputs(setting, setting.n_train, gen)
        y = x @ w_star + torch.randn(setting.n_train, generator=gen, dtype=torch.float64) * noise_std[group]
        x_test, _ = _inputs(setting, setting.n_test, gen)
        # Without replacement, a fresh permutation every epoch; each epoch uses only its full
        # batches so that every step has the same batch size.
        per_epoch = setting.n_train // setting.batch
        perms = [torch.randperm(setting.n_train, generator=gen)[: per_epoch * setting.batch]
                 for _ in range(-(-setting.steps // per_epoch))]
        order = torch.cat(perms).view(-1, setting.batch)[: setting.steps]
        for k, v in zip(keys, (w_star, w0, x, y, group, x_test, x_test @ w_star, order)):
            out[k].append(v)
    return {k: torch.stack(v) for k, v in out.items()}


def heldout_loss(data: Dict[str, torch.Tensor], w: torch.Tensor) -> torch.Tensor:
    """Clean held-out loss ``0.5 * mean((x.w - x.w*)^2)`` per seed: ``[S]``."""
    pred = torch.einsum("snd,sd->sn", data["x_test"], w)
    return 0.5 * (pred - data["y_test"]).pow(2).mean(dim=1)


def train(data: Dict[str, torch.Tensor], setting: Setting, strategy: str, r: float):
    """SGD on ``mean_i(w_i * l_i)`` for every seed at once.

    Returns:
        test loss ``[S, steps + 1]`` (index = step) and the mean weight per group ``[S, groups]``.
    """
    # vmap runs compute_sample_weights on each seed's minibatch separately (min/max and softmax
    # per seed), bit-for-bit what a Python loop over seeds gives.
    weigh = vmap(lambda losses: compute_sample_weights(losses, strategy, r))
    w = data["w0"].clone()
    curve = [heldout_loss(data, w)]
    weight_sum = torch.zeros(w.shape[0], len(setting.groups), dtype=torch.float64)
    weight_cnt = torch.zeros_like(weight_sum)
    for step in range(setting.steps):
        idx = data["order"][:, step]  # [S, B]
        x = torch.gather(data["x"], 1, idx[..., None].expand(-1, -1, setting.dim))
        resid = torch.einsum("sbd,sd->sb", x, w) - torch.gather(data["y"], 1, idx)
        weights = weigh(0.5 * resid.pow(2))
        # Exact gradient of mean(weights * l) with the weights held constant, as in the plugin
        # (no gradient flows through compute_sample_weights). Uniform weights are exactly 1.0, so
        # this is then bit-for-bit plain mean-loss SGD.
        grad = ((weights * resid)[..., None] * x).mean(dim=1)
        w = w - setting.lr * grad
        curve.append(heldout_loss(data, w))
        group = torch.gather(data["group"], 1, idx)
        weight_sum.scatter_add_(1, group, weights.double())
        weight_cnt.scatter_add_(1, group, torch.ones_like(weights, dtype=torch.float64))
    return torch.stack(curve, dim=1), weight_sum / weight_cnt


def steps_to_target(curve: torch.Tensor, target: torch.Tensor) -> List[Optional[int]]:
    """Per seed, the first step whose test loss is <= that seed's target; ``None`` if never."""
    hit = curve <= target[:, None]
    first = hit.int().argmax(dim=1)  # argmax returns the first maximal index
    return [int(f) if h else None for f, h in zip(first, hit.any(dim=1))]


def final_loss(curve: torch.Tensor) -> torch.Tensor:
    """Mean test loss over the last ``FINAL_FRACTION`` of the steps, per seed."""
    window = max(1, round(FINAL_FRACTION * (curve.shape[1] - 1)))
    return curve[:, -window:].mean(dim=1)


def _summary(per_seed: List[Optional[float]]) -> Dict:
    """Median and range over seeds; ``None`` (never reached) counts as +inf and prints "never"."""
    vals = [float("inf") if v is None else v for v in per_seed]
    stats = {"median": statistics.median(vals), "min": min(vals), "max": max(vals)}
    return {"per_seed": per_seed, **{k: "never" if v == float("inf") else v for k, v in stats.items()}}


def _verdict(run: Dict, ref: Dict) -> str:
    """Lower is better; "better"/"worse" only when the min-max ranges over seeds do not overlap."""
    lo, hi, ref_lo, ref_hi = (float("inf") if v == "never" else v
                              for v in (run["min"], run["max"], ref["min"], ref["max"]))
    return "better" if hi < ref_lo else "worse" if lo > ref_hi else "within seed spread"


def run_setting(setting: Setting, seeds: Sequence[int], r_sweep: Sequence[float] = R_SWEEP) -> Dict:
    """All strategies at r = 1, the r sweep and the 2x-lr control for one setting (its JSON section)."""
    data = make_data(setting, seeds)
    runs = {(s, R_MAIN): train(data, setting, s, R_MAIN) for s in STRATEGIES}
    runs.update({(s, r): train(data, setting, s, r) for s in SWEEP_STRATEGIES for r in r_sweep if r != R_MAIN})
    control = train(data, dataclasses.replace(setting, lr=2 * setting.lr), "uniform", R_MAIN)[0]
    target = final_loss(runs[("uniform", R_MAIN)][0])

    def summary(curve: torch.Tensor) -> Dict:
        res = {"final_test_loss": _summary(final_loss(curve).tolist()),
               "steps_to_target": _summary(steps_to_target(curve, target)),
               "steps_to_10x_target": _summary(steps_to_target(curve, 10 * target))}
        ratio = final_loss(curve) / target  # paired per seed: same data and batch order as uniform
        res["vs_uniform"] = {"final_loss_ratio": _summary(ratio.tolist()),
                             "seeds_final_below_uniform": int((ratio < 1).sum())}
        return res

    uniform = summary(runs[("uniform", R_MAIN)][0])

    def compared(curve: torch.Tensor) -> Dict:
        res = summary(curve)
        res["vs_uniform"]["verdict"] = {m: _verdict(res[m], uniform[m]) for m in METRICS}
        inf = float("inf")  # paired per seed; a seed that never reaches 10x target is not faster
        res["vs_uniform"]["seeds_faster_to_10x_target"] = sum(
            (a if a is not None else inf) < (b if b is not None else inf)
            for a, b in zip(res["steps_to_10x_target"]["per_seed"], uniform["steps_to_10x_target"]["per_seed"]))
        return res

    logged = sorted(set(range(0, setting.steps + 1, setting.log_every)) | {setting.steps})
    quantiles = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0], dtype=torch.float64)
    out = {"setting": dataclasses.asdict(setting), "target_per_seed": target.tolist(), "logged_steps": logged,
           "curves": {}, "strategies": {}, "controls": {"uniform_lr_x2": compared(control)}, "r_sweep": {}}
    for name, curve in [(s, runs[(s, R_MAIN)][0]) for s in STRATEGIES] + [("uniform_lr_x2", control)]:
        q = torch.quantile(curve[:, logged], quantiles, dim=0)
        out["curves"][name] = dict(zip(("min", "q25", "median", "q75", "max"), q.tolist()))
    for s in STRATEGIES:
        curve, group_weight = runs[(s, R_MAIN)]
        out["strategies"][s] = compared(curve)
        out["strategies"][s]["mean_weight_by_group"] = {
            g.name: round(v, 3) for g, v in zip(setting.groups, group_weight.mean(dim=0).tolist())}
    for s in SWEEP_STRATEGIES:
        out["r_sweep"][s] = {str(r): compared(runs[(s, r)][0]) for r in r_sweep}
    return out


def _mix(setting: Dict) -> str:
    return " + ".join(f"{g['fraction']:.0%} {g['name']}" for g in setting["groups"])


def _cell(st: Dict, fmt: str = "{:.0f}") -> str:
    return " ".join(v if v == "never" else fmt.format(v) for v in (st["median"], st["min"], st["max"]))


def print_tables(results: Dict) -> None:
    """Readable tables of what the JSON holds: median min max over seeds."""
    short = {"better": "better", "worse": "WORSE", "within seed spread": "~"}
    for name, res in results["settings"].items():
        print(f"\n== {name}: {_mix(res['setting'])}, {res['setting']['steps']} steps;"
              f" 'median min max' over {len(results['seeds'])} seeds; verdict vs uniform per column;"
              " paired = seeds reaching 10x target before uniform")
        head = (f"{'run':<16} {'final test loss':>26} {'final / uniform':>17} {'steps to 10x target':>20}"
                f" {'steps to target':>18} {'paired':>8}  verdicts (final/10x/target)")
        rows = [(f"{s} r={R_MAIN:g}", st) for s, st in res["strategies"].items()]
        rows.append(("uniform 2x lr", res["controls"]["uniform_lr_x2"]))
        rows += [(f"{s} r={r}", st) for s, by_r in res["r_sweep"].items() for r, st in by_r.items() if float(r) != R_MAIN]
        print(head)
        for label, st in rows:
            verdicts = "/".join(short[st["vs_uniform"]["verdict"][m]] for m in METRICS)
            weights = " ".join(f"{g}={w}" for g, w in st.get("mean_weight_by_group", {}).items())
            ratio = _cell(st["vs_uniform"]["final_loss_ratio"], "{:.2f}")
            paired = f"{st['vs_uniform']['seeds_faster_to_10x_target']}/{len(results['seeds'])}"
            print(f"{label:<16} {_cell(st['final_test_loss'], '{:.2e}'):>26} {ratio:>17} {_cell(st['steps_to_10x_target']):>20}"
                  f" {_cell(st['steps_to_target']):>18} {paired:>8}  {verdicts:<28} {weights}")


def plot(results: Dict, path: str) -> None:
    """Per setting: test loss vs step at r = 1; final test loss vs r; steps to 10x target vs r."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = dict(uniform="black", linupper="tab:red", quadratic="tab:blue", extremes="tab:green")
    names = list(results["settings"])
    fig, axes = plt.subplots(len(names), 3, figsize=(17, 4.6 * len(names)), squeeze=False)
    n = len(results["seeds"])
    for row, name in zip(axes, names):
        res = results["settings"][name]
        for s, c in res["curves"].items():
            if s == "uniform_lr_x2":  # the control: median only, to keep the panel readable
                row[0].plot(res["logged_steps"], c["median"], ":", color="gray", lw=2, label="uniform, 2x lr (control)")
                continue
            row[0].plot(res["logged_steps"], c["median"], color=colors[s], label=s)
            row[0].fill_between(res["logged_steps"], c["min"], c["max"], color=colors[s], alpha=0.15)
        row[0].set(yscale="log", xlabel="SGD step", ylabel="clean test loss",
                   title=f"{name}: {_mix(res['setting'])}\nr = {R_MAIN:g}; median and min-max over {n} seeds")
        panels = ((row[1], "final_test_loss", "final test loss (mean of last 10 % of steps)", "log", "floor"),
                  (row[2], "steps_to_10x_target", "steps to reach 10x uniform's final loss", "linear", "speed"))
        for ax, metric, label, yscale, what in panels:
            uni = res["strategies"]["uniform"][metric]
            ax.axhspan(uni["min"], uni["max"], color="black", alpha=0.1)
            ax.axhline(uni["median"], color="black", label="uniform (no r)")
            ax.axhline(res["controls"]["uniform_lr_x2"][metric]["median"], ls=":", color="gray", lw=2,
                       label="uniform, 2x lr (control)")
            for s, by_r in res["r_sweep"].items():
                pts = [(float(r), v[metric]) for r, v in by_r.items() if v[metric]["max"] != "never"]
                med = [v["median"] for _, v in pts]
                err = [[m - v["min"] for m, (_, v) in zip(med, pts)], [v["max"] - m for m, (_, v) in zip(med, pts)]]
                ax.errorbar([r for r, _ in pts], med, yerr=err, color=colors[s], marker="o", capsize=3, label=s)
            ax.set(xscale="log", yscale=yscale, xlabel="temperature r", ylabel=label,
                   title=f"{name}: r sweep, {what} (lower is better; median, min-max)")
            ax.legend(fontsize=8)
        row[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _compact_json(obj) -> str:
    """JSON with floats at 4 significant digits and each list of numbers on one line (a small file)."""
    def rounded(o):
        if isinstance(o, (dict, list)):
            return {k: rounded(v) for k, v in o.items()} if isinstance(o, dict) else [rounded(v) for v in o]
        return float(f"{o:.4g}") if isinstance(o, float) else o

    text = json.dumps(rounded(obj), indent=1)
    return re.sub(r"\[\s+([-+.\w\s,]*?)\s+\]", lambda m: "[" + " ".join(m.group(1).split()) + "]", text)


def main(argv: Optional[Sequence[str]] = None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="use seeds 0..N-1")
    parser.add_argument("--out", default="results/", help="directory for toy_regression.json and .png")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # tiny tensors: threads only add overhead on a shared machine
    seeds = list(range(args.seeds))
    start = time.perf_counter()
    results = {
        "benchmark": "toy_regression",
        "environment": environment(),
        "description": __doc__.split("\n\n", 2)[2].strip(),
        "seeds": seeds, "strategies": list(STRATEGIES), "r_main": R_MAIN, "r_sweep": list(R_SWEEP),
        "test_set": "clean labels y = x.w*, inputs drawn from the training group mixture, n_test samples",
        "final_test_loss": f"per seed, mean test loss over the last {FINAL_FRACTION:.0%} of steps",
        "target": "per seed, uniform's (r = 1) final test loss; steps_to_target = first step whose test loss"
                  " <= target, steps_to_10x_target = the same for 10x target; 'never' = not within the run",
        "verdict": "per metric: better/worse when the min-max ranges over seeds do not overlap uniform's",
        "paired": "seeds_final_below_uniform, seeds_faster_to_10x_target: counts over the same seeds as uniform",
        "settings": {s.name: run_setting(s, seeds, R_SWEEP) for s in SETTINGS},
    }
    results["wall_time_s"] = round(time.perf_counter() - start, 1)
    print_tables(results)
    os.makedirs(args.out, exist_ok=True)
    json_path, png_path = (os.path.join(args.out, f"toy_regression.{ext}") for ext in ("json", "png"))
    with open(json_path, "w") as f:
        f.write(_compact_json(results))
    plot(results, png_path)
    print(f"\nwall time {results['wall_time_s']} s (training); wrote {json_path} and {png_path}")
    return results


if __name__ == "__main__":
    main()
