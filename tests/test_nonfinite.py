"""Non-finite samples: Megatron's NaN/Inf decision by default, weight 0 only when opted in."""

import pytest
import torch

from megatron_rw import ReweightConfig
from megatron_rw.loss import STAT_KEYS, reweighted_loss_func
from megatron_rw.nonfinite import without_nonfinite_samples


def _batch():
    losses = torch.arange(1.0, 17.0).view(4, 4)
    mask = torch.ones(4, 4)
    mask[3] = 0  # an all-masked padding sample
    return losses, mask


def test_without_nonfinite_samples_zeroes_whole_samples():
    losses, mask = _batch()
    losses[1, 2] = float("nan")
    losses[2, 0] = float("inf")
    kept = without_nonfinite_samples(losses, mask)
    assert torch.equal(kept[0], losses[0]) and torch.equal(kept[3], losses[3])
    assert torch.equal(kept[1:3], torch.zeros(2, 4))


def test_a_nonfinite_sample_gets_no_weight_and_is_counted():
    """What the loss passes on with the NaN sample (Megatron's check sees its losses without
    it only under --sample-reweight-skip-nonfinite: patches/megatron_lm/rw_wrap.py)."""
    losses, mask = _batch()
    losses[1, 2] = float("nan")
    loss, tokens, report = reweighted_loss_func(mask, losses, config=ReweightConfig(),
                                                iteration=0)
    assert torch.isfinite(loss) and tokens.item() == 8  # samples 0 and 2
    assert report[STAT_KEYS["invalid"]][0].item() == 1  # the NaN sample, not the padding


def test_skip_nonfinite_must_be_a_bool():
    with pytest.raises(ValueError, match="--sample-reweight-skip-nonfinite"):
        ReweightConfig(skip_nonfinite="yes")
