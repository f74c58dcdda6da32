"""One-shot GPU check of megatron-rw: GPU tests, the hook's cost at GPT-2-small scale, and a short
uniform-vs-linupper run on real text. Writes results/gpu_check.json and results/gpu_check_loss.png.

    python -m benchmarks.gpu.gpu_check [--budget-s 390] [--corpus data/small] [--log-dir DIR]
                                   [--phases tests overhead quality]

Made to run in one call on a lent GPU machine (docs/gpu_check.md: what to carry, the exact call).
Phases run in order, each in its own process group with a time limit cut from --budget-s:

1. ``tests``: ``pytest -m gpu`` on tests/test_gpu.py, tests/test_gpu_pretrain.py and
   tests/test_packed.py (packed micro-batches on CUDA: no host sync, equal to unpacked);
2. ``overhead``: benchmarks/gpu/gpu_overhead.py, a 124M GPT in bf16 at sequence 1024, steps
   alternating Megatron-LM's loss and linupper; per-pair step-time ratios, median and IQR
   (benchmarks/cost/overhead.py's ``analyse``);
3. ``quality``: examples/pretrain_gpt_rw.sh with examples/configs/gpt_125m.sh, shortened to fit
   (QUALITY_FLAGS), once with ``uniform`` and once with ``linupper``, same seed and data.

The results file is rewritten after every phase, so a check cut short keeps what finished.

Exit status: 0 every selected phase passed; 1 a phase failed or was left out for lack of time
(the results file says which and why); 2 bad arguments; 3 no CUDA device (nothing is run or
written).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from importlib import metadata

from benchmarks.gpu import gpu_check_report as R

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NO_CUDA = 3
GPU_TESTS = ["tests/test_gpu.py", "tests/test_gpu_pretrain.py", "tests/test_packed.py"]
# Seconds each phase may take at most, and the least worth starting with.
PHASE_LIMITS = {"tests": (200, 60), "overhead": (120, 45), "quality": (240, 90)}
RESERVE_S = 10  # kept back for the plot and the last write

# The quality run: GPT-2-small shape (gpt_125m.sh) on the small corpus's 4096-token vocabulary,
# 200 steps of 16 x 1024 tokens (3.3 M tokens, under one epoch of its 3.9 M), burn-in 40 steps
# then linupper at r = 0.4 (the paper's setting for linupper). One seed: a smoke test of
# training on a GPU, not a quality claim (docs/results.md has the 3-seed CPU sweep).
QUALITY_WARMUP = 40
QUALITY_FLAGS = ["--train-iters", "200", "--micro-batch-size", "8", "--global-batch-size", "16",
                 "--lr-warmup-iters", "20", "--log-interval", "5", "--eval-interval", "50",
                 "--eval-iters", "4", "--save-interval", "200", "--log-timers-to-tensorboard",
                 "--sample-reweight-r", "0.4",
                 "--sample-reweight-warmup-iters", str(QUALITY_WARMUP)]
VARIANTS = ("uniform", "linupper")

TRANSFORMER_ENGINE_ABSENT = (
    "not available: the device image has no Transformer Engine, and it cannot be carried within "
    "the 64 MiB a call may take (transformer-engine-cu13 2.20.2's x86_64 wheel alone is 263.7 MiB, "
    "and transformer-engine-torch 2.20.2 is a source package to compile against the device's "
    "torch). Every GPU figure here uses megatron-core's local layers (PyTorch attention, no fused "
    "kernels).")


def find_cuda_device() -> tuple:
    """``(name of CUDA device 0, None)``, or ``(None, why there is none)``."""
    try:
        import torch
    except ImportError as e:
        return None, f"torch is not importable ({e})"
    if not torch.cuda.is_available():
        return None, "no CUDA device found (torch.cuda.is_available() is False)"
    return torch.cuda.get_device_name(0), None


def software() -> dict:
    """Versions that decide what ran (no CUDA needed)."""
    versions = {}
    for name in ("torch", "megatron-core", "numpy", "sentencepiece", "transformer-engine"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    try:
        import transformer_engine  # noqa: F401
        te = {"available": True, "version": versions["transformer-engine"]}
    except ImportError:
        te = {"available": False, "why": TRANSFORMER_ENGINE_ABSENT}
    return {"python": platform.python_version(), "packages": versions, "transformer_engine": te,
            "git_commit": _output(["git", "rev-parse", "HEAD"]) or None,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def gpu() -> dict:
    """The device, as torch and nvidia-smi describe it."""
    import torch

    props = torch.cuda.get_device_properties(0)
    return {"name": props.name, "capability": f"{props.major}.{props.minor}",
            "memory_gib": round(props.total_memory / 2**30, 1),
            "multiprocessors": props.multi_processor_count, "torch_cuda": torch.version.cuda,
            "nvidia_smi": _output(["nvidia-smi", "--format=csv,noheader",
                                   "--query-gpu=name,driver_version,memory.total,clocks.max.sm"])}


def _output(cmd: list) -> str:
    """A command's stripped output, or a note of why there is none (a copy without .git, say)."""
    try:
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        return f"unavailable: {e}"
    return proc.stdout.strip() if proc.returncode == 0 else ""


def config_flags(path: str, arrays=("MODEL_ARGS", "TRAIN_ARGS")) -> list:
    """Flags of a launcher config (examples/configs/*.sh), expanded by bash as the launcher does."""
    words = " ".join(f'"${{{a}[@]}}"' for a in arrays)
    script = f'source "{path}" && printf "%s\\n" {words}'
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True,
                          check=True).stdout.splitlines()


# ------------------------------------------------------------------------------ running phases
def _descendants(pid: int) -> list:
    """Every process below ``pid``. torchrun starts its workers in sessions of their own, so
    killing a process group would leave them running (and holding the GPU)."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    found, frontier = [], [pid]
    while frontier:
        kids = [p for p, ppid in parents.items() if ppid in frontier]
        found += kids
        frontier = kids
    return found


def run_logged(cmd: list, log_path: str, timeout: float, env: dict = None) -> dict:
    """Run ``cmd`` in REPO with its output in ``log_path``; kill its whole tree at ``timeout``.

    Returns:
        ``{"rc", "seconds", "timed_out", "log_tail"}`` (rc None when killed).
    """
    full_env = dict(os.environ, **(env or {}))
    full_env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p)
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            rc, timed_out = proc.wait(timeout=max(timeout, 1)), False
        except subprocess.TimeoutExpired:
            for pid in _descendants(proc.pid) + [proc.pid]:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            proc.wait()
            rc, timed_out = None, True
    with open(log_path, errors="replace") as f:
        tail = f.read()[-R.MESSAGE_CHARS:]
    return {"rc": rc, "seconds": round(time.perf_counter() - t0, 1), "timed_out": timed_out,
            "log_tail": tail}


def phase_tests(work: str, log_dir: str, timeout: float) -> dict:
    xml = os.path.join(work, "gpu_tests.xml")
    run = run_logged([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
                      "-W", "ignore::UserWarning", f"--junitxml={xml}", *GPU_TESTS],
                     os.path.join(log_dir, "tests.log"), timeout)
    out = {"command": f"pytest -m gpu {' '.join(GPU_TESTS)}", **run}
    if os.path.exists(xml):
        out.update(R.parse_junit(xml))
    ok = run["rc"] == 0 and out.get("passed", 0) > 0 and out.get("skipped", 0) == 0
    return {"status": "passed" if ok else "failed", **out}


def phase_overhead(work: str, log_dir: str, timeout: float, extra: list = ()) -> dict:
    from benchmarks.cost.overhead import analyse

    raw = os.path.join(work, "gpu_overhead.json")
    run = run_logged([sys.executable, "-m", "benchmarks.gpu.gpu_overhead", "--out", raw, *extra],
                     os.path.join(log_dir, "overhead.log"), timeout)
    if run["rc"] != 0 or not os.path.exists(raw):
        return {"status": "failed", **run}
    measured = R.read_json(raw)
    result = analyse(measured)
    base = result["baseline_step_ms"]["median"]
    return {"status": "passed", "seconds": run["seconds"],
            "settings": {k: v for k, v in measured.items() if k != "samples_s"},
            "baseline": "Megatron-LM pretrain_gpt loss_func contract (tests._layouts.gpt_loss_func)",
            "reweighted": "reweighted_loss_func, linupper, r = 0.4, past the burn-in",
            "results": result,
            "baseline_tokens_per_s": measured["tokens_per_step"] / (base / 1e3),
            "raw_seconds": measured["samples_s"]}


def phase_quality(work: str, log_dir: str, timeout: float, corpus: str,
                  config: str = "examples/configs/gpt_125m.sh", flags: list = QUALITY_FLAGS,
                  warmup_iters: int = QUALITY_WARMUP) -> dict:
    from megatron_rw.megatron_training.run_log import read_run
    from tests.workers.launch import free_port

    out = {"config": config, "flags": list(flags), "corpus": corpus, "runs": {}, "curves": {}}
    if not os.path.isfile(os.path.join(corpus, "manifest.json")):
        return {"status": "failed", **out, "why": f"no prepared corpus in {corpus}: prepare it "
                "with `python -m megatron_rw.data.prepare --profile small --out data/small` and "
                "carry it (docs/gpu_check.md)"}
    deadline = time.monotonic() + timeout
    for i, name in enumerate(VARIANTS):
        run_dir = os.path.join(work, "quality", name)
        env = {"CONFIG": os.path.join(REPO, config), "DATA": os.path.abspath(corpus),
               "OUT": run_dir, "GPUS_PER_NODE": "1", "MASTER_PORT": str(free_port()),
               "PYTHON": sys.executable}
        left = (deadline - time.monotonic()) / (len(VARIANTS) - i)  # an equal share of what is left
        run = run_logged(["bash", "examples/pretrain_gpt_rw.sh", *flags,
                          "--sample-reweight-strategy", name],
                         os.path.join(log_dir, f"quality_{name}.log"), left, env)
        out["runs"][name] = {k: v for k, v in run.items() if k != "log_tail" or run["rc"] != 0}
        try:
            scalars = read_run(os.path.join(run_dir, "tensorboard"))[0] if run["rc"] == 0 else None
        except FileNotFoundError as e:
            out["runs"][name]["why"], scalars = str(e), None
        if not scalars:
            return {"status": "failed", **out}
        out["curves"][name] = R.curves(scalars)
    out["summary"] = R.summarise_quality(out["curves"], warmup_iters)
    return {"status": "passed", **out}


# ------------------------------------------------------------------------------ the check
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu.gpu_check",
                                description=__doc__.splitlines()[0])
    p.add_argument("--out-dir", default="results", help="default: %(default)s")
    p.add_argument("--budget-s", type=float, default=390,
                   help="wall-clock seconds for all phases together (default: %(default)s)")
    p.add_argument("--corpus", default="data/small",
                   help="prepared corpus for the quality phase (default: %(default)s)")
    p.add_argument("--log-dir", default=None, help="keep each phase's log here (default: a temp dir)")
    p.add_argument("--phases", nargs="+", choices=list(PHASE_LIMITS), default=list(PHASE_LIMITS))
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    device, why = find_cuda_device()
    if device is None:
        print(f"gpu_check: {why}; nothing was run or written. Run it on a machine with an NVIDIA "
              "GPU: docs/gpu_check.md.", file=sys.stderr)
        return NO_CUDA
    start = time.monotonic()
    work = tempfile.mkdtemp(prefix="gpu_check_")
    log_dir = args.log_dir or work
    os.makedirs(log_dir, exist_ok=True)
    json_path = os.path.join(args.out_dir, "gpu_check.json")
    png_path = os.path.join(args.out_dir, "gpu_check_loss.png")
    results = {"device": gpu(), "software": software(), "budget_s": args.budget_s, "phases": {}}
    print(f"gpu_check: {device}; phases {' '.join(args.phases)}; budget {args.budget_s:.0f} s",
          flush=True)
    for name in args.phases:
        limit, minimum = PHASE_LIMITS[name]
        timeout = min(limit, args.budget_s - (time.monotonic() - start) - RESERVE_S)
        if timeout < minimum:
            results["phases"][name] = {"status": "skipped",
                                       "why": f"{timeout:.0f} s left of the budget, {minimum} s needed"}
        elif name == "tests":
            results["phases"][name] = phase_tests(work, log_dir, timeout)
        elif name == "overhead":
            results["phases"][name] = phase_overhead(work, log_dir, timeout)
        else:
            results["phases"][name] = phase_quality(work, log_dir, timeout, args.corpus)
        print(f"gpu_check: {name}: {R.phase_line(results['phases'][name])}", flush=True)
        results["status"] = R.overall_status(results["phases"])
        results["wall_s"] = round(time.monotonic() - start, 1)
        R.write_results(json_path, results)
    quality = results["phases"].get("quality", {})
    if quality.get("status") == "passed":
        results["plot"] = R.plot_losses(
            quality["curves"], png_path, f"{device}: GPT-2-small shape, bf16, small corpus, "
            f"uniform vs linupper (r=0.4 after {QUALITY_WARMUP} steps), one seed", QUALITY_WARMUP)
    results["status"] = R.overall_status(results["phases"])
    results["wall_s"] = round(time.monotonic() - start, 1)
    R.write_results(json_path, results)
    print(f"gpu_check: {results['status']} in {results['wall_s']:.0f} s; wrote {json_path}", flush=True)
    return 0 if results["status"] == "passed" else 1


if __name__ == "__main__":
    sys.exit(main())
