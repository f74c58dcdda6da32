"""megatron_rw/batch_weights.py on one rank: ``reduce`` gives ``gather``'s weights and statistics
(tests/test_equivalence.py compares them in every layout), refuses what it cannot compute, and
makes no host synchronisation."""

import math

import pytest
import torch

from megatron_rw import ReweightConfig, reweighted_loss_func
from megatron_rw.batch_weights import local_weights
from megatron_rw.loss import STAT_KEYS


def _losses():
    gen = torch.Generator().manual_seed(0)
    losses = 4.0 + torch.rand(24, generator=gen, dtype=torch.float32)
    losses[3] = float("nan")    # a unit whose loss is not finite
    losses[7] = -math.inf       # a unit without tokens (padding)
    return losses


@pytest.mark.parametrize("strategy", ["uniform", "linupper", "quadratic", "extremes"])
@pytest.mark.parametrize("iteration", [0, 5])  # in burn-in (r = inf), and after it
def test_reduce_gives_gathers_weights_and_statistics(strategy, iteration):
    losses = _losses()
    base = ReweightConfig(strategy=strategy, r=0.3, warmup_iters=3, preview="extremes")
    gathered = local_weights(losses, base, iteration, None, with_normalised=True)
    reduced = local_weights(losses, ReweightConfig(**{**base.__dict__, "collective": "reduce"}),
                            iteration, None, with_normalised=True)
    assert len(gathered) == len(reduced) == 2  # the strategy, then the preview
    for gather, reduce in zip(gathered, reduced):
        assert torch.allclose(reduce.weights, gather.weights, rtol=1e-6, atol=0)
        assert reduce.weights[3] == reduce.weights[7] == 0
        for name, value in gather.stats.items():
            assert reduce.stats[name].item() == pytest.approx(value.item(), rel=1e-6), name
    gather, reduce = gathered[0], reduced[0]
    assert torch.equal(reduce.normalised, gather.normalised) and reduced[1].normalised is None
    if strategy == "uniform" or iteration == 0:  # exactly the baseline's weights
        assert torch.equal(reduce.weights[torch.isfinite(losses)],
                           torch.ones(22, dtype=torch.float32))
    else:
        assert gather.stats["ess"].item() < 0.99  # the comparison means something


def test_reduce_with_no_valid_unit_is_all_zero():
    losses = torch.tensor([float("nan"), -math.inf, float("nan")])
    got, = local_weights(losses, ReweightConfig(strategy="linupper", warmup_iters=0,
                                                collective="reduce"), 1, None)
    assert torch.equal(got.weights, torch.zeros(3))
    assert {k: v.item() for k, v in got.stats.items()} == {
        "ess": 0.0, "max": 0.0, "min": 0.0, "loss_range": 0.0, "invalid": 2.0}


@pytest.mark.parametrize("settings, why", [
    (dict(strategy="robust"), "robust"), (dict(preview="robust"), "robust"),
    (dict(strategy="linupper", target_ess=0.8), "target ESS"),
    (dict(collective="tree"), "unknown collective")])
def test_reduce_refuses_what_three_scalars_cannot_carry(settings, why):
    with pytest.raises(ValueError, match="--sample-reweight-collective") as e:
        ReweightConfig(**{"collective": "reduce", **settings})
    assert why in str(e.value)


def test_the_hook_with_reduce_makes_no_host_sync(host_syncs):
    mask = torch.ones(4, 8)
    out = 4.0 + torch.rand(4, 8, requires_grad=True)
    config = ReweightConfig(strategy="linupper", r=0.4, warmup_iters=0, collective="reduce",
                            preview="quadratic")
    loss, tokens, report = reweighted_loss_func(mask, out, config=config, iteration=1)
    loss.backward()
    assert host_syncs == []
    assert report[STAT_KEYS["ess"]][0] < 1.0
