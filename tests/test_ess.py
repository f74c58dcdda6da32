"""Target ESS: the chosen temperature gives the asked effective sample size, on the device."""

import math

import pytest
import torch

from megatron_rw.config import ReweightConfig
from megatron_rw.ess import T_MAX, temperature_for_ess
from megatron_rw.loss import STAT_KEYS, TEMPERATURE, reweighted_loss_func
from megatron_rw.strategies import available_strategies
from megatron_rw.weights import sample_scores, softmax_weights


def _ess(w: torch.Tensor) -> float:
    return (w.sum() ** 2 / (w.numel() * (w * w).sum())).item()


@pytest.mark.parametrize("strategy", ["linupper", "quadratic", "extremes"])
@pytest.mark.parametrize("n", [8, 64, 4096])
@pytest.mark.parametrize("target", [0.3, 0.5, 0.7, 0.9, 0.99])
def test_hits_the_target_on_random_losses(strategy, n, target):
    g = torch.Generator().manual_seed(n + int(target * 100))
    losses = 4.0 + torch.randn(n, generator=g) * torch.rand((), generator=g) * 3
    scores, ok = sample_scores(losses, strategy)
    r = temperature_for_ess(scores, ok, target)
    w = softmax_weights(scores, ok, r)
    # The floor: the ESS no temperature can go below (ties at the top score) and the ceiling at
    # t = T_MIN; in between the target is met to 0.01.
    floor = _ess(softmax_weights(scores, ok, (scores.max() - scores.min()) / T_MAX))
    if target >= floor:
        assert abs(_ess(w) - target) <= 0.01, (r, _ess(w))
    else:
        assert abs(_ess(w) - floor) <= 0.01
    assert torch.isfinite(r) and r > 0 and r.dim() == 0


def test_the_same_target_gives_the_same_ess_whatever_the_loss_spread():
    # A fixed r does not transfer across loss spreads; a fixed ESS does, by construction.
    base = torch.linspace(0, 1, 256)
    for spread in (0.1, 1.0, 10.0):
        scores, ok = sample_scores(5 + spread * base ** 3, "linupper")
        w = softmax_weights(scores, ok, temperature_for_ess(scores, ok, 0.6))
        assert abs(_ess(w) - 0.6) < 0.01


def test_unreachable_targets_give_the_nearest_reachable():
    # Two samples tie at the top: the lowest reachable ESS is 2/N (here 0.5 of N = 4 ... ) .
    losses = torch.tensor([1.0, 2.0, 3.0, 3.0])
    scores, ok = sample_scores(losses, "linupper")  # linupper: 3 and 2.5+ share the top score
    w = softmax_weights(scores, ok, temperature_for_ess(scores, ok, 0.01))
    top = scores == scores.max()
    assert torch.all(w[~top] < 1e-6) and abs(_ess(w) - top.sum().item() / 4) < 0.01
    # Target 1 -> practically uniform.
    w = softmax_weights(scores, ok, temperature_for_ess(scores, ok, 1.0))
    assert _ess(w) > 0.9999


def test_invalid_samples_are_ignored():
    losses = torch.tensor([1.0, float("nan"), 2.0, -math.inf, 3.0, 4.0, 5.0, 6.0])
    scores, ok = sample_scores(losses, "linupper")
    w = softmax_weights(scores, ok, temperature_for_ess(scores, ok, 0.8))
    assert w[1] == 0 and w[3] == 0
    v = w[ok]
    assert abs((v.sum() ** 2 / (v.numel() * (v * v).sum())).item() - 0.8) < 0.01


def test_uniform_strategy_stays_exactly_one():
    scores, ok = sample_scores(torch.rand(32), "uniform")
    assert torch.equal(softmax_weights(scores, ok, temperature_for_ess(scores, ok, 0.5)),
                       torch.ones(32))


def test_rejects_targets_outside_0_1():
    with pytest.raises(ValueError):
        temperature_for_ess(torch.zeros(3), torch.ones(3, dtype=torch.bool), 0.0)


def test_hook_uses_and_reports_the_chosen_r_after_burn_in():
    torch.manual_seed(0)
    out = (3 + torch.rand(16, 32) * torch.linspace(0, 4, 16)[:, None]).requires_grad_(True)
    mask = torch.ones(16, 32)
    cfg = ReweightConfig(strategy="linupper", target_ess=0.6, warmup_iters=5)
    _, _, report = reweighted_loss_func(mask, out, config=cfg, iteration=5)
    assert abs(report[STAT_KEYS["ess"]][0].item() - 0.6) < 0.01
    assert TEMPERATURE in report and 0 < report[TEMPERATURE][0].item() < math.inf
    _, _, report = reweighted_loss_func(mask, out, config=cfg, iteration=4)  # burn-in: uniform
    assert report[STAT_KEYS["ess"]][0].item() == 1.0 and TEMPERATURE not in report


def test_no_host_sync():
    # Every branch of the search is a tensor op: a CUDA sync would show under sync debug mode
    # (tests/test_gpu.py); on CPU, check that it never calls .item() / bool() on a tensor.
    scores, ok = sample_scores(torch.rand(64), "linupper")
    original = torch.Tensor.item
    torch.Tensor.item = lambda self: (_ for _ in ()).throw(AssertionError("host sync"))
    try:
        temperature_for_ess(scores, ok, 0.5)
    finally:
        torch.Tensor.item = original


def test_every_registered_strategy_works():
    losses = torch.rand(50) * 5
    for name in available_strategies():
        scores, ok = sample_scores(losses, name)
        r = temperature_for_ess(scores, ok, 0.7)
        assert torch.isfinite(softmax_weights(scores, ok, r)).all()
