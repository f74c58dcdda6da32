"""Smoke-train real megatron-core on CPU/gloo in several parallel layouts per torchrun launch.

    torchrun --nproc-per-node 1 tests/cpu_smoke_worker.py 1 --out ref.json
    torchrun --nproc-per-node 2 tests/cpu_smoke_worker.py dp2 tp2 tp2xsp pp2 pp2xvpp2 cp2 dp2xdopt \
        --ref ref.json --match tp2,cp2,...
    torchrun --nproc-per-node 4 tests/cpu_smoke_worker.py tp2xdp2 pp2xdp2 cp2xdp2 --ref ref.json

Each layout builds the tiny GPT of tests/_layouts.py (layout-invariant weights and data), runs
STEPS optimizer steps of 2 micro-batches and prints loss and grad norm. With --ref, the losses
and grad norms are compared to a 1-process run (the first file written with --out by layout "1")
and the worker exits non-zero if any layout named in --match (default: all) differs by more than
--tol (relative). Layouts can also come from the LAYOUTS env variable (space separated).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings

warnings.filterwarnings("ignore")  # Megatron warns about missing TE/Apex on every import

import torch.distributed as dist  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from megatron_rw.cpu_runtime import backend, enable_cpu_runtime  # noqa: E402

enable_cpu_runtime()

from megatron.core import parallel_state as ps  # noqa: E402

from tests._layouts import build_model_and_optimizer, parse_layout, train_step  # noqa: E402

STEPS = 3


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("layouts", nargs="*", default=os.environ.get("LAYOUTS", "").split())
    parser.add_argument("--out", help="write {layout: {loss: [...], grad_norm: [...]}} here")
    parser.add_argument("--ref", help="compare to the '1proc' entry of this JSON file")
    parser.add_argument("--match", default="", help="comma list of layouts that must match --ref")
    parser.add_argument("--tol", type=float, default=1e-5)
    args = parser.parse_args()

    dist.init_process_group(backend())
    rank = dist.get_rank()
    results, failures = {}, []
    ref = json.load(open(args.ref))["1proc"] if args.ref else None
    must_match = {m.strip().lower() for m in args.match.split(",") if m.strip()}
    for text in args.layouts:
        layout = parse_layout(text)
        t0 = time.perf_counter()
        chunks, optimizer, _ = build_model_and_optimizer(layout)
        t_build = time.perf_counter() - t0
        losses, norms = [], []
        for step in range(STEPS):
            loss, norm = train_step(chunks, optimizer, step)
            losses.append(loss)
            norms.append(norm)
        elapsed = time.perf_counter() - t0
        results[layout.name] = {"loss": losses, "grad_norm": norms, "seconds": elapsed}
        line = (f"{layout.name:>14}: loss {' '.join(f'{x:.6f}' for x in losses)}  "
                f"grad_norm {' '.join(f'{x:.5f}' for x in norms)}  "
                f"({t_build:.1f}s build, {elapsed:.1f}s total)")
        if ref is not None:
            rel = max(max(abs(a - b) / abs(b) for a, b in zip(losses, ref["loss"])),
                      max(abs(a - b) / abs(b) for a, b in zip(norms, ref["grad_norm"])))
            results[layout.name]["max_rel_diff"] = rel
            line += f"  max rel diff vs 1proc {rel:.2e}"
            if (not must_match or text.lower() in must_match) and rel > args.tol:
                failures.append(layout.name)
        if rank == 0:
            print(line, flush=True)
        del chunks, optimizer
        ps.destroy_model_parallel()
    if rank == 0 and args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    dist.destroy_process_group()
    if failures and rank == 0:
        print("MISMATCH:", ", ".join(failures), flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
