"""The loss hook on one process: contracts, baseline equality, invalid samples, host syncs."""

import math

import pytest
import torch

from megatron_rw import ReweightConfig, compute_sample_weights, reweighted_loss_func
from megatron_rw.loss import LM_LOSS, STAT_KEYS, WEIGHTED_LOSS

pytestmark = pytest.mark.compat

B, S = 6, 16
LINUPPER = ReweightConfig(strategy="linupper", r=0.4, warmup_iters=0)


def megatron_lm_loss_func(loss_mask, output_tensor):
    """Megatron-LM pretrain_gpt.loss_func's arithmetic (3-tuple contract), the baseline."""
    losses = output_tensor.float()
    loss_mask = loss_mask.view(-1).float()
    loss = torch.sum(losses.view(-1) * loss_mask)
    num_tokens = loss_mask.sum().clone().detach().to(torch.int)
    return loss, num_tokens, {"lm loss": torch.cat([loss.clone().detach().view(1), num_tokens.view(1)])}


def _inputs(seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, S, generator=g) * 2 + torch.arange(B)[:, None] * 0.3
    out = torch.nn.functional.softplus(logits).to(dtype).requires_grad_(True)
    mask = (torch.rand(B, S, generator=g) > 0.2).float()
    return mask, out


def _grad(loss, out):
    (g,) = torch.autograd.grad(loss, out)
    return g


@pytest.mark.parametrize("config, iteration", [
    (ReweightConfig(), 0),                                           # uniform
    (ReweightConfig(strategy="linupper", warmup_iters=10), 9),       # burn-in
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_uniform_and_burn_in_are_bitwise_baseline(config, iteration, dtype):
    mask, out = _inputs(dtype=dtype)
    ref_loss, ref_tokens, ref_report = megatron_lm_loss_func(mask, out)
    loss, tokens, report = reweighted_loss_func(mask, out, config=config, iteration=iteration)
    assert torch.equal(loss, ref_loss)
    assert torch.equal(tokens, ref_tokens) and tokens.dtype == torch.int32
    assert torch.equal(report[LM_LOSS], ref_report["lm loss"])
    assert torch.equal(_grad(loss, out), _grad(ref_loss, out))
    # legacy 2-tuple: Megatron-LM's old loss_func divided by the mask sum.
    mean, _ = reweighted_loss_func(mask, out, config=config, iteration=iteration, contract="mean")
    ref_mean = torch.sum(out.float().view(-1) * mask.view(-1)) / mask.sum()
    assert torch.equal(mean, ref_mean)
    assert torch.equal(_grad(mean, out), _grad(ref_mean, out))


def test_weighted_loss_is_weighted_sum_of_sample_sums():
    mask, out = _inputs(1)
    loss, tokens, report = reweighted_loss_func(mask, out, config=LINUPPER, iteration=0)
    sums = (out * mask).sum(1)
    w = compute_sample_weights(sums / mask.sum(1), "linupper", 0.4)
    torch.testing.assert_close(loss, (w * sums).sum())
    assert tokens.item() == mask.sum().item()
    torch.testing.assert_close(report[WEIGHTED_LOSS], torch.stack([loss.detach(), mask.sum()]))
    torch.testing.assert_close(report[LM_LOSS], torch.stack([sums.sum(), mask.sum()]))
    # each token's gradient is its sample's weight times its mask
    torch.testing.assert_close(_grad(loss, out), w[:, None] * mask)
    # and the mean contract divides the same sum by the token count
    mean, _ = reweighted_loss_func(mask, out, config=LINUPPER, iteration=0, contract="mean")
    torch.testing.assert_close(mean, loss / mask.sum())


def test_packed_rows_give_the_papers_objective():
    # Equal token counts: sum_i w_i * sum_i = S * sum_i w_i * l_i (the paper's weighted mean loss).
    _, out = _inputs(2)
    mask = torch.ones(B, S)
    loss, tokens, _ = reweighted_loss_func(mask, out, config=LINUPPER, iteration=0)
    per_sample = out.mean(1)
    w = compute_sample_weights(per_sample, "linupper", 0.4)
    torch.testing.assert_close(loss / tokens, (w * per_sample).mean())


def test_padding_and_nan_samples_are_excluded():
    mask, out = _inputs(3)
    clean = reweighted_loss_func(mask[:4], out[:4], config=LINUPPER, iteration=0)
    poisoned_out = out.detach().clone()
    poisoned_out[4] = float("nan")        # a padding sample whose losses are garbage
    mask = mask.clone()
    mask[4] = 0.0
    poisoned_out[5, 3] = float("inf")     # a diverged sample
    mask[5, 3] = 1.0
    poisoned_out.requires_grad_(True)
    loss, tokens, report = reweighted_loss_func(mask, poisoned_out, config=LINUPPER, iteration=0)
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss, clean[0])
    assert tokens.item() == clean[1].item()
    assert report[STAT_KEYS["invalid"]][0].item() == 1  # the diverged sample, not the padding
    g = _grad(loss, poisoned_out)
    assert torch.all(torch.isfinite(g)) and torch.all(g[4:] == 0)


def test_all_samples_invalid():
    out = torch.full((2, 4), float("nan"), requires_grad=True)
    loss, tokens, report = reweighted_loss_func(torch.zeros(2, 4), out, config=LINUPPER, iteration=0)
    assert loss.item() == 0 and tokens.item() == 0
    for value in report.values():
        assert torch.all(torch.isfinite(value))
    mean, _ = reweighted_loss_func(torch.zeros(2, 4), out, config=LINUPPER, iteration=0, contract="mean")
    assert mean.item() == 0


def test_report_statistics():
    mask, out = _inputs(4)
    _, _, report = reweighted_loss_func(mask, out, config=LINUPPER, iteration=0)
    assert set(report) == {LM_LOSS, WEIGHTED_LOSS, *STAT_KEYS.values()}
    per_sample = (out * mask).sum(1) / mask.sum(1)
    w = compute_sample_weights(per_sample, "linupper", 0.4)
    for key, expected in [("ess", w.sum() ** 2 / (B * (w * w).sum())), ("max", w.max()),
                          ("min", w.min()), ("loss_range", per_sample.max() - per_sample.min()),
                          ("invalid", torch.tensor(0.0))]:
        torch.testing.assert_close(report[STAT_KEYS[key]], torch.stack([expected.detach(), torch.tensor(1.0)]))
    assert 0 < report[STAT_KEYS["ess"]][0].item() < 1
    for value in report.values():
        assert value.dtype == torch.float32 and value.shape == (2,)


def test_bf16_model_output_computes_in_fp32():
    mask, out = _inputs(5, dtype=torch.bfloat16)
    loss, _, report = reweighted_loss_func(mask, out, config=LINUPPER, iteration=0)
    assert loss.dtype == torch.float32 and all(v.dtype == torch.float32 for v in report.values())
    ref, _, _ = reweighted_loss_func(mask, out.detach().float(), config=LINUPPER, iteration=0)
    torch.testing.assert_close(loss, ref)


def test_bad_contract():
    mask, out = _inputs()
    with pytest.raises(ValueError, match="contract"):
        reweighted_loss_func(mask, out, config=LINUPPER, iteration=0, contract="sum")


@pytest.mark.parametrize("contract", ["token_sum", "mean"])
def test_no_host_sync_in_hook(contract, host_syncs):
    mask, out = _inputs(6)
    mask[2] = 0
    result = reweighted_loss_func(mask, out, config=LINUPPER, iteration=5, contract=contract)
    result[0].backward()
    assert host_syncs == []


def test_burn_in_boundary_switches_weights():
    cfg = ReweightConfig(strategy="extremes", r=1.0, warmup_iters=3)
    mask, out = _inputs(7)
    _, _, before = reweighted_loss_func(mask, out, config=cfg, iteration=2)
    _, _, after = reweighted_loss_func(mask, out, config=cfg, iteration=3)
    assert before[STAT_KEYS["ess"]][0].item() == 1.0
    assert after[STAT_KEYS["ess"]][0].item() < 1.0
    assert math.isfinite(after[STAT_KEYS["max"]][0].item())
