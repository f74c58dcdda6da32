"""Scaling on paper: the DP all-gather and the weight computation up to 1,024 DP ranks.

    .venv/bin/python -m benchmarks.cost.scaling_model [--measured results/weights_cost.json]

A MODEL, not a measurement. Per micro-batch the hook all-gathers one fp32 loss per sample over the
data-parallel group (N = DP * b values) and then every rank computes the N weights itself.

All-gather of M = N * 4 bytes over P ranks, alpha-beta model (alpha: latency per message/hop,
beta: per-rank link bandwidth):

- ring (NCCL's all-gather algorithm): P - 1 steps, each forwarding one rank's block:
  ``(P - 1) * alpha + (P - 1) / P * M / beta``;
- log-depth (recursive doubling / Bruck; NCCL's newer PAT algorithm is of this kind):
  ``ceil(log2 P) * alpha + (P - 1) / P * M / beta``.

Either way each rank sends and receives ``(P - 1) * b * 4`` bytes. Assumed constants (stated, not
measured here): alpha = 5 us (NVLink / good IB small-message latency) to 10 us (inter-node IB with
NCCL's protocol overheads), beta = 25 GB/s (one InfiniBand HDR 200 Gb/s link per GPU).

The weight computation is elementwise plus three reductions over N values, so it is modelled as
``t(N) = t0 + c * N`` with ``t0`` (per-call dispatch of its ~20 torch ops) and ``c`` (per sample)
fitted by least squares (relative error) to the CPU timings of benchmarks/cost/weights_cost.py.
"""

from __future__ import annotations

import argparse
import json
import math
from typing import Dict, List, Optional, Sequence

BYTES_PER_LOSS = 4  # fp32 per-sample loss, whatever the model dtype
ALPHA_US = (5.0, 10.0)
BETA_BYTES_PER_US = 25e9 / 1e6  # 25 GB/s
# With b = 4 these give N = 8, 64, 256, 1024, 4096: all but the first measured directly.
DP_SIZES = (2, 16, 64, 256, 1024)
MICRO_BATCH = 4


def allgather_bytes(dp: int, b: int) -> Dict[str, int]:
    """Bytes one rank sends and receives, and the gathered buffer, for one micro-batch."""
    return {"send": (dp - 1) * b * BYTES_PER_LOSS, "recv": (dp - 1) * b * BYTES_PER_LOSS,
            "gathered": dp * b * BYTES_PER_LOSS}


def ring_us(dp: int, total_bytes: float, alpha_us: float, beta: float = BETA_BYTES_PER_US) -> float:
    """Ring all-gather time (us) of ``total_bytes`` gathered over ``dp`` ranks."""
    if dp == 1:
        return 0.0
    return (dp - 1) * alpha_us + (dp - 1) / dp * total_bytes / beta


def log_depth_us(dp: int, total_bytes: float, alpha_us: float,
                 beta: float = BETA_BYTES_PER_US) -> float:
    """Recursive-doubling / Bruck all-gather time (us): ceil(log2 P) rounds, same bytes."""
    if dp == 1:
        return 0.0
    return math.ceil(math.log2(dp)) * alpha_us + (dp - 1) / dp * total_bytes / beta


def fit_linear(sizes: Sequence[float], times_us: Sequence[float]) -> Dict[str, float]:
    """Least squares ``t = t0 + c * N`` in *relative* error (weights 1 / t^2), so that the
    dispatch-bound small sizes set t0 and one noisy large size cannot drag it below zero.
    Returns ``{"t0_us", "c_us_per_sample"}``."""
    w = [1.0 / (t * t) for t in times_us]
    sw = sum(w)
    mx = sum(wi * x for wi, x in zip(w, sizes)) / sw
    my = sum(wi * y for wi, y in zip(w, times_us)) / sw
    sxx = sum(wi * (x - mx) ** 2 for wi, x in zip(w, sizes))
    c = sum(wi * (x - mx) * (y - my) for wi, x, y in zip(w, sizes, times_us)) / sxx
    return {"t0_us": my - c * mx, "c_us_per_sample": c}


def scaling_table(fit: Dict[str, float], measured: Optional[Dict[str, dict]] = None,
                  b: int = MICRO_BATCH, dp_sizes: Sequence[int] = DP_SIZES) -> List[dict]:
    """One row per DP size: bytes, modelled all-gather time, the weight time from the fit and,
    where N was timed, the measured median (``measured``: {str(N): {"median": us}})."""
    rows = []
    for dp in dp_sizes:
        n = dp * b
        sizes = allgather_bytes(dp, b)
        row = {"dp": dp, "b": b, "n_samples": n, **{f"{k}_bytes": v for k, v in sizes.items()}}
        for alpha in ALPHA_US:
            row[f"ring_us_alpha{alpha:g}"] = ring_us(dp, sizes["gathered"], alpha)
            row[f"log_us_alpha{alpha:g}"] = log_depth_us(dp, sizes["gathered"], alpha)
        row["bandwidth_term_us"] = (dp - 1) / dp * sizes["gathered"] / BETA_BYTES_PER_US
        row["weights_cpu_us_model"] = fit["t0_us"] + fit["c_us_per_sample"] * n
        if measured and str(n) in measured:
            row["weights_cpu_us_measured"] = measured[str(n)]["median"]
        rows.append(row)
    return rows


def assumptions() -> dict:
    return {"kind": "model, not a measurement", "alpha_us_per_hop": list(ALPHA_US),
            "beta_GB_per_s": BETA_BYTES_PER_US * 1e6 / 1e9, "bytes_per_loss": BYTES_PER_LOSS,
            "ring_us": "(P-1)*alpha + (P-1)/P*M/beta", "log_depth_us":
            "ceil(log2 P)*alpha + (P-1)/P*M/beta", "weights_us": "t0 + c*N fitted to CPU timings",
            "per": "one micro-batch (multiply by micro-batches per step; only the last PP stage)"}


def print_table(rows: List[dict]) -> None:
    a0, a1 = ALPHA_US
    print(f"| DP | N | send = recv / rank | ring a={a0:g}..{a1:g} us | log2 a={a0:g}..{a1:g} us "
          f"| bandwidth term | weights CPU fit (measured) |\n|---|---|---|---|---|---|---|")
    for r in rows:
        measured = r.get("weights_cpu_us_measured")
        measured = f"{measured:,.0f}" if measured is not None else "-"
        print(f"| {r['dp']} | {r['n_samples']} | {r['send_bytes']:,} B "
              f"| {r[f'ring_us_alpha{a0:g}']:,.0f}..{r[f'ring_us_alpha{a1:g}']:,.0f} "
              f"| {r[f'log_us_alpha{a0:g}']:,.0f}..{r[f'log_us_alpha{a1:g}']:,.0f} "
              f"| {r['bandwidth_term_us']:.2f} us | {r['weights_cpu_us_model']:,.0f} us "
              f"({measured}) |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--measured", default="results/weights_cost.json",
                        help="weights_cost.json whose linupper timings give the fit")
    args = parser.parse_args()
    with open(args.measured) as f:
        measured = json.load(f)
    print("MODEL (alpha-beta, see docstring); weights: fit to measured CPU timings (measured):")
    print_table(scaling_table(measured["scaling_model"]["weights_fit"],
                              measured["compute_sample_weights_us"]["linupper"]))


if __name__ == "__main__":
    main()
