"""Print and save how closely every parallel layout matches the 1-process reference.

    .venv/bin/python -m benchmarks.layout_equivalence [--out results/layout_equivalence.json]

Runs the same torchrun launches as tests/test_equivalence.py (tiny GPT, linupper r = 0.4, 3 steps
of 2 micro-batches, CPU/gloo) and prints, per layout and loss contract, the max relative
difference to the 1-process run over steps for loss, weighted loss, weight ESS and grad norm,
and the mismatch counts of the uniform-vs-Megatron-LM bitwise check.
"""

import argparse
import json
import os
import tempfile

from benchmarks.environment import environment
from tests.test_equivalence import CONTRACTS, LAUNCHES, WORKER, max_rel
from tests.workers.launch import torchrun

KEYS = ("loss", "weighted", "ess", "grad_norm")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/layout_equivalence.json")
    args = parser.parse_args()
    env = environment()
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for nproc, spec in LAUNCHES.items():
            out = os.path.join(tmp, f"{nproc}.json")
            argv = ["--out", out, "--layouts", *spec["layouts"]]
            if spec["bitwise"]:
                argv += ["--bitwise", *spec["bitwise"]]
            print(f"running {nproc}-process layouts: {' '.join(spec['layouts'] + spec['bitwise'])}", flush=True)
            torchrun(WORKER, nproc, argv)
            runs[nproc] = json.load(open(out))
    ref = runs[1]["equivalence"]["1proc"]
    table = {}
    print(f"\n| layout | contract | {' | '.join(KEYS)} |\n|---|---|{'---|' * len(KEYS)}")
    for nproc in (1, 2, 4):
        for layout, by_contract in runs[nproc]["equivalence"].items():
            if layout == "1proc":
                continue
            for contract in CONTRACTS:
                diffs = {k: max_rel(by_contract[contract][k], ref[contract][k]) for k in KEYS}
                table.setdefault(layout, {})[contract] = diffs
                print(f"| {layout} | {contract} | " + " | ".join(f"{diffs[k]:.1e}" for k in KEYS) + " |")
    bitwise = {layout: res for nproc in runs for layout, res in runs[nproc]["bitwise"].items()}
    print("\nuniform vs Megatron-LM loss_func (mismatching losses / main_grads / params):")
    for layout, by_contract in bitwise.items():
        print(f"  {layout}: " + ", ".join(
            f"{c} {r['mismatches']['loss']}/{r['mismatches']['grads']}/{r['mismatches']['params']}"
            f" of {r['compared']['loss']}/{r['compared']['grads']}/{r['compared']['params']}"
            for c, r in by_contract.items()))
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"environment": env, "max_rel_diff": table, "bitwise": bitwise, "reference": ref}, f, indent=1)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
