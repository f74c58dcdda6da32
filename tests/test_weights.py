import math

import pytest
import torch

from megatron_rw import compute_sample_weights
from megatron_rw.weights import normalise_losses

STRATEGIES = ["uniform", "linupper", "quadratic", "extremes", "robust"]


def _losses(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return 2.0 + torch.rand(n, generator=g) * 3.0


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("r", [0.1, 0.4, 1.0, 10.0])
def test_mean_one_and_float32(strategy, r):
    w = compute_sample_weights(_losses(), strategy, r)
    assert w.dtype == torch.float32 and w.shape == (64,)
    assert torch.all(w > 0)
    assert abs(w.mean().item() - 1.0) < 1e-5


def test_uniform_weights_are_exactly_one():
    for n in (1, 3, 7, 64, 1000):
        w = compute_sample_weights(_losses(n), "uniform", 0.01)
        assert torch.equal(w, torch.ones(n))


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_infinite_r_is_uniform(strategy):
    assert torch.equal(compute_sample_weights(_losses(), strategy, math.inf), torch.ones(64))
    w = compute_sample_weights(_losses(), strategy, 1e7)
    torch.testing.assert_close(w, torch.ones(64), rtol=0, atol=1e-6)


def test_closed_form_matches_softmax():
    losses = _losses(16, seed=3)
    x = 2 * (losses - losses.min()) / (losses.max() - losses.min()) - 1
    f = torch.minimum(x + 1, torch.ones_like(x))
    expected = 16 * torch.softmax(f / 0.4, dim=0)
    torch.testing.assert_close(compute_sample_weights(losses, "linupper", 0.4), expected)


def test_normalise_maps_to_interval():
    losses = torch.tensor([3.0, 1.0, 2.0, 5.0])
    x = normalise_losses(losses, torch.ones(4, dtype=torch.bool), 0.5)
    torch.testing.assert_close(x, torch.tensor([0.0, -0.5, -0.25, 0.5]))


def test_linupper_shape():
    losses = _losses(101, seed=1)
    w = compute_sample_weights(losses, "linupper", 1.0)
    mid = (losses.max() + losses.min()) / 2
    top = w[losses >= mid]
    # every sample at or above mid-range gets the same (largest) weight ...
    torch.testing.assert_close(top, torch.full_like(top, top[0].item()))
    # ... every sample below it at most that weight, decreasing with the loss.
    assert torch.all(w[losses < mid] <= top[0])
    order = torch.argsort(losses)
    assert torch.all(w[order][1:] >= w[order][:-1] - 1e-7)


def test_quadratic_and_extremes_shape():
    losses = torch.tensor([1.0, 2.0, 3.0])
    wq = compute_sample_weights(losses, "quadratic", 1.0)
    we = compute_sample_weights(losses, "extremes", 1.0)
    assert wq[1] > wq[0] and wq[0] == wq[2]
    assert we[1] < we[0] and we[0] == we[2]


def test_weight_ratio_bounded_by_temperature():
    w = compute_sample_weights(_losses(256), "linupper", 0.5)
    assert (w.max() / w.min()).item() <= math.exp(1.0 / 0.5) * (1 + 1e-5)


def test_invalid_samples_get_zero_and_leave_others_unchanged():
    base = _losses(8)
    reference = compute_sample_weights(base, "linupper", 0.4)
    poisoned = torch.cat([base[:3], torch.tensor([float("nan"), float("inf"), -float("inf"), 123.0]), base[3:]])
    valid = torch.ones(12, dtype=torch.bool)
    valid[6] = False  # explicitly invalid (e.g. an all-masked padding sample), despite a finite loss
    w = compute_sample_weights(poisoned, "linupper", 0.4, valid=valid)
    assert torch.all(w[3:7] == 0)
    torch.testing.assert_close(torch.cat([w[:3], w[7:]]), reference)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_degenerate_batches_never_nan(strategy):
    cases = [
        torch.tensor([2.5]),                           # single sample
        torch.full((6,), 1.25),                        # all equal
        torch.tensor([float("nan")] * 4),              # all invalid
        torch.tensor([float("nan"), 3.0]),             # single valid
        torch.tensor([1e30, 2e30, 3.0e38]),            # huge but finite
        torch.tensor([1.0, 1.0 + 1e-9]),               # below the range floor
    ]
    for losses in cases:
        w = compute_sample_weights(losses, strategy, 0.4)
        assert torch.all(torch.isfinite(w)), (strategy, losses, w)
        ok = torch.isfinite(losses)
        if ok.any():
            assert abs(w[ok].mean().item() - 1.0) < 1e-5
        assert torch.all(w[~ok] == 0)
    assert torch.equal(compute_sample_weights(torch.full((6,), 1.25), strategy, 0.4), torch.ones(6))


def test_bf16_input_gives_fp32_output():
    losses = _losses().to(torch.bfloat16)
    w = compute_sample_weights(losses, "quadratic", 1.0)
    assert w.dtype == torch.float32
    torch.testing.assert_close(w, compute_sample_weights(losses.float(), "quadratic", 1.0))


def test_no_gradient_through_weights():
    losses = _losses().requires_grad_(True)
    assert not compute_sample_weights(losses, "extremes", 1.0).requires_grad


def test_callable_strategy_and_bad_r():
    w = compute_sample_weights(torch.tensor([1.0, 2.0]), lambda x, d: x, 1.0)
    assert w[1] > w[0]
    with pytest.raises(ValueError, match="r must be > 0"):
        compute_sample_weights(torch.tensor([1.0]), "linupper", 0.0)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_no_host_sync(strategy, host_syncs):
    losses = torch.cat([_losses(32), torch.tensor([float("nan")])])
    compute_sample_weights(losses, strategy, 0.4, valid=torch.ones(33, dtype=torch.bool))
    assert host_syncs == []


def test_host_sync_detector_detects(host_syncs):
    # The detector must be able to fail: these are exactly the calls it exists to catch.
    t = torch.ones(2)
    t.sum().item()
    bool(t[0])
    float(t[1])
    assert {"item", "__bool__", "__float__"} <= set(host_syncs)
