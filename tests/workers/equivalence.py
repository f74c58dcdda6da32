"""Worker for the layout-equivalence and uniform-bitwise tests (started by torchrun, gloo, CPU).

    torchrun --nproc-per-node N tests/workers/equivalence.py --out OUT.json \
        --layouts 1 dp2 ... [--bitwise 1 dp2 ...] [--contracts token_sum per_token mean]

For every layout x contract it trains the tiny GPT of tests/_layouts.py (layout-invariant weights
and data) for STEPS optimizer steps of MICRO global micro-batches through megatron-core's real
``get_forward_backward_func``, DDP and ``get_megatron_optimizer``, with the loss of
``reweighted_loss_func`` (linupper, r = 0.4, no burn-in), and records per step: unweighted and
weighted lm loss, weight ESS and grad norm (identical on all ranks). Contracts:

- ``token_sum``: 3-tuple, schedule divides by local tokens and micro-batches;
- ``per_token``: 3-tuple with ``calculate_per_token_loss`` (global token normalisation);
- ``mean``: the legacy 2-tuple.

For the ``--bitwise`` layouts it checks that ``uniform`` reproduces Megatron-LM's own loss_func bit for
bit: the same losses, every ``main_grad`` after each backward and every parameter after each step.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import warnings
from functools import partial

warnings.filterwarnings("ignore")  # Megatron warns about missing TE/Apex on every import

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)
from megatron_rw.cpu.runtime import backend, enable_cpu_runtime  # noqa: E402

enable_cpu_runtime()

from megatron.core import parallel_state as ps  # noqa: E402
from megatron.core.pipeline_parallel import get_forward_backward_func  # noqa: E402

from megatron_rw import ReweightConfig, reweighted_loss_func  # noqa: E402
from megatron_rw.units import document_units  # noqa: E402
from tests import _layouts as L  # noqa: E402

STEPS, MICRO, ROWS = 3, 2, 4
REPORT_KEYS = {"loss": "lm loss", "weighted": "weighted lm loss", "ess": "sample weight ess"}
LINUPPER = ReweightConfig(strategy="linupper", r=0.4, warmup_iters=0)
# The "documents" variant: every document of a row is a unit and r is chosen for ESS 0.6, so the
# check covers the per-document sums over CP, the fixed-size gather over DP and the r search.
DOCUMENTS = ReweightConfig(strategy="linupper", warmup_iters=0, unit="document", max_documents=4,
                           target_ess=0.6)
# The "reduce" variant: linupper's weights from all-reduced scalars instead of gathered losses.
REDUCE = dataclasses.replace(LINUPPER, collective="reduce")


def with_documents(batch: dict) -> dict:
    """Adds document slots of the whole rows (before any slicing, as a trainer must): a label
    divisible by 8 ends a document, so rows of 32 tokens hold ~4 documents and some overflow."""
    batch["units"] = document_units(batch["labels"] % 8, 0, DOCUMENTS.max_documents)
    return batch


def micro_batch(step: int, micro: int, uneven: bool) -> dict:
    """Global micro-batch; with ``uneven`` the rows have different token counts and, on odd
    micro-batches, row 2 is an all-masked padding sample (only exact under per-token loss)."""
    if uneven:
        return L.uneven_global_micro_batch(step, micro, ROWS)
    return with_documents(L.global_micro_batch(step, micro, ROWS))


def forward_step(loss_fn, uneven, step, data_iterator, model):
    batch = next(data_iterator)
    output = model(batch["tokens"], batch["position_ids"], None, labels=batch["labels"])
    if getattr(loss_fn, "keywords", {}).get("config") is DOCUMENTS:
        return output, partial(loss_fn, batch["loss_mask"], units=batch["units"])
    return output, partial(loss_fn, batch["loss_mask"])


def run_step(chunks, optimizer, step, loss_fn, uneven, on_grads=None):
    """One optimizer step. Returns {key: value} of global report averages plus grad_norm."""
    def batches():
        for m in range(MICRO):
            yield L.local_micro_batch(micro_batch(step, m, uneven))

    iterators = [batches() for _ in chunks]
    for chunk in chunks:
        chunk.zero_grad_buffer()
    optimizer.zero_grad()
    dp = ps.get_data_parallel_world_size(with_context_parallel=False)
    reports = get_forward_backward_func()(
        forward_step_func=partial(forward_step, loss_fn, uneven, step),
        data_iterator=iterators if len(chunks) > 1 else iterators[0],
        model=chunks if len(chunks) > 1 else chunks[0],
        num_microbatches=MICRO, seq_length=L.SEQ, micro_batch_size=ROWS // dp, forward_only=False)
    if on_grads is not None:
        on_grads(chunks)
    _, grad_norm, _ = optimizer.step()
    # [sum, count] pairs summed over micro-batches and DP x CP (Megatron's averaging), then sent
    # from the one last-stage owner to every rank.
    # (Megatron-LM's own loss_func reports only "lm loss": the other keys stay [0, 1].)
    totals = torch.zeros(len(REPORT_KEYS), 2, dtype=torch.float64)
    totals[:, 1] = 1
    if reports:
        for i, key in enumerate(REPORT_KEYS.values()):
            if key in reports[0]:
                totals[i] = torch.stack([r[key] for r in reports]).sum(0).double()
        dist.all_reduce(totals, group=ps.get_data_parallel_group(with_context_parallel=True))
    owner = (ps.is_pipeline_last_stage(ignore_virtual=True) and ps.get_tensor_model_parallel_rank() == 0
             and ps.get_data_parallel_rank(with_context_parallel=True) == 0)
    values = torch.zeros(len(REPORT_KEYS) + 1, dtype=torch.float64)
    if owner:
        values[:-1] = totals[:, 0] / totals[:, 1]
        values[-1] = grad_norm
    dist.all_reduce(values)
    return dict(zip([*REPORT_KEYS, "grad_norm"], values.tolist()))


def contract_setup(contract):
    per_token = contract == "per_token"
    hook = "mean" if contract == "mean" else "token_sum"  # "documents": Megatron-LM's 3-tuple
    return per_token, hook


def equivalence(layout, contract):
    per_token, hook = contract_setup(contract)
    chunks, optimizer, _ = L.build_model_and_optimizer(layout, calculate_per_token_loss=per_token)
    history = {k: [] for k in [*REPORT_KEYS, "grad_norm"]}
    for step in range(STEPS):
        config = {"documents": DOCUMENTS, "reduce": REDUCE}.get(contract, LINUPPER)
        loss_fn = partial(reweighted_loss_func, config=config, iteration=step, contract=hook)
        for key, value in run_step(chunks, optimizer, step, loss_fn, uneven=per_token).items():
            history[key].append(value)
    return history


def baseline_2tuple(loss_mask, output_tensor):
    """Megatron-LM's legacy loss_func: masked token mean, numerator and denominator all-reduced
    over CP in place (autograd does not see the all-reduce, so gradients flow through the local
    sum only)."""
    losses = output_tensor.float()
    loss_mask = loss_mask.view(-1).float()
    loss = torch.cat([torch.sum(losses.view(-1) * loss_mask).view(1), loss_mask.sum().view(1)])
    # Reported before the CP all-reduce, as [local sum, local count] like the 3-tuple contract
    # (Megatron sums reports over DP x CP), so reported losses are comparable bit for bit.
    report = loss.clone().detach()
    if ps.get_context_parallel_world_size() > 1:
        dist.all_reduce(loss, group=ps.get_context_parallel_group())
    return loss[0] / loss[1], {"lm loss": report}


def bitwise(layout, contract):
    """Count mismatches (must be 0) between Megatron-LM's loss_func and uniform reweighting."""
    per_token, hook = contract_setup(contract)
    baseline = baseline_2tuple if contract == "mean" else L.gpt_loss_func
    collective = "reduce" if contract == "reduce" else "gather"
    uniform = partial(reweighted_loss_func, config=ReweightConfig(collective=collective),
                      iteration=0, contract=hook)
    runs = []
    for loss_fn in (baseline, uniform):
        chunks, optimizer, _ = L.build_model_and_optimizer(layout, calculate_per_token_loss=per_token)
        grads, params, losses = [], [], []

        def keep_grads(chunks):
            grads.append([p.main_grad.clone() for c in chunks for p in c.parameters()])

        for step in range(STEPS):
            losses.append(run_step(chunks, optimizer, step, loss_fn, uneven=True, on_grads=keep_grads)["loss"])
            params.append([p.detach().clone() for c in chunks for p in c.parameters()])
        runs.append((losses, grads, params))
        ps.destroy_model_parallel()
    (l0, g0, p0), (l1, g1, p1) = runs
    counts = [
        sum(a != b for a, b in zip(l0, l1)),
        sum(not torch.equal(a, b) for s0, s1 in zip(g0, g1) for a, b in zip(s0, s1)),
        sum(not torch.equal(a, b) for s0, s1 in zip(p0, p1) for a, b in zip(s0, s1)),
        len(l0), sum(len(s) for s in g0), sum(len(s) for s in p0),
    ]
    counts = torch.tensor(counts, dtype=torch.int64)
    dist.all_reduce(counts)
    names = ["loss", "grads", "params"]
    return {"mismatches": dict(zip(names, counts[:3].tolist())),
            "compared": dict(zip(names, counts[3:].tolist())), "loss": l0, "loss_uniform": l1}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--layouts", nargs="*", default=[])
    parser.add_argument("--bitwise", nargs="*", default=[], help="layouts for the uniform check")
    parser.add_argument("--contracts", nargs="+",
                        default=["token_sum", "per_token", "mean", "documents", "reduce"])
    args = parser.parse_args()

    dist.init_process_group(backend())
    results = {"equivalence": {}, "bitwise": {}}
    for kind, run, layouts in (("equivalence", equivalence, args.layouts),
                               ("bitwise", bitwise, args.bitwise)):
        for text in layouts:
            layout = L.parse_layout(text)
            for contract in args.contracts:
                if kind == "bitwise" and contract == "documents":
                    continue  # uniform with documents: tests/test_units.py
                results[kind].setdefault(layout.name, {})[contract] = run(layout, contract)
                ps.destroy_model_parallel()
                if dist.get_rank() == 0:
                    print(kind, layout.name, contract,
                          json.dumps(results[kind][layout.name][contract]), flush=True)
    if dist.get_rank() == 0:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
