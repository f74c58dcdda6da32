"""benchmarks/quality/toy_regression.py on a tiny setting: the SGD it runs, its metrics and its outputs."""

import dataclasses
import json

import pytest
import torch

from benchmarks.quality import toy_regression as toy
from megatron_rw import compute_sample_weights

TINY = dataclasses.replace(toy.SETTINGS[1], n_train=96, n_test=64, dim=5, batch=8, steps=30, log_every=10)
SEEDS = [0, 3]


def _plain_sgd(data, setting):
    """Minibatch SGD on the unweighted mean loss, every seed at once, with the benchmark's tensor ops."""
    w = data["w0"].clone()
    curve = [toy.heldout_loss(data, w)]
    for step in range(setting.steps):
        idx = data["order"][:, step]
        x = torch.gather(data["x"], 1, idx[..., None].expand(-1, -1, setting.dim))
        resid = torch.einsum("sbd,sd->sb", x, w) - torch.gather(data["y"], 1, idx)
        w = w - setting.lr * (resid[..., None] * x).mean(dim=1)
        curve.append(toy.heldout_loss(data, w))
    return torch.stack(curve, dim=1)


def test_uniform_is_bitwise_plain_mean_loss_sgd():
    data = toy.make_data(TINY, SEEDS)
    curve, group_weight = toy.train(data, TINY, "uniform", 0.3)
    assert torch.equal(curve, _plain_sgd(data, TINY))
    assert torch.equal(group_weight, torch.ones_like(group_weight))
    assert curve[:, -1].lt(curve[:, 0]).all()  # it learns


def test_seeds_are_independent_problems():
    """Seed s of a batched run equals a run of seed s alone (nothing mixes across the seed axis)."""
    data = toy.make_data(TINY, SEEDS)
    together, _ = toy.train(data, TINY, "linupper", 1.0)
    for s, seed in enumerate(SEEDS):
        alone, _ = toy.train(toy.make_data(TINY, [seed]), TINY, "linupper", 1.0)
        torch.testing.assert_close(together[s], alone[0], rtol=1e-12, atol=0)
    assert not torch.equal(together[0], together[1])


@pytest.mark.parametrize("strategy", ["linupper", "quadratic", "extremes"])
def test_step_descends_the_weighted_mean_loss(strategy):
    """One step equals autograd on mean(w_i * l_i) with weights from compute_sample_weights."""
    setting = dataclasses.replace(TINY, steps=1)
    data = toy.make_data(setting, SEEDS)
    curve, _ = toy.train(data, setting, strategy, 0.5)
    for s in range(len(SEEDS)):
        w = data["w0"][s].clone().requires_grad_(True)
        idx = data["order"][s, 0]
        losses = 0.5 * (data["x"][s, idx] @ w - data["y"][s, idx]).pow(2)
        weights = compute_sample_weights(losses, strategy, 0.5)
        assert not torch.equal(weights, torch.ones_like(weights))  # the test would be vacuous otherwise
        (weights * losses).mean().backward()
        w_next = (w - setting.lr * w.grad).detach()
        expected = toy.heldout_loss({k: v[s : s + 1] for k, v in data.items()}, w_next[None])[0]
        torch.testing.assert_close(curve[s, 1], expected, rtol=1e-12, atol=0)


def test_steps_to_target_is_the_first_hit():
    curve = torch.tensor([[3.0, 2.0, 1.0, 0.5, 2.0], [3.0, 3.0, 3.0, 3.0, 3.0], [1.0, 5.0, 0.0, 0.0, 0.0]])
    assert toy.steps_to_target(curve, torch.tensor([1.0, 1.0, 1.0])) == [2, None, 0]


def test_run_setting_keys_and_self_consistency():
    res = toy.run_setting(TINY, SEEDS, r_sweep=(1.0, 10.0))
    assert set(res) == {"setting", "target_per_seed", "logged_steps", "curves", "strategies", "controls", "r_sweep"}
    assert res["logged_steps"] == [0, 10, 20, 30]
    assert set(res["strategies"]) == set(toy.STRATEGIES)
    assert set(res["curves"]) == set(toy.STRATEGIES) | {"uniform_lr_x2"}
    assert all(len(q) == 4 for c in res["curves"].values() for q in c.values())
    assert set(res["r_sweep"]) == set(toy.SWEEP_STRATEGIES) and set(res["r_sweep"]["linupper"]) == {"1.0", "10.0"}
    uni = res["strategies"]["uniform"]
    # Uniform's final loss is the mean of its last steps, so some last step is <= it: it always
    # reaches its own target, within the run, and compares equal to itself.
    assert all(v is not None and v <= TINY.steps for v in uni["steps_to_target"]["per_seed"])
    assert uni["final_test_loss"]["per_seed"] == res["target_per_seed"]
    assert uni["vs_uniform"]["final_loss_ratio"]["per_seed"] == [1.0] * len(SEEDS)
    assert set(uni["vs_uniform"]["verdict"].values()) == {"within seed spread"}
    # The r = 1 entry of the sweep is the main run, not a second one.
    assert res["r_sweep"]["linupper"]["1.0"]["final_test_loss"] == res["strategies"]["linupper"]["final_test_loss"]
    # Mean weights per group are 1 on average over all samples seen (weights have mean 1 per batch).
    fractions = [g.fraction for g in TINY.groups]
    for s in toy.STRATEGIES:
        by_group = res["strategies"][s]["mean_weight_by_group"]
        assert abs(sum(f * w for f, w in zip(fractions, by_group.values())) - 1.0) < 0.1


def test_main_writes_json_and_png(tmp_path, monkeypatch):
    monkeypatch.setattr(toy, "SETTINGS", (TINY,))
    monkeypatch.setattr(toy, "R_SWEEP", (1.0, 3.0))
    out = str(tmp_path) + "/"
    toy.main(["--seeds", "2", "--out", out])
    saved = json.load(open(tmp_path / "toy_regression.json"))
    for key in ("benchmark", "description", "seeds", "strategies", "r_main", "r_sweep", "test_set",
                "final_test_loss", "target", "verdict", "settings", "wall_time_s"):
        assert key in saved
    assert saved["seeds"] == [0, 1] and list(saved["settings"]) == [TINY.name]
    assert (tmp_path / "toy_regression.png").stat().st_size > 10_000
