import math

import pytest
import torch

from megatron_rw import available_strategies, compute_sample_weights, get_strategy, register_strategy
from megatron_rw import strategies as strategies_module
from megatron_rw.robust import (FALL, LOW_RAMP, PLATEAU_END, masked_quantiles, robust_positions,
                                robust_score)
from megatron_rw.strategies import get_normaliser
from megatron_rw.weights import normalise_losses

BUILTINS = ["uniform", "linupper", "quadratic", "extremes"]

# Two global micro-batches (16 rows) logged at iteration 100 of the tiny_cpu GPT on the noisy
# corpus (runs/lossdist-uniform-s1234, see benchmarks/quality/loss_distribution.py): D = duplicated
# document, R = random token ids, . = real text.
REAL_BATCHES = [
    ([5.985, 6.288, 5.803, 6.055, 5.88, 3.609, 7.79, 5.244, 5.82, 6.101, 5.898, 5.308, 5.803,
      5.559, 5.9, 5.747], ".....DR........."),
    ([3.721, 7.749, 5.314, 5.743, 5.29, 5.848, 5.596, 6.0, 6.255, 5.944, 3.98, 7.34, 4.898,
      5.025, 5.338, 5.599], "DR........DR...."),
]


def _clean(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return 6.0 + 0.3 * torch.randn(n, generator=g)


def _old_weights(losses, name, r, delta=1.0, valid=None):
    """compute_sample_weights as it was before strategies could bring a normaliser (921a0fd)."""
    fn = get_strategy(name)
    losses = losses.detach().float()
    ok = torch.isfinite(losses)
    if valid is not None:
        ok = ok & valid
    scores = fn(normalise_losses(losses, ok, delta), delta).float()
    neg_inf = torch.full_like(scores, -math.inf)
    top = torch.where(ok, scores, neg_inf).amax()
    unnorm = torch.exp(torch.where(ok, (scores - top) / r, neg_inf))
    return unnorm * (ok.sum().float() / unnorm.sum().clamp(min=1.0))


def test_registered_with_its_own_normaliser():
    assert "robust" in available_strategies()
    assert get_strategy("robust") is robust_score
    assert get_normaliser("robust") is robust_positions
    assert get_normaliser(robust_score) is robust_positions
    for name in BUILTINS:
        assert get_normaliser(name) is None
    with pytest.raises(ValueError, match="unknown sample-reweight strategy"):
        get_normaliser("nope")


@pytest.mark.parametrize("name", BUILTINS)
@pytest.mark.parametrize("seed", range(5))
def test_builtin_weights_bitwise_unchanged(name, seed):
    g = torch.Generator().manual_seed(seed)
    losses = 2 + 5 * torch.rand(97, generator=g)
    losses[3] = float("nan")
    losses[50] = 40.0  # an outlier
    valid = torch.rand(97, generator=g) > 0.1
    for r in (0.1, 0.4, 1.0, math.inf):
        for delta in (1.0, 0.5):
            new = compute_sample_weights(losses, name, r, delta, valid=valid)
            assert torch.equal(new, _old_weights(losses, name, r, delta, valid))
    if name == "uniform":
        assert torch.equal(compute_sample_weights(losses, name, 0.4), torch.isfinite(losses).float())


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 16, 17, 1000])
def test_masked_quantiles_equal_torch_quantile(n):
    g = torch.Generator().manual_seed(n)
    values = torch.randn(n + 7, generator=g)
    valid = torch.zeros(n + 7, dtype=torch.bool)
    valid[torch.randperm(n + 7, generator=g)[:n]] = True
    values[~valid] = float("nan")  # never read
    qs = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)
    expected = torch.quantile(values[valid], torch.tensor(qs))
    torch.testing.assert_close(masked_quantiles(values, valid, qs), expected)


def test_masked_quantiles_without_valid_entries_are_inf_not_nan():
    q = masked_quantiles(torch.tensor([float("nan"), 1.0]), torch.zeros(2, dtype=torch.bool),
                         (0.25, 0.5))
    assert torch.equal(q, torch.full((2,), math.inf))


def test_positions_are_iqrs_from_the_median():
    losses = torch.tensor([4.0, 0.0, 2.0, 3.0, 1.0, 11.0, float("nan")])
    valid = torch.isfinite(losses)
    # valid: 0 1 2 3 4 11 -> q25 = 1.25, q50 = 2.5, q75 = 3.75, IQR = 2.5
    z = robust_positions(losses, valid, 1.0)
    expected = torch.tensor([0.6, -1.0, -0.2, 0.2, -0.6, 3.4, 0.0])
    torch.testing.assert_close(z, expected)


def test_score_knots():
    """The trapezoid's corners: these are the constants derived in megatron_rw/robust.py."""
    assert (LOW_RAMP, PLATEAU_END, FALL) == (2.0, 1.0, 1.0)
    z = torch.tensor([-9.0, -2.0, -1.0, 0.0, 0.5, 1.0, 1.5, 2.0, 9.0, 1e4])
    expected = torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0, 1.0, 0.5, 0.0, 0.0, 0.0])
    for delta in (1.0, 0.5):
        torch.testing.assert_close(get_strategy("robust")(z, delta), delta * expected)


@pytest.mark.parametrize("r", [0.1, 0.4, 1.0, 10.0])
@pytest.mark.parametrize("n_out", [1, 2, 3])
def test_injected_outlier_below_median_weight(r, n_out):
    """Issue 11's done-when: up to a few high-loss outliers get less than the median weight,
    where linupper gives them the largest weight."""
    losses = torch.cat([_clean(16 - n_out, seed=n_out), torch.full((n_out,), 8.0)])
    out = slice(16 - n_out, None)
    w = compute_sample_weights(losses, "robust", r)
    assert torch.all(w[out] < w.median())
    lin = compute_sample_weights(losses, "linupper", r)
    assert torch.all(lin[out] == lin.max())
    # A single absurd outlier does not collapse the rest: they keep their robust weights.
    w64 = compute_sample_weights(torch.cat([_clean(63), torch.tensor([1e6])]), "robust", r)
    assert w64[-1] < w64.median() and w64[-1] == w64.min()


def test_outlier_just_beyond_the_plateau_is_partly_down_weighted():
    # A sample at z = 1.5 (between the clean rows' max and the random rows' 5 % quantile, both
    # measured) keeps half the top score. Over 0 1 2 3 4 x with x > 4: q25 = 1.25, q50 = 2.5,
    # q75 = 3.75, IQR = 2.5, so x = 2.5 + 1.5 * 2.5 has z = 1.5; x = 2.5 + 2.5 has z = 1.
    for x, score in ((6.25, 0.5), (5.0, 1.0), (7.5, 0.0)):
        losses = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0, x])
        z = robust_positions(losses, torch.ones(6, dtype=torch.bool), 1.0)
        torch.testing.assert_close(get_strategy("robust")(z, 1.0)[-1], torch.tensor(score))


def test_low_loss_redundant_samples_down_weighted():
    losses = torch.cat([_clean(58), torch.full((6,), 4.0)])  # 10 % memorised copies
    w = compute_sample_weights(losses, "robust", 0.4)
    assert torch.all(w[58:] < 0.2)
    assert torch.all(w[58:] == w.min())
    # Below the median, weights rise with the loss, as linupper's do.
    order = torch.argsort(losses)
    below = order[: 32]
    assert torch.all(w[below][1:] >= w[below][:-1])


@pytest.mark.parametrize("losses,kinds", REAL_BATCHES)
def test_real_noisy_batches(losses, kinds):
    losses = torch.tensor(losses)
    w = compute_sample_weights(losses, "robust", 0.4)
    med = w.median()
    for wi, kind in zip(w.tolist(), kinds):
        if kind in "DR":
            assert wi < med, (kind, wi, med.item())
    lin = compute_sample_weights(losses, "linupper", 0.4)
    assert all(lin[i] == lin.max() for i, k in enumerate(kinds) if k == "R")


def test_invalid_entries_ignored():
    base = _clean(20)
    reference = compute_sample_weights(base, "robust", 0.4)
    poisoned = torch.cat([base[:5], torch.tensor([float("nan"), float("inf"), -float("inf"),
                                                  123.0, -50.0]), base[5:]])
    valid = torch.ones(25, dtype=torch.bool)
    valid[8:10] = False  # finite but marked invalid (e.g. all-masked padding rows)
    w = compute_sample_weights(poisoned, "robust", 0.4, valid=valid)
    assert torch.all(w[5:10] == 0)
    torch.testing.assert_close(torch.cat([w[:5], w[10:]]), reference)


def test_degenerate_batches_never_nan():
    cases = [torch.tensor([2.5]), torch.full((6,), 1.25), torch.tensor([float("nan")] * 4),
             torch.tensor([float("nan"), 3.0]), torch.tensor([1e30, 2e30, 3.0e38]),
             torch.tensor([-3.0e38, 0.0, 3.0e38]), torch.tensor([1.0, 1.0 + 1e-9]),
             torch.tensor([1.0, 2.0])]
    for losses in cases:
        for r in (0.4, math.inf):
            w = compute_sample_weights(losses, "robust", r)
            ok = torch.isfinite(losses)
            assert torch.all(torch.isfinite(w)) and torch.all(w[~ok] == 0), (losses, w)
            if ok.any():
                assert abs(w[ok].mean().item() - 1.0) < 1e-5
    assert torch.equal(compute_sample_weights(torch.full((6,), 1.25), "robust", 0.4), torch.ones(6))
    assert torch.equal(compute_sample_weights(_clean(64), "robust", math.inf), torch.ones(64))


def test_weight_ratio_bounded_like_linupper():
    losses = torch.cat([_clean(60), torch.tensor([1.0, 2.0, 30.0, 90.0])])
    w = compute_sample_weights(losses, "robust", 0.5)
    assert (w.max() / w.min()).item() <= math.exp(1.0 / 0.5) * (1 + 1e-5)


def test_no_host_sync(host_syncs):
    losses = torch.cat([_clean(32), torch.tensor([float("nan"), 9.0])])
    compute_sample_weights(losses, "robust", 0.4, valid=torch.ones(34, dtype=torch.bool))
    masked_quantiles(losses, torch.isfinite(losses), (0.25, 0.5, 0.75))
    assert host_syncs == []


def test_overwrite_without_normaliser_drops_it(monkeypatch):
    monkeypatch.setattr(strategies_module, "_REGISTRY", dict(strategies_module._REGISTRY))
    monkeypatch.setattr(strategies_module, "_NORMALISERS", dict(strategies_module._NORMALISERS))
    register_strategy("robust", lambda x, d: x, overwrite=True)
    assert get_normaliser("robust") is None

    @register_strategy("ranked", normalise=lambda losses, valid, delta: torch.zeros_like(losses))
    def ranked(x, delta):
        return x

    assert torch.equal(compute_sample_weights(torch.tensor([1.0, 5.0]), "ranked", 0.4),
                       torch.ones(2))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_no_sync_and_equal_to_cpu():
    losses = torch.cat([_clean(4000), torch.full((40,), 9.0), torch.tensor([float("nan")])])
    cpu = compute_sample_weights(losses, "robust", 0.4)
    dev = losses.cuda()
    compute_sample_weights(dev, "robust", 0.4)  # one-time set-up outside the checked region
    torch.cuda.set_sync_debug_mode("error")
    try:
        cuda = compute_sample_weights(dev, "robust", 0.4)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.testing.assert_close(cuda.cpu(), cpu, rtol=2e-6, atol=1e-7)


def test_composes_with_the_hook_target_ess_and_preview():
    from megatron_rw import ReweightConfig, reweighted_loss_func
    from megatron_rw.loss import STAT_KEYS

    torch.manual_seed(0)
    row_loss = torch.cat([5.5 + 0.3 * torch.randn(14), torch.tensor([3.0, 8.5])])  # D and R rows
    out = (row_loss[:, None] + 0.1 * torch.randn(16, 32)).requires_grad_(True)
    mask = torch.ones(16, 32)
    cfg = ReweightConfig(strategy="robust", target_ess=0.8, warmup_iters=0)
    loss, _, report = reweighted_loss_func(mask, out, config=cfg, iteration=0)
    assert abs(report[STAT_KEYS["ess"]][0].item() - 0.8) < 0.01
    loss.backward()
    grad_rows = out.grad.abs().sum(dim=1)
    assert grad_rows[15] < grad_rows[:14].median() and grad_rows[14] < grad_rows[:14].median()
    preview = ReweightConfig(strategy="uniform", preview="robust", r=0.4, warmup_iters=0)
    base = out.detach().clone().requires_grad_(True)
    loss_p, _, _ = reweighted_loss_func(mask, base, config=preview, iteration=0)
    assert torch.isfinite(loss_p)
