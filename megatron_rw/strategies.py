"""Reweighting strategies: pure functions of the normalised per-sample loss.

A strategy maps ``x`` — per-sample losses rescaled to ``[-delta, delta]`` over the global
micro-batch (lowest loss -> -delta, highest -> +delta) — to a score ``f(x)``. Scores become
weights through a tempered softmax (see :mod:`megatron_rw.weights`): a higher score means a
larger weight. Strategies never see raw losses, so they are scale free.

This module imports neither ``torch.distributed`` nor Megatron.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

import torch

StrategyFn = Callable[[torch.Tensor, float], torch.Tensor]
"""``f(x, delta) -> scores``: ``x`` is a float32 tensor of any shape with values in
``[-delta, delta]``; the result has the same shape."""

_REGISTRY: Dict[str, StrategyFn] = {}


def register_strategy(
    name: str, fn: Optional[StrategyFn] = None, *, overwrite: bool = False
):
    """Register ``fn`` under ``name``; usable as ``@register_strategy("name")``.

    Registered names become valid values of ``--sample-reweight-strategy`` and
    ``ReweightConfig.strategy``. Register before parsing arguments.

    Args:
        name: the strategy's name.
        fn: ``f(x, delta) -> scores`` (elementwise; must not synchronise with the host).
        overwrite: allow replacing an existing entry (the built-ins included).
    """

    def _register(f: StrategyFn) -> StrategyFn:
        if not overwrite and name in _REGISTRY:
            raise ValueError(f"sample-reweight strategy {name!r} is already registered")
        _REGISTRY[name] = f
        return f

    return _register if fn is None else _register(fn)


def available_strategies() -> Tuple[str, ...]:
    """Names of all registered strategies, sorted."""
    return tuple(sorted(_REGISTRY))


def get_strategy(name: str) -> StrategyFn:
    """Look up a strategy; an unknown name raises ``ValueError`` listing the known ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(available_strategies())
        raise ValueError(
            f"unknown sample-reweight strategy {name!r}; known strategies: {known}"
        ) from None


@register_strategy("uniform")
def uniform(x: torch.Tensor, delta: float) -> torch.Tensor:
    """Baseline: every sample scores 0, so every weight is exactly 1."""
    return torch.zeros_like(x)


@register_strategy("linupper")
def linupper(x: torch.Tensor, delta: float) -> torch.Tensor:
    """``min(x + delta, delta)``: scores rise with the loss up to the midpoint, then stay flat.

    Samples the model already fits well (below mid-range) are down-weighted; everything
    above mid-range shares the same, highest weight, so outliers are not amplified.
    """
    return torch.clamp(x + delta, max=delta)


@register_strategy("quadratic")
def quadratic(x: torch.Tensor, delta: float) -> torch.Tensor:
    """``1 - x^2 / delta^2``: favours mid-range losses, down-weights both ends."""
    return 1.0 - (x / delta) ** 2


@register_strategy("extremes")
def extremes(x: torch.Tensor, delta: float) -> torch.Tensor:
    """``|x|``: favours the lowest and the highest losses, down-weights the middle."""
    return x.abs()
