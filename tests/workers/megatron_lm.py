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
  Then today's workloads (``WORKLOADS``): MoE with expert parallelism 2 (allgather and alltoall
  dispatchers) and multi-token prediction, each unpatched, uniform and linupper; the linupper
  runs record every rank's weights and per-sample losses (``weights_check``).
- ``moe4`` (4 processes): MoE EP2 (alltoall) with pipeline parallelism 2 and DP2, unpatched,
  uniform and linupper.
- ``own``: ``--checkout`` holds only a checkout's scripts (pretrain_gpt.py, gpt_builders.py,
  model_provider.py), so the installed megatron-core runs them; ``pretrain_gpt`` imports as the
  project's megatron_rw/megatron_training/pretrain_gpt.py (first on PYTHONPATH). For DP2, TP2 and
  PP2, MoE EP2 and MTP on PP2 the checkout's script unpatched against the project's script
  through the patch with ``uniform``; then the project's script with linupper.
- ``timing`` (benchmarks/cost/megatron_lm_overhead.py): per layout, ``--pairs`` pairs of runs of
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

from megatron_rw.cpu.megatron_lm import CPU_FLAGS, enable_megatron_lm_cpu  # noqa: E402

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

# MoE: 4 experts over expert-parallel size 2, top-2 routing, Megatron's load-balancing aux loss
# (gelu + bias fusion refuses MoE's per-token scale). MTP: one extra prediction depth (needs
# RoPE); no grad clipping, so a parameter's update depends on its own gradient alone.
MOE = ["--num-experts", "4", "--expert-model-parallel-size", "2", "--moe-router-topk", "2",
       "--moe-aux-loss-coeff", "0.01", "--no-bias-gelu-fusion"]
MTP = ["--mtp-num-layers", "1", "--position-embedding-type", "rope", "--clip-grad", "0.0",
       "--train-iters", "3"]
WORKLOADS = {"moe-allgather": MOE + ["--moe-token-dispatcher-type", "allgather"],
             "moe-alltoall": MOE + ["--moe-token-dispatcher-type", "alltoall"],
             "mtp": MTP}
MOE4 = {"moe-pp2": MOE + ["--moe-token-dispatcher-type", "alltoall",
                          "--pipeline-model-parallel-size", "2"]}

RECORD = {"iterations": [], "model": None, "weights": None}
INJECT = {"on": False}


class FirstWrites(dict):
    """A stand-in for ``training_log``'s ``total_loss_dict`` that keeps the first value written
    to each key during one call: with ``--log-interval 1`` that is this iteration's value of
    every metric Megatron accumulates there (the MoE aux losses, the MTP losses), before the
    log line resets it."""

    def __init__(self, *args):
        super().__init__(*args)
        self.first = {}

    def __setitem__(self, key, value):
        if key not in self.first and isinstance(value, torch.Tensor):
            self.first[key] = value.detach().double().flatten().tolist()
        super().__setitem__(key, value)


def _record_training_log(original):
    signature = inspect.signature(original)

    @functools.wraps(original)
    def training_log(*args, **kwargs):
        call = signature.bind(*args, **kwargs)
        bound = call.arguments
        grad_norm = bound.get("grad_norm")
        total = bound.get("total_loss_dict")
        spy = FirstWrites(total or {})
        if total is not None:
            call.arguments["total_loss_dict"] = spy
        result = original(*call.args, **call.kwargs)
        if total is not None:
            total.clear()
            total.update(spy)
        RECORD["iterations"].append({
            "iteration": int(bound["iteration"]),
            "loss": {k: float(v) for k, v in bound["loss_dict"].items()},
            "aux": {k: v for k, v in spy.first.items() if k not in bound["loss_dict"]},
            "grad_norm": None if grad_norm is None else float(grad_norm),
            "time": time.perf_counter()})
        return result

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


def _record_weights(original):
    """``reweighted_loss_func`` that keeps, per call, this rank's per-sample losses (computed
    here from the loss mask and token losses) and the weights the loss used (its telemetry
    sink), while ``RECORD["weights"]`` is a list."""
    from megatron_rw.telemetry import SampleTelemetry

    @functools.wraps(original)
    def reweighted_loss_func(loss_mask, output_tensor, **kwargs):
        if RECORD["weights"] is None or kwargs.get("telemetry") is not None:
            return original(loss_mask, output_tensor, **kwargs)
        kept = {}
        result = original(loss_mask, output_tensor, telemetry=SampleTelemetry(sink=kept.update),
                          **kwargs)
        with torch.no_grad():
            # float32 row sums, as the loss computes them: the reference weights below then
            # start from the same losses (a loss range of 0.03 turns float32 rounding of a
            # loss into a weight difference of 1e-4: 2 / range / r).
            mask = loss_mask.float()
            losses = ((output_tensor.detach().float() * mask).sum(1) / mask.sum(1)).double()
        RECORD["weights"].append({"iteration": kwargs["iteration"], "losses": losses.tolist(),
                                  "weights": kept["weight"].double().tolist()})
        return result

    return reweighted_loss_func


import megatron_rw  # noqa: E402  (the patch imports reweighted_loss_func from it at wrap time)

megatron_rw.reweighted_loss_func = _record_weights(megatron_rw.reweighted_loss_func)
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


def run(checkout, flags, patched, nan=False, weights=False):
    """One ``pretrain``; returns its records and this rank's parameters (None if it stopped).
    With ``weights``, every rank's per-call losses and weights go to rank 0's record, with
    each rank's place in the layout (``outcome["weights"]``)."""
    script = os.path.join(checkout, "pretrain_gpt.py")
    train = [f for f in TRAIN if f != "--mock-data" or "--data-path" not in flags]
    sys.argv = [PATCH if patched else script, *MODEL, *train, *CPU_FLAGS, *flags]
    RECORD.update(iterations=[], model=None, weights=[] if weights else None)
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
        params = [(n, p.detach().clone()) for chunk in RECORD["model"]
                  for n, p in chunk.named_parameters()]
    if weights:
        outcome["weights"] = gathered_weights()
    training.destroy_global_state()
    return outcome, params


def mismatches(a, b, pa, pb):
    """Differing (iteration, lm loss, grad norm) records and differing parameters."""
    def key(r):
        return r["iteration"], r["loss"].get("lm loss"), r["grad_norm"]

    records = sum(key(x) != key(y) for x, y in zip(a["iterations"], b["iterations"]))
    records += abs(len(a["iterations"]) - len(b["iterations"]))
    params = -1 if pa is None or pb is None else sum(
        not torch.equal(x, y) for (_, x), (_, y) in zip(pa, pb)) + abs(len(pa) - len(pb))
    return [records, params]


def differing_params(pa, pb, prefix):
    """[differing, compared]: parameters whose name contains ``prefix``."""
    pairs = [(x, y) for (n, x), (_, y) in zip(pa, pb) if prefix in n]
    return [sum(not torch.equal(x, y) for x, y in pairs), len(pairs)]


def aux_mismatches(a, b):
    """Iterations whose aux losses (MoE, MTP) differ, and how many values were compared."""
    differing = compared = 0
    for x, y in zip(a["iterations"], b["iterations"]):
        differing += x["aux"] != y["aux"]
        compared += sum(len(v) for v in x["aux"].values())
    return [differing, compared]


def gathered_weights():
    """Every rank's weight records with its place in the layout, on rank 0 (None elsewhere)."""
    from megatron.core import parallel_state as ps

    mine = {"rank": dist.get_rank(), "calls": RECORD["weights"],
            "dp_rank": ps.get_data_parallel_rank(with_context_parallel=False),
            "dp_size": ps.get_data_parallel_world_size(with_context_parallel=False),
            "tp_rank": ps.get_tensor_model_parallel_rank(),
            "pp_rank": ps.get_pipeline_model_parallel_rank(),
            "ep_size": ps.get_expert_model_parallel_world_size(),
            "expert_dp_size": ps.get_expert_data_parallel_world_size()}
    every = [None] * dist.get_world_size()
    dist.all_gather_object(every, mine)
    return every if dist.get_rank() == 0 else None


def weights_check(ranks, r=0.4, delta=1.0, warmup=2):
    """Every rank's weights against linupper's weights of the whole global micro-batch.

    The global micro-batch of call ``j`` is the concatenation, in data-parallel rank order, of
    the per-sample losses that the ranks of each DP rank saw in their ``j``-th call (computed
    here from the token losses); its weights are computed here too, in float64, from the
    paper's formulas. Returns the largest difference, the number of weights compared and the
    layout's sizes."""
    import math

    callers = [x for x in ranks if x["calls"]]
    by_dp = {}
    for x in callers:
        by_dp.setdefault(x["dp_rank"], x)
    dp = callers[0]["dp_size"]
    assert sorted(by_dp) == list(range(dp)), sorted(by_dp)
    worst, compared = 0.0, 0
    for j in range(len(callers[0]["calls"])):
        losses = [v for d in range(dp) for v in by_dp[d]["calls"][j]["losses"]]
        iteration = by_dp[0]["calls"][j]["iteration"]
        lo, hi = min(losses), max(losses)
        x = [delta * (2 * v - hi - lo) / max(hi - lo, 1e-6) for v in losses]
        f = [min(v + delta, delta) for v in x]
        if iteration < warmup:
            reference = [1.0] * len(losses)
        else:
            top = max(f)
            e = [math.exp((v - top) / r) for v in f]
            reference = [len(e) * v / sum(e) for v in e]
        for rank in callers:
            call = rank["calls"][j]
            b = len(call["weights"])
            expected = reference[rank["dp_rank"] * b:(rank["dp_rank"] + 1) * b]
            worst = max(worst, max(abs(a - e) for a, e in zip(call["weights"], expected)))
            compared += b
    return {"max_error": worst, "compared": compared, "dp_size": dp,
            "ranks_with_loss": len(callers), "ep_size": callers[0]["ep_size"],
            "expert_dp_size": callers[0]["expert_dp_size"],
            "spread": max(max(c["weights"]) - min(c["weights"]) for x in callers
                          for c in x["calls"])}


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


def phase_kill(checkout, work, strategy=UNIFORM, folder="ckpt"):
    training.save_checkpoint = _kill_after_save(training.save_checkpoint, SAVE_AT)
    run(checkout, [*strategy, "--save", os.path.join(work, folder), "--save-interval",
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
    phase_workloads(checkout, WORKLOADS, result, params)
    keep("nan/patched-skip", [*UNIFORM, "--sample-reweight-skip-nonfinite"], True, nan=True)
    # Megatron's rerun machinery saves a checkpoint before it stops the run: give it a place.
    for name, flags, patched in (("nan/unpatched", [], False), ("nan/patched", UNIFORM, True)):
        keep(name, [*flags, "--save", os.path.join(work, name.replace("/", "-")),
                    "--save-interval", "1000"], patched,
             nan=True)
    return result


def phase_workloads(checkout, workloads, result=None, params=None):
    """For each workload: unpatched, uniform and linupper (recording the weights); the bitwise
    comparisons of uniform with unpatched (records, aux losses), the weights check, and linupper
    against unpatched (aux losses of the first reweighted iteration; MTP's own parameters)."""
    result = {"runs": {}, "compare": {}} if result is None else result
    params = {} if params is None else params
    for name, flags in workloads.items():
        for variant, extra, patched in (("unpatched", [], False), ("uniform", UNIFORM, True),
                                        ("linupper", LINUPPER, True)):
            outcome, p = run(checkout, flags + extra, patched, weights=variant == "linupper")
            result["runs"][f"{name}/{variant}"] = outcome
            params[f"{name}/{variant}"] = p
        runs = {v: result["runs"][f"{name}/{v}"] for v in ("unpatched", "uniform", "linupper")}
        ps_ = {v: params[f"{name}/{v}"] for v in runs}
        compare = result["compare"]
        compare[f"{name}: uniform vs unpatched"] = summed(mismatches(
            runs["uniform"], runs["unpatched"], ps_["uniform"], ps_["unpatched"]))
        compare[f"{name}: uniform vs unpatched aux"] = summed(aux_mismatches(
            runs["uniform"], runs["unpatched"]))
        # The first reweighted iteration (after the 2 burn-in steps) starts from the unpatched
        # run's parameters: its aux losses must be the unpatched ones.
        third = [dict(r, iterations=r["iterations"][2:3]) for r in (runs["linupper"],
                                                                    runs["unpatched"])]
        compare[f"{name}: linupper vs unpatched aux, iteration 3"] = summed(
            aux_mismatches(*third))
        compare[f"{name}: linupper vs unpatched"] = summed(mismatches(
            runs["linupper"], runs["unpatched"], ps_["linupper"], ps_["unpatched"]))
        if name == "mtp" and ps_["linupper"] is not None and ps_["unpatched"] is not None:
            compare["mtp: linupper vs unpatched mtp parameters"] = summed(differing_params(
                ps_["linupper"], ps_["unpatched"], "mtp."))
            compare["mtp: linupper vs unpatched decoder parameters"] = summed(differing_params(
                ps_["linupper"], ps_["unpatched"], "decoder."))
        if dist.get_rank() == 0 and runs["linupper"].get("weights"):
            compare[f"{name}: linupper weights"] = weights_check(runs["linupper"]["weights"])
        runs["linupper"].pop("weights", None)
    return result


# The project's script against Megatron-LM's: the dense layouts, MoE EP2 and MTP on PP2 (its
# embedding ranks include the MTP stage).
OWN_LAYOUTS = {**LAYOUTS, "ep2": WORKLOADS["moe-alltoall"],
               "pp2-mtp": MTP[:4] + LAYOUTS["pp2"]}


def phase_own(checkout, work):
    """Megatron-LM's own script and the project's, on the same installed megatron-core; then
    Megatron's checkpoints across the two (the ``own-kill`` phase left a linupper checkpoint
    at iteration SAVE_AT, SIGKILLed right after it)."""
    result = {"runs": {}, "compare": {}}
    params = {}
    compare = result["compare"]
    save = ["--save-interval", str(SAVE_AT)]
    for layout, layout_flags in OWN_LAYOUTS.items():
        for name, flags, patched in (("unpatched", [], False), ("uniform", UNIFORM, True)):
            if layout == "dp2" and name == "unpatched":  # a uniform checkpoint to continue from
                flags = ["--save", os.path.join(work, "ckpt-unpatched"), *save]
            outcome, p = run(checkout, layout_flags + flags, patched)
            result["runs"][f"{layout}/{name}"], params[f"{layout}/{name}"] = outcome, p
        compare[f"{layout}: own uniform vs checkout"] = summed(mismatches(
            result["runs"][f"{layout}/uniform"], result["runs"][f"{layout}/unpatched"],
            params[f"{layout}/uniform"], params[f"{layout}/unpatched"]))
    runs = result["runs"]
    runs["dp2/linupper"], params["dp2/linupper"] = run(checkout, LINUPPER, True)
    killed = os.path.join(work, "ckpt-linupper")
    # SIGKILL after the save, then --load (the same flags, save included): iterations 4-6 and
    # the final parameters are the uninterrupted run's.
    runs["dp2/linupper-resumed"], params["dp2/linupper-resumed"] = run(
        checkout, [*LINUPPER, "--load", killed, "--save", os.path.join(work, "ckpt-resumed"),
                   *save], True)
    tail = dict(runs["dp2/linupper"], iterations=runs["dp2/linupper"]["iterations"][SAVE_AT:])
    compare["dp2: linupper resumed vs uninterrupted"] = summed(mismatches(
        runs["dp2/linupper-resumed"], tail, params["dp2/linupper-resumed"],
        params["dp2/linupper"]))
    # Megatron-LM's own script continues the reweighted checkpoint, and the reweighted run an
    # unpatched (uniform) one. The first step after the load sees the parameters and data of
    # the run that saved, so its (unweighted) lm loss is that run's iteration 4 lm loss.
    runs["dp2/unpatched-from-linupper"], _ = run(checkout, ["--load", killed], False)
    runs["dp2/linupper-from-unpatched"], _ = run(
        checkout, [*LINUPPER, "--load", os.path.join(work, "ckpt-unpatched"), "--ckpt-step",
                   str(SAVE_AT)], True)  # it saved at 3 and at the end
    import pretrain_gpt

    result["script"] = pretrain_gpt.__file__
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
    parser.add_argument("--phase", choices=("kill", "main", "workloads", "moe4", "own-kill",
                                            "own", "timing"),
                        required=True)
    parser.add_argument("--layouts", default=",".join(LAYOUTS))
    parser.add_argument("--pairs", type=int, default=4, help="timing: pairs of runs per layout")
    parser.add_argument("--iters", type=int, default=15, help="timing: iterations per run")
    a = parser.parse_args()
    if a.phase == "kill":
        phase_kill(a.checkout, a.work)
    if a.phase == "own-kill":
        phase_kill(a.checkout, a.work, LINUPPER, "ckpt-linupper")
    if a.phase == "timing":
        result = phase_timing(a.checkout, a.layouts.split(","), a.pairs, a.iters)
    elif a.phase == "own":
        result = phase_own(a.checkout, a.work)
    elif a.phase in ("workloads", "moe4"):  # workloads: the part of main, alone (debugging)
        result = phase_workloads(a.checkout, MOE4 if a.phase == "moe4" else WORKLOADS)
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
