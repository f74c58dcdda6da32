"""The loss hook on a CUDA device: no host synchronisation, CPU-equal weights, and ``uniform``
through megatron-core's real schedule with a bf16 GPTModel bit for bit Megatron-LM's loss.

Skipped without CUDA. ``benchmarks/gpu/gpu_check.py`` runs these (and tests/test_gpu_pretrain.py) on
the lent GPU; docs/gpu_check.md says how. One GPU cannot run an NCCL group of two ranks (NCCL
refuses two ranks on one device), so the data-parallel all-gather of the hook is exercised with a
group of one; its multi-rank arithmetic is covered on CPU/gloo by tests/test_equivalence.py.
"""

from __future__ import annotations

import contextlib
import os

import pytest
import torch

from megatron_rw import ReweightConfig, compute_sample_weights, reweighted_loss_func
from megatron_rw.loss import CONTRACTS, LM_LOSS
from megatron_rw.strategies import available_strategies
from megatron_rw.telemetry import SampleTelemetry
from tests.workers.launch import free_port

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

STRATEGIES = ("uniform", "linupper", "quadratic", "extremes")
# Deterministic cuBLAS for the bit-for-bit test; read when the process first uses cuBLAS, which
# is after collection imported this module.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
B, S = 8, 64


def _inputs(device, dtype=torch.float32, seed=0):
    """Per-token losses [B, S] (a spread of per-sample means) with a ragged mask, a padding row
    (all-masked) and, like a GPTModel output, a graph to backpropagate into."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, S, generator=g) * 2 + torch.arange(B)[:, None] * 0.3
    losses = torch.nn.functional.softplus(logits).to(dtype)
    mask = (torch.rand(B, S, generator=g) > 0.2).float()
    mask[3] = 0.0
    return mask.to(device), losses.to(device).requires_grad_(True)


@contextlib.contextmanager
def host_syncs_raise():
    """Any host synchronisation with the CUDA stream raises inside the block (copies between
    pageable host memory and the GPU too, so inputs are made before it)."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("collective", ["gather", "reduce"])
@pytest.mark.parametrize("contract", CONTRACTS)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_hook_makes_no_host_sync(strategy, contract, collective):
    config = ReweightConfig(strategy=strategy, r=0.4, warmup_iters=10, collective=collective)
    # Domain telemetry on (per-domain means, the heavier of its two forms); past the burn-in, so weights are live.
    telemetry = SampleTelemetry(domain_ids=torch.arange(B, device="cuda") % 3,
                                domain_names=("a", "b", "c"))
    # A first call outside the checked region: one-time set-up (cuBLAS handles, allocator pools)
    # is not what runs every micro-batch.
    mask, out = _inputs("cuda", torch.bfloat16)
    reweighted_loss_func(mask, out, config=config, iteration=10, contract=contract,
                         telemetry=telemetry)[0].backward()
    mask, out = _inputs("cuda", torch.bfloat16)
    with host_syncs_raise():
        result = reweighted_loss_func(mask, out, config=config, iteration=10, contract=contract,
                                      telemetry=telemetry)
        result[0].backward()
    assert torch.isfinite(result[0]).item() and out.grad.abs().sum().item() > 0
    assert set(STRATEGIES) <= set(available_strategies())


@pytest.mark.parametrize("extra", [dict(target_ess=0.6), dict(unit="document", max_documents=4),
                                   dict(preview="quadratic", target_ess=0.8, unit="document")])
def test_target_ess_documents_and_preview_make_no_host_sync(extra):
    config = ReweightConfig(strategy="linupper", r=0.4, warmup_iters=10, **extra)
    telemetry = SampleTelemetry(domain_ids=torch.arange(B, device="cuda") % 3,
                                domain_names=("a", "b", "c"))
    # Document slots: a new document every 5 tokens, the last slot shared.
    units = (torch.arange(S, device="cuda") // 5).clamp(max=3).expand(B, S).contiguous()
    mask, out = _inputs("cuda", torch.bfloat16)
    reweighted_loss_func(mask, out, config=config, iteration=10, telemetry=telemetry,
                         units=units)[0].backward()
    mask, out = _inputs("cuda", torch.bfloat16)
    with host_syncs_raise():
        result = reweighted_loss_func(mask, out, config=config, iteration=10,
                                      telemetry=telemetry, units=units)
        result[0].backward()
    assert torch.isfinite(result[0]).item() and out.grad.abs().sum().item() > 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_cuda_weights_equal_cpu_weights(strategy, dtype):
    """Same inputs, same fp32 arithmetic: equal up to the last bits of exp() and the reductions."""
    g = torch.Generator().manual_seed(1)
    losses = (torch.rand(256, generator=g) * 6 + 2).to(dtype)
    losses[7] = float("nan")  # an invalid sample on both devices
    cpu = compute_sample_weights(losses, strategy, r=0.4)
    cuda = compute_sample_weights(losses.cuda(), strategy, r=0.4)
    assert cuda.device.type == "cuda" and cuda.dtype == torch.float32
    torch.testing.assert_close(cuda.cpu(), cpu, rtol=2e-6, atol=1e-7)
    assert cuda[7].item() == 0.0
    # And the whole hook: loss, report and gradients.
    mask, out = _inputs("cpu", dtype, seed=2)
    mask_c, out_c = _inputs("cuda", dtype, seed=2)
    config = ReweightConfig(strategy=strategy, r=0.4, warmup_iters=0)
    loss, tokens, report = reweighted_loss_func(mask, out, config=config, iteration=0)
    loss_c, tokens_c, report_c = reweighted_loss_func(mask_c, out_c, config=config, iteration=0)
    torch.testing.assert_close(loss_c.cpu(), loss, rtol=1e-5, atol=1e-5)
    assert tokens_c.item() == tokens.item()
    for key in report:
        torch.testing.assert_close(report_c[key].cpu(), report[key], rtol=1e-5, atol=1e-5)
    loss.backward()
    loss_c.backward()
    torch.testing.assert_close(out_c.grad.float().cpu(), out.grad.float(), rtol=1e-2, atol=1e-5)


# ----------------------------------------------------------- uniform == Megatron-LM, bit for bit
@pytest.fixture(scope="module")
def megatron_one_gpu():
    """A world of one NCCL rank with megatron-core's parallel state (TP = PP = CP = DP = 1)."""
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    torch.cuda.set_device(0)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{free_port()}",
                            rank=0, world_size=1)
    ps.initialize_model_parallel()
    yield
    ps.destroy_model_parallel()
    dist.destroy_process_group()


@pytest.fixture
def deterministic_kernels():
    """Run-to-run deterministic kernels: a bit-for-bit comparison of two training runs needs them
    whatever the loss function (atomics in a backward kernel reorder sums from run to run)."""
    torch.use_deterministic_algorithms(True, warn_only=True)
    yield
    torch.use_deterministic_algorithms(False)


def _baseline_mean(loss_mask, output_tensor):
    """Megatron-LM's legacy 2-tuple loss_func (CP = 1): the masked token mean. Reported as
    ``[sum, count]`` like the 3-tuple contract (and the hook), so reports compare bit for bit."""
    losses = output_tensor.float()
    mask = loss_mask.view(-1).float()
    total = torch.sum(losses.view(-1) * mask)
    report = torch.cat([total.clone().detach().view(1), mask.sum().view(1)])
    return total / mask.sum(), {"lm loss": report}


def _train(loss_func, contract, steps=2, micro=2, rows=4):
    """Build a bf16 GPT (benchmarks/gpu/gpt_model.py: local layers without Transformer Engine,
    Megatron DDP with fp32 grad reduction, bf16 Adam with fp32 main params) from a fixed
    seed and run ``steps`` optimizer steps through ``get_forward_backward_func``. Returns the
    reported losses, every main_grad after each backward and every parameter after each step."""
    from functools import partial

    from megatron.core.pipeline_parallel import get_forward_backward_func
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    from benchmarks.gpu import gpt_model
    from benchmarks.megatron_args import LAUNCHER_FLAGS, parse_flags
    from tests import _layouts as L

    args = parse_flags([
        "--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4",
        "--seq-length", str(L.SEQ), "--max-position-embeddings", str(L.SEQ),
        "--micro-batch-size", str(rows), "--train-iters", "10", "--lr", "1e-3", "--bf16",
        "--hidden-dropout", "0", "--attention-dropout", "0", *LAUNCHER_FLAGS])
    torch.manual_seed(1234)
    model_parallel_cuda_manual_seed(1234)
    model, optimizer, config = gpt_model.build(args, L.VOCAB)
    # megatron-core's own switch for its embedding lookup: F.embedding's CUDA backward is not
    # deterministic (its comment), indexing's is under torch.use_deterministic_algorithms.
    for module in model.modules():
        if hasattr(module, "deterministic_mode"):
            module.deterministic_mode = True
    # With one data-parallel rank DDP scales gradients by 1 either way, so the per-token contract
    # can be switched on after the model is wrapped; the schedule reads it at every step.
    config.calculate_per_token_loss = contract == "per_token"

    def forward_step(data_iterator, model):
        batch = {k: v.cuda() for k, v in next(data_iterator).items()}
        output = model(batch["tokens"], batch["position_ids"], None, labels=batch["labels"])
        return output, partial(loss_func, batch["loss_mask"])

    losses, grads, params = [], [], []
    for step in range(steps):
        model.zero_grad_buffer()
        optimizer.zero_grad()
        reports = get_forward_backward_func()(
            forward_step_func=forward_step,
            data_iterator=iter([L.uneven_global_micro_batch(step, m, rows) for m in range(micro)]),
            model=model, num_microbatches=micro, seq_length=L.SEQ, micro_batch_size=rows,
            forward_only=False)
        grads.append([p.main_grad.clone() for p in model.parameters()])
        optimizer.step()
        params.append([p.detach().clone() for p in model.parameters()])
        losses.append(torch.stack([r[LM_LOSS] for r in reports]).cpu())
    return losses, grads, params


def _mismatches(a, b):
    return sum(not torch.equal(x, y) for xs, ys in zip(a, b) for x, y in zip(xs, ys))


@pytest.mark.parametrize("contract", ["token_sum", "per_token", "mean"])
def test_uniform_through_megatron_schedule_is_bitwise_baseline(megatron_one_gpu,
                                                               deterministic_kernels, contract):
    from tests import _layouts as L

    hook = "mean" if contract == "mean" else "token_sum"
    baseline = _baseline_mean if contract == "mean" else L.gpt_loss_func
    uniform = lambda mask, out: reweighted_loss_func(  # noqa: E731
        mask, out, config=ReweightConfig(), iteration=0, contract=hook)
    ref = _train(baseline, contract)
    # Control: the baseline twice. If the GPU's kernels were not run-to-run deterministic here,
    # a mismatch below would say nothing about the hook.
    again = _train(baseline, contract)
    got = _train(uniform, contract)
    for name, i in (("losses", 0), ("grads", 1), ("params", 2)):
        assert _mismatches(again[i], ref[i]) == 0, f"baseline is not deterministic ({name})"
    assert all(torch.equal(a, b) for a, b in zip(got[0], ref[0])), (got[0], ref[0])
    assert _mismatches(got[1], ref[1]) == 0
    assert _mismatches(got[2], ref[2]) == 0
    assert len(ref[1][0]) > 10 and ref[1][0][0].is_cuda
