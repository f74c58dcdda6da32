"""What ``robust`` and a target ESS add to the weight arithmetic, as ratios to linupper.

    python -m benchmarks.cost.weights_variants_cost [--out results/weights_variants_cost.json]

On one CPU thread, for N = 64 ... 65536 losses (``benchmarks.cost.weights_cost``'s sizes, losses and
timing loop: cases interleaved per repeat, each repeat ~4 ms of back-to-back calls), the weights
of one global micro-batch computed four ways:

- ``linupper``: ``compute_sample_weights(losses, "linupper", r)`` (min-max normalisation);
- ``robust``: the same with ``robust`` (quartiles of the valid losses: a sort);
- ``linupper+ess``: ``sample_scores`` + ``ess.temperature_for_ess(target 0.9)`` +
  ``softmax_weights``
  (3 rounds of 32 candidate temperatures, each an ``[32, N]`` softmax);
- ``robust+ess``: both.

Per variant and N: µs per call (median and quartiles over repeats) and the per-repeat ratio to
linupper (median and quartiles): the ratio is what a shared machine's load cannot fake, since
each repeat times every case back to back. Host synchronisations of each path are counted with
``tests.conftest.HostSyncDetector``; any fails the benchmark (exit 1, nothing written).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

import torch

from benchmarks.environment import environment
from benchmarks.cost.weights_cost import R, SEED, SIZES, fake_losses, interleaved_us, stats
from megatron_rw.ess import temperature_for_ess
from megatron_rw.weights import compute_sample_weights, sample_scores, softmax_weights
from tests.conftest import HostSyncDetector

TARGET_ESS = 0.9


def with_ess(losses: torch.Tensor, strategy: str) -> torch.Tensor:
    """Weights at the temperature whose ESS is TARGET_ESS (the hook's target-ESS path)."""
    scores, ok = sample_scores(losses, strategy)
    return softmax_weights(scores, ok, temperature_for_ess(scores, ok, TARGET_ESS))


VARIANTS = {
    "linupper": lambda x: compute_sample_weights(x, "linupper", R),
    "robust": lambda x: compute_sample_weights(x, "robust", R),
    "linupper+ess": lambda x: with_ess(x, "linupper"),
    "robust+ess": lambda x: with_ess(x, "robust"),
}
BASE = "linupper"


def host_syncs() -> dict:
    """Host-syncing calls per variant, on the smallest size (the path does not depend on N)."""
    x = fake_losses(SIZES[0])
    out = {}
    for name, fn in VARIANTS.items():
        with HostSyncDetector() as mode:
            fn(x)
        out[name] = list(mode.calls)
    return out


def measure(sizes=SIZES, repeats: int = 41) -> dict:
    """``{variant: {N: {"us": stats, "ratio": stats of per-repeat ratio to linupper}}}``."""
    losses = {n: fake_losses(n) for n in sizes}
    cases = {(v, n): (lambda fn=fn, n=n: fn(losses[n]))
             for v, fn in VARIANTS.items() for n in sizes}
    timings = interleaved_us(cases, repeats)
    return {v: {str(n): {"us": stats(timings[(v, n)]),
                         "ratio": stats([t / b for t, b in zip(timings[(v, n)],
                                                                timings[(BASE, n)])])}
                for n in sizes} for v in VARIANTS}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="results/weights_variants_cost.json")
    p.add_argument("--repeats", type=int, default=41)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    syncs = host_syncs()
    if any(syncs.values()):
        print(f"FAIL: host synchronisations: {json.dumps(syncs)}", file=sys.stderr)
        return 1
    env = environment()
    result = measure(repeats=a.repeats)
    env["load_average_at_end"] = os.getloadavg()
    print(f"µs per call, median (ratio to {BASE}: median [q1, q3] of per-repeat ratios)")
    print(f"{'N':>6s} " + " ".join(f"{v:>28s}" for v in VARIANTS))
    for n in SIZES:
        cells = [f"{c['us']['median']:7.0f} ({c['ratio']['median']:.2f} "
                 f"[{c['ratio']['q1']:.2f}, {c['ratio']['q3']:.2f}])"
                 for c in (result[v][str(n)] for v in VARIANTS)]
        print(f"{n:6d} " + " ".join(f"{c:>28s}" for c in cells))
    report = {"settings": {"sizes": list(SIZES), "r": R, "target_ess": TARGET_ESS,
                           "repeats": a.repeats, "threads": 1, "seed": SEED,
                           "losses": "benchmarks.cost.weights_cost.fake_losses", "base": BASE},
              "environment": env, "host_syncs": {v: len(c) for v, c in syncs.items()},
              "variants": result,
              "median_ratio_over_sizes": {v: statistics.median(
                  result[v][str(n)]["ratio"]["median"] for n in SIZES) for v in VARIANTS}}
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
