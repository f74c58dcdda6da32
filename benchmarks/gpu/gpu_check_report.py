"""The pure parts of benchmarks/gpu/gpu_check.py: read what its phases left behind, summarise it,
plot it, write the results file. No CUDA, no torch: tested on CPU with synthetic inputs."""

from __future__ import annotations

import json
import math
import os
import statistics
import xml.etree.ElementTree as ET
from typing import Dict, List, Optional

from megatron_rw.megatron_training.run_log import Scalars, validation_sets

MESSAGE_CHARS = 1500  # of each failure kept in the results file
STEP_KEYS = ("lm loss", "weighted lm loss", "sample weight ess")
SAMPLE_SHARE, WEIGHT_SHARE = "sample share/", "sample weight share/"


def parse_junit(path: str) -> dict:
    """pytest's ``--junitxml`` report -> counts, every case's outcome and failure messages.

    Returns:
        ``{"passed", "failed", "skipped", "cases": {id: outcome}, "failures": {id: text}}`` where
        an id is ``file::test[params]`` and an outcome one of passed / failed / error / skipped.
    """
    cases, failures = {}, {}
    for case in ET.parse(path).getroot().iter("testcase"):
        module = case.get("classname", "").replace(".", "/")
        case_id = f"{module}.py::{case.get('name')}"
        outcome = "passed"
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome = "failed" if tag == "failure" else tag
                if tag != "skipped":
                    text = (node.get("message") or "") + "\n" + (node.text or "")
                    failures[case_id] = text.strip()[-MESSAGE_CHARS:]
                break
        cases[case_id] = outcome
    counts = {k: sum(v == k for v in cases.values()) for k in ("passed", "skipped")}
    counts["failed"] = sum(v in ("failed", "error") for v in cases.values())
    return {**counts, "cases": cases, "failures": failures}


def curves(scalars: Scalars) -> dict:
    """Loss curves and the reweighting's own statistics from what a run of Megatron's loop wrote
    to TensorBoard (``megatron_rw.megatron_training.run_log.read_run``'s scalars).

    Returns:
        ``{"train": {"iteration": [...], "lm loss": [...], "weighted lm loss": [...],
        "sample weight ess": [...], "iteration time (ms)": [...]}, "valid": {"iteration": [...],
        "<set>": [...]}, "domain_weight": {"<domain>": [...]}}`` (train lists aligned on
        ``train.iteration``; a value missing at an iteration is NaN). A domain's weight at a
        step is its share of the weight over its share of the samples (NaN without a sample).
    """
    steps = [it for it, row in scalars.items() if "lm loss" in row]
    out = {"train": {"iteration": steps}, "valid": {}, "domain_weight": {}}
    for key in STEP_KEYS:
        out["train"][key] = [scalars[it].get(key, math.nan) for it in steps]
    # Megatron's iteration-time (--log-timers-to-tensorboard) is in seconds
    out["train"]["iteration time (ms)"] = [scalars[it].get("iteration-time", math.nan) * 1e3
                                           for it in steps]
    sets = validation_sets(scalars)
    evaluated = [it for it, row in scalars.items() if any(t in row for t in sets.values())]
    out["valid"]["iteration"] = evaluated
    for name, tag in sets.items():
        out["valid"][name or "validation"] = [scalars[it].get(tag, math.nan) for it in evaluated]
    domains = sorted({t[len(WEIGHT_SHARE):] for it in steps for t in scalars[it]
                      if t.startswith(WEIGHT_SHARE)})
    for d in domains:
        out["domain_weight"][d] = [
            scalars[it].get(WEIGHT_SHARE + d, math.nan) / scalars[it][SAMPLE_SHARE + d]
            if scalars[it].get(SAMPLE_SHARE + d) else math.nan for it in steps]
    return out


def _finite_mean(values) -> float:
    values = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return statistics.fmean(values) if values else math.nan


def _finite_median(values) -> float:
    values = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return statistics.median(values) if values else math.nan


def summarise_quality(runs: Dict[str, dict], warmup_iters: int, last: int = 5) -> dict:
    """Final losses of each run and linupper - uniform differences, from ``curves()`` outputs.

    Args:
        runs: variant name -> ``curves()`` of its metrics; ``uniform`` is the reference.
        warmup_iters: the reweighting burn-in; domain weights are averaged after it.
        last: logged train losses averaged at the end (one log is noisy).
    """
    out = {}
    for name, c in runs.items():
        t, v = c["train"], c["valid"]
        live = [i for i, it in enumerate(t["iteration"]) if it > warmup_iters]
        out[name] = {
            "iterations": t["iteration"][-1] if t["iteration"] else 0,
            f"train_lm_loss_last{last}_logs": _finite_mean(t["lm loss"][-last:]),
            "final_valid_lm_loss": {k: vals[-1] for k, vals in v.items()
                                    if k != "iteration" and vals},
            "median_iteration_ms": _finite_median(t["iteration time (ms)"]),
            "mean_ess_after_burn_in": _finite_mean([t["sample weight ess"][i] for i in live]),
            "mean_domain_weight_after_burn_in": {
                d: _finite_mean([w[i] for i in live]) for d, w in c["domain_weight"].items()},
        }
    ref = out.get("uniform")
    for name, s in out.items():
        if ref is None or name == "uniform":
            continue
        s["minus_uniform"] = {
            "train_lm_loss": s[f"train_lm_loss_last{last}_logs"] - ref[f"train_lm_loss_last{last}_logs"],
            "final_valid_lm_loss": {k: s["final_valid_lm_loss"][k] - ref["final_valid_lm_loss"][k]
                                    for k in s["final_valid_lm_loss"] if k in ref["final_valid_lm_loss"]},
        }
    return out


def plot_losses(runs: Dict[str, dict], path: str, title: str,
                warmup_iters: Optional[int] = None) -> str:
    """Train (unweighted) and validation loss of each run against the iteration, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_v) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    for name, c in runs.items():
        ax_t.plot(c["train"]["iteration"], c["train"]["lm loss"], label=name, lw=1.2)
        # the mean over the validation sets (one per domain), per evaluation
        sets = [v for k, v in c["valid"].items() if k != "iteration"]
        if sets:
            mean = [statistics.fmean(vals) for vals in zip(*sets)]
            ax_v.plot(c["valid"]["iteration"], mean, marker="o", label=name)
    for ax, what in ((ax_t, "train lm loss (unweighted)"),
                     (ax_v, "validation lm loss (mean of sets)")):
        if warmup_iters:
            ax.axvline(warmup_iters, color="grey", ls=":", lw=1, label="end of burn-in")
        ax.set_xlabel("iteration")
        ax.set_ylabel(what)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title, fontsize=10)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _json_safe(obj):
    """NaN and infinities as strings: the results file stays strict JSON for any reader."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def write_results(path: str, results: dict) -> None:
    """Write atomically (a check killed at its time limit leaves the last complete file)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(_json_safe(results), f, indent=1, allow_nan=False)
        f.write("\n")
    os.replace(path + ".tmp", path)


def overall_status(phases: Dict[str, dict]) -> str:
    """``passed`` only when every phase ran and passed; ``failed`` when one failed; else
    ``incomplete`` (a phase was skipped or left out for lack of time)."""
    states = [p.get("status") for p in phases.values()]
    if any(s == "failed" for s in states):
        return "failed"
    return "passed" if states and all(s == "passed" for s in states) else "incomplete"


def read_json(path: str):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def phase_line(phase: dict) -> str:
    """One line for the console: the phase's status and its headline figures."""
    status = phase.get("status", "?")
    if status == "skipped":
        return f"skipped ({phase.get('why', '')})"
    if status == "failed":
        how = "timed out" if phase.get("timed_out") else f"exit code {phase.get('rc')}"
        names = ", ".join(list(phase.get("failures", {}))[:3])
        return f"FAILED ({how}){': ' + names if names else ''}"
    if "cases" in phase:
        return (f"{phase['passed']} passed, {phase['failed']} failed, {phase['skipped']} skipped "
                f"in {phase['seconds']:.0f} s")
    if "results" in phase:
        r = phase["results"]["ratio_step"]
        base = phase["results"]["baseline_step_ms"]["median"]
        return (f"step time reweighted / uniform: median {r['median']:.4f} [IQR {r['q1']:.4f}, "
                f"{r['q3']:.4f}] over {r['n']} pairs; uniform {base:.1f} ms/step")
    if "summary" in phase:
        parts = []
        for name, s in phase["summary"].items():
            parts.append(f"{name} valid {_finite_mean(s['final_valid_lm_loss'].values()):.4f}")
        return "final validation loss (mean of sets): " + ", ".join(parts)
    return status
