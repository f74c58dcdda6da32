"""Reweighting strategies: pure functions of the normalised per-sample loss.

A strategy maps ``x`` — per-sample losses rescaled to ``[-delta, delta]`` over the global
micro-batch (lowest loss -> -delta, highest -> +delta) — to a score ``f(x)``. Scores become
weights through a tempered softmax (see :mod:`megatron_rw.weights`): a higher score means a
larger weight. Strategies never see raw losses, so they are scale free.

A strategy may bring its own normaliser (``register_strategy(..., normalise=...)``): ``robust``
measures losses in IQRs from the batch median instead (:mod:`megatron_rw.robust`). Strategies
without one get the min-max normalisation above, computed exactly as before.

This module imports neither ``torch.distributed`` nor Megatron.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple, Union

import torch

from megatron_rw.robust import robust_positions, robust_score

StrategyFn = Callable[[torch.Tensor, float], torch.Tensor]
"""``f(x, delta) -> scores``: ``x`` is a float32 tensor of any shape with values in
``[-delta, delta]`` (or whatever the strategy's own normaliser returns); the result has the
same shape."""

Normaliser = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]
"""``normalise(losses [N], valid [N] bool, delta) -> x [N]`` float32: invalid entries must be
ignored by every statistic and get a finite ``x``; no host synchronisation."""

_REGISTRY: Dict[str, StrategyFn] = {}
_NORMALISERS: Dict[str, Normaliser] = {}  # only strategies with their own normaliser


def register_strategy(
    name: str,
    fn: Optional[StrategyFn] = None,
    *,
    normalise: Optional[Normaliser] = None,
    overwrite: bool = False,
):
    """Register ``fn`` under ``name``; usable as ``@register_strategy("name")``.

    Registered names become valid values of ``--sample-reweight-strategy`` and
    ``ReweightConfig.strategy``. Register before parsing arguments.

    Args:
        name: the strategy's name.
        fn: ``f(x, delta) -> scores`` (elementwise; must not synchronise with the host).
        normalise: the strategy's own ``normalise(losses, valid, delta) -> x``; None for the
            default min-max normalisation to ``[-delta, delta]``.
        overwrite: allow replacing an existing entry (the built-ins included).
    """

    def _register(f: StrategyFn) -> StrategyFn:
        if not overwrite and name in _REGISTRY:
            raise ValueError(f"sample-reweight strategy {name!r} is already registered")
        _REGISTRY[name] = f
        _NORMALISERS.pop(name, None)
        if normalise is not None:
            _NORMALISERS[name] = normalise
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


def get_normaliser(strategy: Union[str, StrategyFn]) -> Optional[Normaliser]:
    """The normaliser registered with a strategy (by name, or by the registered function
    itself); None means the default min-max normalisation."""
    if isinstance(strategy, str):
        get_strategy(strategy)  # an unknown name raises here, listing the known ones
        return _NORMALISERS.get(strategy)
    for name, fn in _REGISTRY.items():
        if fn is strategy and name in _NORMALISERS:
            return _NORMALISERS[name]
    return None


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


# Quartile-based normalisation and a trapezoid score; formula, constants and the measurements
# behind them in megatron_rw/robust.py.
register_strategy("robust", robust_score, normalise=robust_positions)
