"""Time per iteration of Megatron-LM's own pretrain_gpt.py, unpatched and through the patch.

    .venv/bin/python -m benchmarks.cost.megatron_lm_overhead [--out results/megatron_lm_overhead.json]
        [--pairs 4] [--iters 15]

For every Megatron-LM checkout the tests use (tests/test_megatron_lm.py: ../shared/megatron-lm/*,
MEGATRON_LM=...), one torchrun launch (2 processes, CPU/gloo) of tests/workers/megatron_lm.py
``--phase timing``: per layout (DP2, TP2, PP2), pairs of ``pretrain`` runs in the same processes,
the unpatched script and patches/megatron_lm/pretrain_gpt_rw.py with linupper (r = 0.4, no
burn-in), alternating A B / B A. A run's time per iteration is the median gap between Megatron's
``training_log`` calls after two warm-up iterations, the slower rank's. Reported per layout: the
per-pair ratio patched / unpatched (median, IQR, bootstrap CI) and the medians in ms. The model
is the tests' (2 layers, hidden 64, sequence 64, 8 samples per step), so the loss function's
share of a step is as large as it gets.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

from benchmarks.environment import environment
from benchmarks.cost.overhead import summary
from tests.test_megatron_lm import CHECKOUTS, NEEDS_312, WORKER, prepared_copy
from tests.workers.launch import REPO, torchrun


def measure(name: str, src: str, pairs: int, iters: int) -> dict:
    with tempfile.TemporaryDirectory() as work:
        checkout = prepared_copy(src, os.path.join(work, "checkout"))
        env = {"PYTHONPATH": f"{checkout}:{REPO}", "PYTHONWARNINGS": "ignore"}
        torchrun(WORKER, 2, ["--checkout", checkout, "--work", work, "--phase", "timing",
                             "--pairs", str(pairs), "--iters", str(iters)], env=env, timeout=1800)
        with open(os.path.join(work, "timing.json")) as f:
            raw = json.load(f)
    out = {}
    for layout, s in raw.items():
        ratios = [b / a for a, b in zip(s["unpatched"], s["patched"])]
        out[layout] = {"ratio": summary(ratios, ci=True),
                       "unpatched_ms": summary([x * 1e3 for x in s["unpatched"]]),
                       "patched_ms": summary([x * 1e3 for x in s["patched"]]),
                       "samples_s": s}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/megatron_lm_overhead.json")
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--iters", type=int, default=15)
    a = parser.parse_args(argv)
    names = [n for n in sorted(CHECKOUTS) if not (n in NEEDS_312 and sys.version_info < (3, 12))]
    if not names:
        print("megatron_lm_overhead: no Megatron-LM checkout found (../shared/megatron-lm or "
              "MEGATRON_LM=/path)", file=sys.stderr)
        return 1
    env = environment()
    results = {}
    for name in names:
        print(f"timing {name}: {a.pairs} pairs x {a.iters} iterations per layout ...", flush=True)
        results[name] = measure(name, CHECKOUTS[name], a.pairs, a.iters)
    print("\nratio = patched / unpatched per pair of runs: median [IQR] (95 % CI of the median)\n")
    print("| checkout | layout | ratio | unpatched ms/iter | patched ms/iter |\n|---|---|---|---|---|")
    for name, by_layout in results.items():
        for layout, r in by_layout.items():
            q = r["ratio"]
            print(f"| {name} | {layout.upper()} | {q['median']:.3f} [{q['q1']:.3f}, {q['q3']:.3f}] "
                  f"({q['median_ci95'][0]:.3f}..{q['median_ci95'][1]:.3f}) | "
                  f"{r['unpatched_ms']['median']:.1f} | {r['patched_ms']['median']:.1f} |")
    env["load_average_at_end"] = os.getloadavg()
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    with open(a.out, "w") as f:
        json.dump({"environment": env, "settings": {"pairs": a.pairs, "iters": a.iters,
                                                    "processes": 2, "backend": "gloo"},
                   "results": results}, f, indent=1)
    print(f"\nwrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
