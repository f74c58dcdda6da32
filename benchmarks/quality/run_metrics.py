"""A run of Megatron's training loop as the ``metrics.jsonl`` rows the evaluation reports read.

    python -m benchmarks.quality.run_metrics RUN_DIR [--manifest data/small/manifest.json]

The reports (``gpt_sweep_report``, ``rw_eval_report``, ``preview_check``, ``loss_distribution``)
read rows ``{"iteration": it, "train/<key>": ..., "valid/<set>/lm loss": ...}``: the format of
the runs archived under results/, which the project's former trainer logged (up to commit
4954e89). The launcher now trains with Megatron's own loop, which logs to TensorBoard;
:func:`metrics_rows` turns a run's events (``RUN_DIR/tensorboard``) into the same rows:

- training: one row per ``--log-interval`` iterations, each tag averaged over the interval's
  logged steps (``--tensorboard-log-interval``, 1 by default) as the former trainer averaged;
  ``learning-rate``, ``grad-norm`` and ``iteration-time`` (seconds; with
  ``--log-timers-to-tensorboard``) become ``learning rate``, ``grad norm`` and ``iteration time
  (ms)``; a domain's mean weight ``sample weight/<d>`` is its weight share over its sample share
  (what the patch reports per step, ``rw_domains.py``), likewise ``preview weight/<d>``;
  ``reweight r`` is the schedule's r from the run's flags (inf in burn-in) unless the run logged
  the r a target ESS chose;
- validation: ``lm loss validation-<set>`` becomes ``valid/<set>/lm loss``; ``valid/all/lm
  loss`` is the single set's loss, or with one set per domain their mean weighted by the
  training blend's shares (``shares``): the blend's expected loss, where the former trainer
  evaluated a sample of the blend.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
from typing import Dict, List, Optional

from megatron_rw.data.domains import domain_name
from megatron_rw.megatron_training import run_log

RENAMES = {"learning-rate": "learning rate", "grad-norm": "grad norm"}
SHARE, WEIGHT_SHARE, PREVIEW_SHARE = "sample share/", "sample weight share/", "preview weight share/"
TIME = "iteration-time"
R_KEY = "reweight r"


def schedule_r(args: Dict[str, str]):
    """``iteration -> r`` of the run's ``--sample-reweight-*`` flags, read back from the
    arguments Megatron wrote to TensorBoard (``str`` of each value; the field's type converts
    it back)."""
    from megatron_rw import ReweightConfig
    from megatron_rw.schedule import temperature_at

    defaults = ReweightConfig()
    kwargs = {}
    for f in dataclasses.fields(ReweightConfig):
        text = args.get("sample_reweight_" + f.name)
        if text in (None, "None"):
            continue
        kind = type(getattr(defaults, f.name))
        kwargs[f.name] = text == "True" if kind is bool else kind(text)
    config = ReweightConfig(**kwargs)
    return lambda iteration: temperature_at(config, iteration - 1)  # after `iteration` steps


def _train_row(steps: List[dict], r: float) -> dict:
    keys = {k for row in steps for k in row if run_log.VALIDATION not in k}
    mean = {k: statistics.fmean(row[k] for row in steps if k in row) for k in keys}
    row = {}
    for k, v in sorted(mean.items()):
        if k.startswith(SHARE):
            continue
        if k.startswith(WEIGHT_SHARE) or k.startswith(PREVIEW_SHARE):
            d = k.split("/", 1)[1]
            share = mean.get(SHARE + d, 0.0)
            if share > 0:
                name = "sample weight/" if k.startswith(WEIGHT_SHARE) else "preview weight/"
                row["train/" + name + d] = v / share
        elif k == TIME:
            row["train/iteration time (ms)"] = v * 1e3
        else:
            row["train/" + RENAMES.get(k, k)] = v
    row.setdefault("train/" + R_KEY, r)
    return row


def metrics_rows(tensorboard_dir: str, shares: Optional[Dict[str, float]] = None) -> List[dict]:
    """Rows in iteration order (training and validation rows apart, as the former trainer
    wrote them); see the module docstring. ``shares``: each domain's share of the training
    blend, for ``valid/all`` with one validation set per domain (without it: their plain mean)."""
    scalars, args = run_log.read_run(tensorboard_dir)
    interval = int(args.get("log_interval", "1"))
    r_at = schedule_r(args)
    rows = []
    window: List[dict] = []
    for it, tags in scalars.items():
        train = {k: v for k, v in tags.items() if run_log.VALIDATION not in k}
        if train:
            window.append(train)
        if it % interval == 0 and window:
            rows.append({"iteration": it, **_train_row(window, r_at(it))})
            window = []
        valid = _valid_row(tags, shares)
        if valid:
            rows.append({"iteration": it, **valid})
    return rows


def _valid_row(tags: Dict[str, float], shares: Optional[Dict[str, float]]) -> dict:
    sets = run_log.validation_sets({0: tags})
    row = {f"valid/{name or 'all'}/lm loss": tags[tag] for name, tag in sets.items()}
    per_domain = {name: tags[tag] for name, tag in sets.items() if name}
    if per_domain and "valid/all/lm loss" not in row:
        if shares and set(per_domain) <= set(shares):
            total = sum(shares[d] for d in per_domain)
            row["valid/all/lm loss"] = sum(shares[d] * v for d, v in per_domain.items()) / total
        else:
            row["valid/all/lm loss"] = statistics.fmean(per_domain.values())
    return row


def blend_shares(manifest: str) -> Dict[str, float]:
    """Each training domain's share of the blend in a corpus's ``manifest.json`` (= its expected
    share of the samples); {} when it cannot be read."""
    try:
        with open(manifest, encoding="utf-8") as f:
            words = json.load(f)["data_path"]["train"].split()
    except (OSError, KeyError, ValueError):
        return {}
    pairs = [(domain_name(p), float(w)) for w, p in zip(words[0::2], words[1::2])]
    total = sum(w for _, w in pairs)  # Megatron normalises the blend weights the same way
    return {d: w / total for d, w in pairs}


def write_metrics(run_dir: str, shares: Optional[Dict[str, float]] = None) -> str:
    """``RUN_DIR/metrics.jsonl`` from ``RUN_DIR/tensorboard`` (rewritten whole); returns its path."""
    path = os.path.join(run_dir, "metrics.jsonl")
    rows = metrics_rows(os.path.join(run_dir, "tensorboard"), shares)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")  # inf as Infinity, as the archived rows have it
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir")
    p.add_argument("--manifest", help="the corpus's manifest.json (blend shares for valid/all)")
    a = p.parse_args(argv)
    print(write_metrics(a.run_dir, blend_shares(a.manifest) if a.manifest else None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
