import pytest
import torch

from megatron_rw import available_strategies, get_strategy, register_strategy
from megatron_rw import strategies as strategies_module

X = torch.arange(-10, 11, dtype=torch.float32) / 10  # exact 0 in the middle


def test_builtins_registered():
    assert set(available_strategies()) >= {"uniform", "linupper", "quadratic", "extremes", "robust"}


def test_formulas_match_the_paper():
    d = 0.5
    x = X * d
    torch.testing.assert_close(get_strategy("uniform")(x, d), torch.zeros_like(x))
    torch.testing.assert_close(get_strategy("linupper")(x, d), torch.minimum(x + d, torch.full_like(x, d)))
    torch.testing.assert_close(get_strategy("quadratic")(x, d), 1 - x**2 / d**2)
    torch.testing.assert_close(get_strategy("extremes")(x, d), x.abs())


def test_linupper_is_monotone_then_flat():
    f = get_strategy("linupper")(X, 1.0)
    assert torch.all(f[1:] >= f[:-1])
    assert torch.all(f[X >= 0] == 1.0)
    assert torch.all(f[X < 0] < 1.0)


def test_unknown_name_lists_known_ones():
    with pytest.raises(ValueError, match="unknown sample-reweight strategy 'nope'.*linupper"):
        get_strategy("nope")


def test_register_custom_and_refuse_silent_overwrite(monkeypatch):
    monkeypatch.setattr(strategies_module, "_REGISTRY", dict(strategies_module._REGISTRY))

    @register_strategy("lower")
    def lower(x, delta):
        return -x

    assert get_strategy("lower") is lower
    assert "lower" in available_strategies()
    with pytest.raises(ValueError, match="already registered"):
        register_strategy("lower", lower)
    register_strategy("lower", lambda x, d: x, overwrite=True)
    assert get_strategy("lower")(torch.ones(1), 1.0).item() == 1.0
