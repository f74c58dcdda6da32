"""Cost of the reweighting path's parts: weight arithmetic, the DP all-gather, host syncs.

    .venv/bin/python -m benchmarks.cost.weights_cost [--out results/weights_cost.json]
        [--png results/weights_cost.png]

1. ``compute_sample_weights`` alone for N = 64 ... 65536 per strategy, one CPU thread: us per call,
   median over repeats (each repeat times enough back-to-back calls to last ~4 ms). Repeats run
   the (strategy, N) cases in turn, so a burst of load from the shared machine hits all of them.
   Likewise the whole loss function (forward + backward, one process, b = 4, s = 32 and 4096):
   Megatron-LM's loss_func contract vs ``reweighted_loss_func``.
2. ``gather_over_data_parallel`` over 2 gloo processes (torchrun, this file re-run as its own
   worker) for b = 1, 4, 16 per rank, next to a 2-float all-reduce (the size of one Megatron
   report entry) as a reference.
3. Host synchronisations (``tests.conftest.HostSyncDetector``) in compute_sample_weights, in
   ``reweighted_loss_func`` forward + backward on one process, and on 2 processes with the real
   DP all-gather. Any count above 0 fails the benchmark (exit 1, no results written).
4. The scaling model of benchmarks/cost/scaling_model.py, fed with the measured per-sample cost.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import warnings

import torch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)  # when torchrun starts this file as a script
from benchmarks.cost import scaling_model  # noqa: E402
from benchmarks.environment import environment  # noqa: E402
from megatron_rw import ReweightConfig, reweighted_loss_func  # noqa: E402
from megatron_rw.collectives import ReweightGroups, gather_over_data_parallel  # noqa: E402
from megatron_rw.weights import compute_sample_weights  # noqa: E402
from tests.conftest import HostSyncDetector  # noqa: E402

SIZES = (64, 256, 1024, 4096, 16384, 65536)
STRATEGIES = ("uniform", "linupper", "quadratic", "extremes")
GATHER_B = (1, 4, 16)
R = 0.4
SEED = 0
LINUPPER = ReweightConfig(strategy="linupper", r=R, warmup_iters=0)


def fake_losses(n: int, seed: int = SEED) -> torch.Tensor:
    """Loss-like fp32 values (around ln(vocab) of a young model); the cost does not depend on
    them."""
    gen = torch.Generator().manual_seed(seed + n)
    return 4.0 + torch.rand(n, generator=gen)


def interleaved_us(cases: dict, repeats: int, target_s: float = 0.004) -> dict:
    """``{key: fn}`` -> ``{key: [us per call, one per repeat]}``, cases timed in turn per repeat."""
    inner = {}
    for key, fn in cases.items():  # calibrate: calls per repeat so that one repeat lasts ~target_s
        fn()
        t0 = time.perf_counter()
        fn()
        inner[key] = max(1, int(target_s / max(time.perf_counter() - t0, 1e-7)))
    out = {key: [] for key in cases}
    for _ in range(repeats):
        for key, fn in cases.items():
            t0 = time.perf_counter()
            for _ in range(inner[key]):
                fn()
            out[key].append((time.perf_counter() - t0) / inner[key] * 1e6)
    return out


def stats(values) -> dict:
    """Median and quartiles; the min too, the least disturbed repeat on a shared machine."""
    q1, _, q3 = statistics.quantiles(values, n=4)
    return {"median": statistics.median(values), "q1": q1, "q3": q3, "min": min(values),
            "n": len(values)}


def measure_weights(sizes=SIZES, strategies=STRATEGIES, repeats: int = 41) -> dict:
    """``{strategy: {N: stats of us per call}}`` for compute_sample_weights on this CPU."""
    losses = {n: fake_losses(n) for n in sizes}
    cases = {(s, n): (lambda s=s, n=n: compute_sample_weights(losses[n], s, R))
             for s in strategies for n in sizes}
    timings = interleaved_us(cases, repeats)
    return {s: {str(n): stats(timings[(s, n)]) for n in sizes} for s in strategies}


def measure_hook(repeats: int = 41, b: int = 4, seqs=(32, 4096)) -> dict:
    """Forward + backward of the whole loss function on one process (no collectives, no CPU
    shim): Megatron-LM's loss_func contract vs reweighted_loss_func (linupper), [b, s] tokens.
    ``{"b4_s32": {"baseline": stats, "reweighted": stats}, ...}``."""
    with warnings.catch_warnings():  # megatron-core warns about missing TE/Apex on import
        warnings.simplefilter("ignore")
        from tests._layouts import gpt_loss_func  # imports megatron-core: only when asked

    groups = ReweightGroups()
    fns = {"baseline": gpt_loss_func,
           "reweighted": lambda m, o: reweighted_loss_func(m, o, config=LINUPPER, iteration=0,
                                                           groups=groups)}
    cases = {}
    for s in seqs:
        gen = torch.Generator().manual_seed(SEED + s)
        out = (4.0 + torch.rand(b, s, generator=gen)).requires_grad_()
        mask = torch.ones(b, s)
        for name, fn in fns.items():
            # .grad of `out` accumulates across calls: one add, the same for both variants.
            cases[(f"b{b}_s{s}", name)] = (
                lambda fn=fn, out=out, mask=mask: fn(mask, out)[0].backward())
    timings = interleaved_us(cases, repeats)
    result = {}
    for (shape, name), values in timings.items():
        result.setdefault(shape, {})[name] = stats(values)
    return result


def count_host_syncs_local(n: int = 64, b: int = 4, seq: int = 16) -> dict:
    """Host-synchronising calls per path on one process (every count must be 0)."""
    # Control: the detector must see a sync when there is one, or 0 below would prove nothing.
    with HostSyncDetector() as mode:
        torch.ones(1).item()
    if mode.calls != ["item"]:
        raise RuntimeError(f"HostSyncDetector missed a .item(): {mode.calls}")
    counts = {}
    for s in STRATEGIES:
        with HostSyncDetector() as mode:
            compute_sample_weights(fake_losses(n), s, R)
        counts[f"compute_sample_weights/{s}"] = mode.calls
    for contract in ("token_sum", "mean"):
        out = (4.0 + torch.rand(b, seq)).requires_grad_()
        mask = torch.ones(b, seq)
        mask[1, :5] = 0
        mask[2] = 0  # an all-masked padding row: the invalid-sample branch without branching
        with HostSyncDetector() as mode:
            res = reweighted_loss_func(mask, out, config=LINUPPER, iteration=0, contract=contract,
                                       groups=ReweightGroups())
            res[0].backward()
        counts[f"reweighted_loss_func/{contract}/1proc"] = mode.calls
    return counts


def gather_worker(out_path: str, repeats: int, inner: int) -> None:
    """Under torchrun (2 processes, gloo): all-gather timings and the DP hook's host syncs."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    group = dist.group.WORLD
    cases = {f"gather_b{b}": torch.rand(b) for b in GATHER_B}
    pair = torch.ones(2)  # a Megatron report entry: the size of each report all-reduce
    samples = {key: [] for key in [*cases, "allreduce_2float"]}
    for _ in range(repeats):
        for key in samples:
            x = cases.get(key)
            dist.barrier()
            t0 = time.perf_counter()
            for _ in range(inner):
                if x is None:
                    dist.all_reduce(pair, group=group)
                else:
                    gather_over_data_parallel(x, group)
            samples[key].append((time.perf_counter() - t0) / inner * 1e6)
    # A repeat is as slow as its slower rank.
    t = torch.tensor([samples[k] for k in samples], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    timings = {k: stats(row.tolist()) for k, row in zip(samples, t)}

    out = (4.0 + torch.rand(4, 16)).requires_grad_()
    with HostSyncDetector() as mode:
        res = reweighted_loss_func(torch.ones(4, 16), out, config=LINUPPER, iteration=0,
                                   groups=ReweightGroups(data_parallel=group))
        res[0].backward()
    n_calls = torch.tensor([len(mode.calls)])
    dist.all_reduce(n_calls)
    if dist.get_rank() == 0:
        with open(out_path, "w") as f:
            json.dump({"timings_us": timings, "host_syncs_dp2": int(n_calls),
                       "host_sync_calls_rank0": mode.calls}, f)
    dist.destroy_process_group()


def plot(weights: dict, fit: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for s, by_n in weights.items():
        ns = [int(n) for n in by_n]
        ax.plot(ns, [by_n[str(n)]["median"] for n in ns], "o-", label=s, ms=4)
    grid = [2 ** k for k in range(6, 17)]
    ax.plot(grid, [fit["t0_us"] + fit["c_us_per_sample"] * n for n in grid], "k--", lw=1,
            label="linupper fit t0 + cN")
    ax.set(xscale="log", yscale="log", xlabel="N samples in the global micro-batch",
           ylabel="us per call (median)", title="compute_sample_weights, 1 CPU thread")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", lw=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def measure_local(sizes=SIZES, strategies=STRATEGIES, repeats: int = 41) -> dict:
    """The single-process parts: weight timings, host-sync calls per path, the scaling model.
    Needs ``linupper`` among ``strategies`` and >= 2 sizes (the fit)."""
    torch.set_num_threads(1)  # the hook's tensors are tiny; one thread is what a rank would use
    syncs = count_host_syncs_local()
    weights = measure_weights(sizes, strategies, repeats)
    hook = measure_hook(repeats)
    lin = weights["linupper"]
    fit = scaling_model.fit_linear([float(n) for n in lin], [lin[n]["median"] for n in lin])
    return {"compute_sample_weights_us": weights, "loss_fn_us": hook, "host_sync_calls": syncs,
            "scaling_model": {"assumptions": scaling_model.assumptions(), "weights_fit": fit,
                              "rows": scaling_model.scaling_table(fit, lin)}}


def run_gather(repeats: int, inner: int) -> dict:
    """Start this file under torchrun (2 processes) as the gather worker; returns its JSON."""
    from tests.workers.launch import torchrun

    with tempfile.TemporaryDirectory() as tmp:
        raw = os.path.join(tmp, "gather.json")
        torchrun(os.path.abspath(__file__), 2, ["--gather-worker", raw, "--gather-repeats",
                                                str(repeats), "--gather-inner", str(inner)])
        with open(raw) as f:
            return json.load(f)


def print_tables(local: dict, gather: dict, total_syncs: int, args) -> None:
    weights, fit = local["compute_sample_weights_us"], local["scaling_model"]["weights_fit"]
    print(f"\ncompute_sample_weights, us per call, median [IQR] of {args.repeats} repeats, "
          f"1 thread, r={R}\n")
    print("| N | " + " | ".join(weights) + " |\n|---|" + "---|" * len(weights))
    for n in next(iter(weights.values())):
        print(f"| {n} | " + " | ".join(
            f"{w[n]['median']:.1f} [{w[n]['q1']:.1f}, {w[n]['q3']:.1f}]"
            for w in weights.values()) + " |")
    print(f"\nlinupper fit: t = {fit['t0_us']:.1f} us + {fit['c_us_per_sample'] * 1e3:.2f} ns * N")
    print("\nwhole loss function, forward + backward, 1 process, no collectives, us median [IQR]"
          "\n\n| tokens | Megatron-LM loss_func | reweighted_loss_func |\n|---|---|---|")
    for shape, by in local["loss_fn_us"].items():
        print(f"| {shape} | " + " | ".join(f"{by[k]['median']:.1f} [{by[k]['q1']:.1f}, "
                                         f"{by[k]['q3']:.1f}]" for k in ("baseline", "reweighted"))
              + " |")
    print(f"\ngloo, 2 processes, us per call, median [IQR] of {args.gather_repeats} repeats x "
          f"{args.gather_inner} calls (max over ranks)\n\n| collective | us |\n|---|---|")
    for key, s in gather["timings_us"].items():
        print(f"| {key} | {s['median']:.1f} [{s['q1']:.1f}, {s['q3']:.1f}] |")
    print(f"\nhost synchronisations in the reweighting path: {total_syncs} "
          f"({len(local['host_sync_calls'])} paths checked)\n")
    print("MODEL (alpha-beta, see benchmarks/cost/scaling_model.py), per micro-batch, b = 4:")
    scaling_model.print_table(local["scaling_model"]["rows"])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/weights_cost.json")
    parser.add_argument("--png", default="results/weights_cost.png", help="'' to skip the plot")
    parser.add_argument("--repeats", type=int, default=41)
    parser.add_argument("--gather-repeats", type=int, default=60)
    parser.add_argument("--gather-inner", type=int, default=50)
    parser.add_argument("--gather-worker", metavar="OUT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.gather_worker:
        return gather_worker(args.gather_worker, args.gather_repeats, args.gather_inner)

    env = environment()
    print("timing compute_sample_weights ...", flush=True)
    local = measure_local(repeats=args.repeats)
    print("timing the gloo all-gather (torchrun, 2 processes) ...", flush=True)
    gather = run_gather(args.gather_repeats, args.gather_inner)
    syncs = dict(local.pop("host_sync_calls"))
    syncs["reweighted_loss_func/token_sum/dp2 (rank 0)"] = gather["host_sync_calls_rank0"]
    total_syncs = sum(len(v) for v in syncs.values() if v) + gather["host_syncs_dp2"]
    local["host_sync_calls"] = syncs
    print_tables(local, gather, total_syncs, args)
    if total_syncs:
        raise SystemExit(f"FAIL: {total_syncs} host synchronisations: "
                         + json.dumps({k: v for k, v in syncs.items() if v}))

    result = {
        "settings": {"sizes": list(SIZES), "strategies": list(STRATEGIES), "r": R, "delta": 1.0,
                     "repeats": args.repeats, "threads": 1, "target_s_per_repeat": 0.004,
                     "losses": "4 + U(0,1) fp32, torch.Generator seeded with SEED + N",
                     "gather": {"processes": 2, "backend": "gloo", "b": list(GATHER_B),
                                "repeats": args.gather_repeats,
                                "calls_per_repeat": args.gather_inner},
                     "seed": SEED},
        "environment": env,
        "compute_sample_weights_us": local["compute_sample_weights_us"],
        "loss_fn_us": local["loss_fn_us"],
        "gather_us": gather["timings_us"],
        "host_syncs": {"total": total_syncs, "detector": "tests.conftest.HostSyncDetector",
                       "paths": {k: len(v) for k, v in syncs.items()},
                       "dp2_both_ranks": gather["host_syncs_dp2"]},
        "scaling_model": local["scaling_model"],
    }
    result["environment"]["load_average_at_end"] = os.getloadavg()
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    if args.png:
        plot(local["compute_sample_weights_us"], local["scaling_model"]["weights_fit"], args.png)
    print(f"\nwrote {args.out}" + (f" and {args.png}" if args.png else ""))


if __name__ == "__main__":
    main()
