"""Worker for tests/test_megatron_lm.py: an unmodified Megatron-LM checkout on CPU/gloo.

    torchrun --nproc-per-node 2 tests/workers/megatron_lm.py --checkout DIR --work DIR --phase P

The checkout (first on PYTHONPATH) brings its own ``megatron.core`` and ``megatron.training``.
Several ``pretrain`` runs share one launch (Megatron-LM's start-up costs ~15 s of imports on 2
cores); ``destroy_global_state()``, Megatron-LM's own, separates them. Each run records, per
iteration, the ``loss_dict`` and grad norm handed to ``training_log`` and, at the end, every
parameter of this rank.

Phases:
- ``kill``: the patched uniform DP2 run, SIGKILLed right after its checkpoint at iteration
  ``SAVE_AT`` (every rank, after a barrier, so the checkpoint is complete and nothing else is);
- ``main``: for DP2, TP2 and PP2 the unpatched ``pretrain_gpt.py`` and the patch with
  ``uniform``; ``--load`` of the killed run's checkpoint; linupper with TensorBoard; documents
  as units with a target ESS and a preview (DP2, TP2); per-domain shares on a two-prefix blend
  of random-token documents (``easy``: tokens 0-49, ``hard``: 0-399; DP2, TP2); NaN written
  into one sample's token losses at iteration ``NAN_AT``: patched with
  ``--sample-reweight-skip-nonfinite``, then unpatched and patched without it (these stop).
- ``timing`` (benchmarks/megatron_lm_overhead.py): per layout, ``--pairs`` pairs of runs of
  ``--iters`` iterations, the unpatched ``pretrain_gpt.py`` and the patch with linupper (r = 0.4,
  no burn-in), alternating A B / B A; each run's median time per iteration.
Writes ``WORK/<phase>.json`` (rank 0): per run the records and the bitwise comparisons, the
mismatches summed over ranks; for ``timing`` the per-run medians.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import inspect
import json
import os
import runpy
import signal
import sys
import time
import traceback
import warnings

warnings.filterwarnings("ignore")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PATCH = os.path.join(REPO, "patches", "megatron_lm", "pretrain_gpt_rw.py")

from megatron_rw.megatron_lm_cpu import CPU_FLAGS, enable_megatron_lm_cpu  # noqa: E402

enable_megatron_lm_cpu()

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from megatron.core.models.common.language_module.language_module import (  # noqa: E402
    LanguageModule)
from megatron.training import get_args, training  # noqa: E402

ITERS, SAVE_AT, NAN_AT = 6, 3, 3  # NAN_AT > 1: Megatron validates from the second step on
MODEL = ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4",
         "--seq-length", "64", "--max-position-embeddings", "64",
         "--hidden-dropout", "0.1", "--attention-dropout", "0.1"]
TRAIN = ["--micro-batch-size", "2", "--global-batch-size", "8", "--train-iters", str(ITERS),
         "--lr", "1e-3", "--lr-warmup-iters", "1", "--log-interval", "1", "--seed", "1234",
         "--eval-iters", "0", "--eval-interval", "1000",
         "--mock-data", "--tokenizer-type", "NullTokenizer", "--vocab-size", "500"]
LAYOUTS = {"dp2": [], "tp2": ["--tensor-model-parallel-size", "2"],
           "pp2": ["--pipeline-model-parallel-size", "2"]}
UNIFORM = ["--sample-reweight-strategy", "uniform"]
LINUPPER = ["--sample-reweight-strategy", "linupper", "--sample-reweight-r", "0.4",
            "--sample-reweight-warmup-iters", "2"]

# Documents as units (slots from the data iterator's labels, broadcast over TP), r chosen for
# ESS 0.7, and a preview of quadratic.
DOCUMENTS = [*LINUPPER, "--sample-reweight-unit", "document", "--sample-reweight-max-documents",
             "4", "--sample-reweight-target-ess", "0.7", "--sample-reweight-preview", "quadratic"]

# Per-domain shares (rw_domains.py): linupper and a preview of quadratic on a blend of two
# prefixes, written by write_blend.
DOMAINS = [*LINUPPER, "--sample-reweight-preview", "quadratic"]
BLEND = {"easy": 50, "hard": 400}  # domain -> token ids drawn from range(n); vocabulary 500

RECORD = {"iterations": [], "model": None}
INJECT = {"on": False}


def _record_training_log(original):
    signature = inspect.signature(original)

    @functools.wraps(original)
    def training_log(*args, **kwargs):
        bound = signature.bind(*args, **kwargs).arguments
        grad_norm = bound.get("grad_norm")
        RECORD["iterations"].append({
            "iteration": int(bound["iteration"]),
            "loss": {k: float(v) for k, v in bound["loss_dict"].items()},
            "grad_norm": None if grad_norm is None else float(grad_norm),
            "time": time.perf_counter()})
        return original(*args, **kwargs)

    return training_log


def _keep_model(original):
    @functools.wraps(original)
    def setup_model_and_optimizer(*args, **kwargs):
        result = original(*args, **kwargs)
        RECORD["model"] = result[0]
        return result

    return setup_model_and_optimizer


def _inject_nan(original):
    @functools.wraps(original)
    def compute_language_model_loss(self, labels, logits):
        loss = original(self, labels, logits)
        from megatron.core import parallel_state as ps

        if (INJECT["on"] and get_args().curr_iteration == NAN_AT - 1
                and ps.get_data_parallel_rank(with_context_parallel=False) == 0):
            row = torch.zeros_like(loss, dtype=torch.bool)
            row[0] = True  # [b, s]: the first sample of every micro-batch of this rank
            loss = torch.where(row, torch.full_like(loss, float("nan")), loss)
        return loss

    return compute_language_model_loss


training.training_log = _record_training_log(training.training_log)
training.setup_model_and_optimizer = _keep_model(training.setup_model_and_optimizer)
LanguageModule.compute_language_model_loss = _inject_nan(
    LanguageModule.compute_language_model_loss)


def _kill_after_save(original, at):
    @functools.wraps(original)
    def save_checkpoint(iteration, *args, **kwargs):
        result = original(iteration, *args, **kwargs)
        if iteration == at:
            dist.barrier()
            print(f"rank {dist.get_rank()}: SIGKILL after the checkpoint of iteration {iteration}",
                  flush=True)
            # The whole rank dies, as with a lost node: the checkpoint writer's helper processes
            # first (orphaned, they would keep the launcher's stdout open), then the rank.
            import psutil

            for child in psutil.Process().children(recursive=True):
                child.kill()
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    return save_checkpoint


def _load_patch():
    spec = importlib.util.spec_from_file_location("pretrain_gpt_rw", PATCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(checkout, flags, patched, nan=False):
    """One ``pretrain``; returns its records and this rank's parameters (None if it stopped)."""
    script = os.path.join(checkout, "pretrain_gpt.py")
    train = [f for f in TRAIN if f != "--mock-data" or "--data-path" not in flags]
    sys.argv = [PATCH if patched else script, *MODEL, *train, *CPU_FLAGS, *flags]
    RECORD.update(iterations=[], model=None)
    INJECT["on"] = nan
    outcome = {"stopped": None}
    started = time.perf_counter()
    try:
        if patched:
            _load_patch().main()
        else:
            runpy.run_path(script, run_name="__main__")
    except (SystemExit, Exception) as e:  # noqa: BLE001  (what stopped the run is the result)
        outcome["stopped"] = f"{type(e).__name__}: {e}"[:500]
        if not isinstance(e, SystemExit):
            traceback.print_exc()
    outcome["seconds"] = time.perf_counter() - started
    outcome["iterations"] = RECORD["iterations"]
    params = None
    if RECORD["model"] is not None and outcome["stopped"] is None:
        params = [p.detach().clone() for chunk in RECORD["model"] for p in chunk.parameters()]
    training.destroy_global_state()
    return outcome, params


def mismatches(a, b, pa, pb):
    """Differing (iteration, lm loss, grad norm) records and differing parameters."""
    def key(r):
        return r["iteration"], r["loss"].get("lm loss"), r["grad_norm"]

    records = sum(key(x) != key(y) for x, y in zip(a["iterations"], b["iterations"]))
    records += abs(len(a["iterations"]) - len(b["iterations"]))
    params = -1 if pa is None or pb is None else sum(
        not torch.equal(x, y) for x, y in zip(pa, pb)) + abs(len(pa) - len(pb))
    return [records, params]


def summed(counts):
    t = torch.tensor(counts, dtype=torch.int64)
    dist.all_reduce(t)
    return t.tolist()


def write_blend(work):
    """``--data-path`` flags of a blend of BLEND's domains, equal weights: 200 documents each of
    20-119 uniformly random tokens (the same files on every rank; rank 0 writes them)."""
    import numpy
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    folder = os.path.join(work, "blend")
    flags = ["--data-path"]
    for k, (name, tokens) in enumerate(BLEND.items()):
        prefix = os.path.join(folder, f"{name}_text_document")
        flags += ["0.5", prefix]
        if dist.get_rank() == 0:
            os.makedirs(folder, exist_ok=True)
            g = numpy.random.default_rng(k)
            builder = IndexedDatasetBuilder(prefix + ".bin", dtype=numpy.int32)
            for _ in range(200):
                doc = g.integers(0, tokens, int(g.integers(20, 120)), dtype=numpy.int32)
                builder.add_item(torch.from_numpy(doc))
                builder.end_document()
            builder.finalize(prefix + ".idx")
    dist.barrier()
    return [*flags, "--split", "100,0,0"]


def phase_kill(checkout, work):
    training.save_checkpoint = _kill_after_save(training.save_checkpoint, SAVE_AT)
    run(checkout, [*UNIFORM, "--save", os.path.join(work, "ckpt"), "--save-interval",
                   str(SAVE_AT)], patched=True)
    raise SystemExit("the run was not killed after its checkpoint")


def phase_main(checkout, work, layouts):
    result = {"runs": {}, "compare": {}}
    params = {}

    def keep(name, flags, patched, nan=False):
        outcome, p = run(checkout, flags, patched, nan)
        result["runs"][name] = outcome
        params[name] = p

    for layout in layouts:
        keep(f"{layout}/unpatched", LAYOUTS[layout], False)
        keep(f"{layout}/uniform", LAYOUTS[layout] + UNIFORM, True)
        result["compare"][f"{layout}: uniform vs unpatched"] = summed(mismatches(
            result["runs"][f"{layout}/uniform"], result["runs"][f"{layout}/unpatched"],
            params[f"{layout}/uniform"], params[f"{layout}/unpatched"]))
    # Resume: the killed run's checkpoint, then the remaining steps; the same flags (save
    # included: saving does not change the numerics) as the uninterrupted dp2/uniform run.
    ckpt = os.path.join(work, "ckpt")
    keep("dp2/resumed", [*UNIFORM, "--load", ckpt, "--save", os.path.join(work, "ckpt2"),
                         "--save-interval", str(SAVE_AT)], True)
    full = dict(result["runs"]["dp2/uniform"])
    full["iterations"] = [r for r in full["iterations"] if r["iteration"] > SAVE_AT]
    result["compare"]["dp2: resumed vs uninterrupted"] = summed(mismatches(
        result["runs"]["dp2/resumed"], full, params["dp2/resumed"], params["dp2/uniform"]))
    keep("dp2/linupper", [*LINUPPER, "--tensorboard-dir", os.path.join(work, "tensorboard")],
         True)
    result["compare"]["dp2: linupper vs unpatched"] = summed(mismatches(
        result["runs"]["dp2/linupper"], result["runs"]["dp2/unpatched"],
        params["dp2/linupper"], params["dp2/unpatched"]))
    for layout in ("dp2", "tp2"):
        keep(f"{layout}/documents", LAYOUTS[layout] + DOCUMENTS, True)
    blend = write_blend(work)  # after the first runs: Megatron-LM has initialised the group
    for layout in ("dp2", "tp2"):
        keep(f"{layout}/domains", LAYOUTS[layout] + DOMAINS + blend, True)
    keep("nan/patched-skip", [*UNIFORM, "--sample-reweight-skip-nonfinite"], True, nan=True)
    # Megatron's rerun machinery saves a checkpoint before it stops the run: give it a place.
    for name, flags, patched in (("nan/unpatched", [], False), ("nan/patched", UNIFORM, True)):
        keep(name, [*flags, "--save", os.path.join(work, name.replace("/", "-")),
                    "--save-interval", "1000"], patched,
             nan=True)
    return result


def median_step_s(outcome, skip: int = 2) -> float:
    """Median wall time between consecutive ``training_log`` calls, the first ``skip`` left out
    (warm-up). The slower rank's value counts, as for a step."""
    times = [r["time"] for r in outcome["iterations"]][skip:]
    steps = sorted(b - a for a, b in zip(times, times[1:]))
    t = torch.tensor([steps[len(steps) // 2]], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t)


def phase_timing(checkout, layouts, pairs: int, iters: int):
    reweighted = ["--sample-reweight-strategy", "linupper", "--sample-reweight-r", "0.4",
                  "--sample-reweight-warmup-iters", "0"]
    longer = ["--train-iters", str(iters)]  # Megatron's parser keeps the last value
    result = {}
    for layout in layouts:
        samples = {"unpatched": [], "patched": []}
        for pair in range(pairs):
            order = ("unpatched", "patched") if pair % 2 == 0 else ("patched", "unpatched")
            for variant in order:
                patched = variant == "patched"
                flags = LAYOUTS[layout] + longer + (reweighted if patched else [])
                outcome, _ = run(checkout, flags, patched)
                if outcome["stopped"]:
                    raise SystemExit(f"{layout}/{variant} stopped: {outcome['stopped']}")
                samples[variant].append(median_step_s(outcome))
        result[layout] = samples
    return result


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkout", required=True)
    parser.add_argument("--work", required=True)
    parser.add_argument("--phase", choices=("kill", "main", "timing"), required=True)
    parser.add_argument("--layouts", default=",".join(LAYOUTS))
    parser.add_argument("--pairs", type=int, default=4, help="timing: pairs of runs per layout")
    parser.add_argument("--iters", type=int, default=15, help="timing: iterations per run")
    a = parser.parse_args()
    if a.phase == "kill":
        phase_kill(a.checkout, a.work)
    if a.phase == "timing":
        result = phase_timing(a.checkout, a.layouts.split(","), a.pairs, a.iters)
    else:
        result = phase_main(a.checkout, a.work, a.layouts.split(","))
    if dist.get_rank() == 0:
        with open(os.path.join(a.work, f"{a.phase}.json"), "w") as f:
            json.dump(result, f, indent=1)
    dist.barrier()
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
