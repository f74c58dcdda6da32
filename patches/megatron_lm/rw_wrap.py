"""Plumbing that puts megatron-rw's loss into Megatron-LM's own ``pretrain_gpt.py``.

Importable without Megatron-LM (``megatron.training`` exists only in a Megatron-LM checkout):
nothing here imports it. The contract it relies on, read in three versions of Megatron-LM's
``pretrain_gpt.py`` (see patches/README.md):

- ``forward_step(data_iterator, model, ...)`` returns ``(output_tensor, loss_fn)`` where
  ``output_tensor`` is the ``[b, s]`` per-token loss (or a schedule plan) and ``loss_fn`` is
  ``functools.partial(loss_func, loss_mask, **keywords)`` with ``loss_mask`` ``[b, s]``;
- ``loss_func(loss_mask, output_tensor, model=None, ...)`` returns
  ``(sum(mask * l), num_tokens, {"lm loss": [sum, num_tokens]})``, the contract that
  ``reweighted_loss_func(..., contract="token_sum")`` reproduces bit for bit under ``uniform``;
- the script's ``if __name__ == "__main__":`` block calls ``pretrain(...)`` with ``forward_step``
  and, depending on the version, hands an ``extra_args_provider`` to ``pretrain`` or to
  ``parse_and_validate_args``.

Anything else raises :class:`ContractError` naming what was found: training silently with
Megatron-LM's unweighted loss is the failure this module exists to prevent.
"""

from __future__ import annotations

import ast
import functools
import inspect
from types import CodeType, ModuleType
from typing import Any, Callable, Dict, Optional, Sequence

import torch

# Keywords Megatron-LM binds into its loss partial that the reweighted loss can drop: `model`
# only feeds ModelOpt distillation (the script refuses ModelOpt), `input_masked_positions` only
# adds input-masking metrics to the report. Any other keyword may change the loss: refuse it.
DROPPABLE_KEYWORDS = ("model", "input_masked_positions")


class ContractError(RuntimeError):
    """Megatron-LM's pretrain_gpt.py does not have the shape this patch was written for."""


class BatchTap:
    """An iterator that yields what ``source`` yields and keeps the last batch's tensors named in
    ``keys`` (``kept``): what Megatron-LM's ``get_batch`` draws passes through unchanged."""

    def __init__(self, source: Any, keys=("labels", "dataset_id", "cu_seqlens")):
        self.source = source
        self.keys = keys
        self.kept: Dict[str, torch.Tensor] = {}

    def __iter__(self):
        return self

    def __next__(self):
        batch = next(self.source)
        if isinstance(batch, dict):
            self.kept = {k: batch[k] for k in self.keys if isinstance(batch.get(k), torch.Tensor)}
        return batch


def _describe(obj: Any) -> str:
    if isinstance(obj, functools.partial):
        keywords = ", ".join(f"{k}=..." for k in obj.keywords)
        args = ", ".join(type(a).__name__ for a in obj.args)
        return f"functools.partial({_describe(obj.func)}; args: ({args}); keywords: ({keywords}))"
    name = getattr(obj, "__qualname__", None) or type(obj).__name__
    return f"{name} from {getattr(obj, '__module__', '?')}" if callable(obj) else repr(obj)[:80]


def loss_mask_of(loss_fn: Any, expected_loss_func: Optional[Callable] = None,
                 droppable=DROPPABLE_KEYWORDS) -> Optional[torch.Tensor]:
    """The ``loss_mask`` ``[b, s]`` that Megatron-LM bound into ``partial(loss_func, loss_mask,
    ...)``; None on intermediate pipeline stages.

    Raises:
        ContractError: ``loss_fn`` is not such a partial (not a partial, not exactly one
            positional argument, the argument is not a tensor, a keyword that may change the
            loss, or a function other than ``expected_loss_func``).
    """
    if not isinstance(loss_fn, functools.partial):
        problem = "is not a functools.partial"
    elif expected_loss_func is not None and loss_fn.func is not expected_loss_func:
        problem = f"wraps a function other than {_describe(expected_loss_func)}"
    # None: Megatron-LM's get_batch gives intermediate pipeline stages no batch; their loss
    # function is never called.
    elif len(loss_fn.args) != 1 or not (loss_fn.args[0] is None
                                        or isinstance(loss_fn.args[0], torch.Tensor)):
        problem = "does not bind exactly one positional argument, the loss mask tensor"
    elif set(loss_fn.keywords) - set(droppable):
        unknown = sorted(set(loss_fn.keywords) - set(droppable))
        problem = f"binds keywords the reweighted loss would drop: {unknown}"
    else:
        return loss_fn.args[0]
    raise ContractError(
        f"forward_step returned a loss function that {problem}: {_describe(loss_fn)}. Expected "
        "functools.partial(loss_func, loss_mask, model=model) as in Megatron-LM's pretrain_gpt.py; "
        "refusing to train with a loss megatron-rw would not reweight.")


def megatron_checked_loss(loss_mask: Optional[torch.Tensor], output_tensor: torch.Tensor, *,
                          reweighted: Callable, megatron_loss: Callable,
                          skip_nonfinite: bool = False):
    """The reweighted loss, validated by Megatron-LM's own ``loss_func``.

    Megatron-LM's ``loss_func`` both computes the loss and runs its checks (the rerun state
    machine's NaN/Inf check under ``--check-for-nan-in-loss-and-grad``, the spiky-loss check
    under ``--check-for-spiky-loss``, whatever a later version adds). It is called here on the
    same quantity it sees unpatched, the unweighted token losses, for those checks alone; its
    result is dropped. A NaN sample therefore stops a reweighted run exactly as it stops an
    unweighted one, and the spiky-loss history is the unpatched one. With ``skip_nonfinite``
    it sees the token losses without the non-finite samples, which the reweighted loss leaves
    out too, so the run trains on.

    Args:
        loss_mask: ``[b, s]``, as bound by Megatron-LM's ``forward_step``.
        output_tensor: ``[b, s]`` per-token losses.
        reweighted: ``partial(reweighted_loss_func, loss_mask, config=..., iteration=...)``.
        megatron_loss: Megatron-LM's ``partial(loss_func, loss_mask, model=...)``.
        skip_nonfinite: ``ReweightConfig.skip_nonfinite``.

    Returns:
        What ``reweighted(output_tensor)`` returns.
    """
    from megatron_rw.nonfinite import without_nonfinite_samples

    # The reweighted loss first: its data-parallel all-gather then runs on every rank before a
    # check may raise on one of them, the order Megatron-LM's loss_func has (checks last).
    result = reweighted(output_tensor)
    with torch.no_grad():  # the checks need no graph; Megatron's own sum is not backpropagated
        checked = (without_nonfinite_samples(output_tensor, loss_mask) if skip_nonfinite
                   else output_tensor)
        megatron_loss(checked)
    return result


def wrap_forward_step(forward_step: Callable, get_config: Callable[[], Any],
                      get_iteration: Callable[[], int], *, loss_func: Optional[Callable] = None,
                      expected_loss_func: Optional[Callable] = None,
                      contract: str = "token_sum",
                      get_eod: Optional[Callable[[], int]] = None,
                      get_domains: Optional[Callable[[], Sequence[str]]] = None,
                      get_packing: Optional[Callable[[], Any]] = None,
                      get_sample_log: Optional[Callable[[], Any]] = None) -> Callable:
    """``forward_step`` with its loss partial replaced by the reweighted loss, checked by
    Megatron-LM's own ``loss_func`` (:func:`megatron_checked_loss`).

    Args:
        forward_step: Megatron-LM's ``forward_step``; called with whatever the schedule passes
            (``(data_iterator, model)``, plus ``return_schedule_plan=True`` or a checkpointing
            flag in some versions), so every signature keeps working. With
            ``return_schedule_plan=True`` (``--overlap-moe-expert-parallel-comm``) the first
            element is a schedule plan, passed through; its loss partial is replaced as always.
        get_config: returns the ``ReweightConfig``; called once, on the first step, because
            the flags are parsed only inside ``pretrain``.
        get_iteration: returns the optimizer steps completed before this one (selects r and
            the burn-in); called every micro-batch.
        loss_func: the replacement, default ``megatron_rw.reweighted_loss_func``.
        expected_loss_func: if given, the loss partial must wrap exactly this function.
        contract: passed to ``loss_func``; ``"token_sum"`` is Megatron-LM's 3-tuple.
        get_eod: returns the tokenizer's end-of-document id; needed with documents as units
            (``config.unit == "document"``), whose slots come from the data iterator's labels
            (patches/megatron_lm/rw_units.py).
        get_domains: returns the training blend's member names in ``dataset_id`` order ([] for
            none; called once). With names, a strategy other than ``uniform`` or a preview,
            training steps report per-domain shares of the weights (patches/megatron_lm/
            rw_domains.py); ``loss_func`` then gets ``telemetry=``.
        get_packing: returns the run's ``rw_units.Packing`` (None: unpacked micro-batches;
            called once). Packed micro-batches are weighed per original row (or document):
            ``loss_func`` then gets ``units=`` and ``num_units=`` (rw_units.py).
        get_sample_log: returns the run's ``rw_samples.SampleLog`` (None without
            ``--log-sample-weights``; every rank has one, only the writing rank a file; called
            once). Its ``sink(iteration, r)`` receives each sample's loss and
            weight on the logged steps; with a log the rows carry their domain, uniform or not.

    In evaluation (the model in eval mode, as Megatron-LM's ``evaluate`` sets it) the result of
    ``forward_step`` is returned as it is, after the same contract check: validation losses are
    Megatron-LM's own.

    Returns:
        A function returning ``(output, partial(megatron_checked_loss, loss_mask,
        reweighted=partial(loss_func, loss_mask, config=..., iteration=..., contract=...),
        megatron_loss=<Megatron-LM's partial>, skip_nonfinite=...))``; its signature
        (``inspect.signature``) is ``forward_step``'s.
    """
    if loss_func is None:
        from megatron_rw import reweighted_loss_func as loss_func
    # Filled on the first call: the flags are parsed inside pretrain.
    config, domains, packing, samples = [], [], [], []

    @functools.wraps(forward_step)
    def reweighted_forward_step(*args, **kwargs):
        if not config:
            config.append(get_config())
            samples.append(get_sample_log() if get_sample_log is not None else None)
            reweights = config[0].strategy != "uniform" or bool(config[0].preview)
            wanted = reweights or samples[0] is not None
            domains.extend(get_domains() if get_domains is not None and wanted else ())
            packing.append(get_packing() if get_packing is not None else None)
        if not _training(args, kwargs):
            # Evaluation: Megatron's own loss, bit for bit. Weights only shape gradients; a
            # validation loss is the plain token mean, and the hook's gather is not needed.
            result = forward_step(*args, **kwargs)
            if not (isinstance(result, tuple) and len(result) == 2):
                raise ContractError(f"forward_step returned {_describe(result)}, expected "
                                    "(output_tensor, loss_func)")
            loss_mask_of(result[1], expected_loss_func)
            return result
        per_doc = getattr(config[0], "unit", "sample") == "document"
        per_domain = bool(domains)
        tap = None
        if per_doc or per_domain or packing[0] is not None:
            args, kwargs, tap = _tap_data_iterator(args, kwargs, BatchTap)
        result = forward_step(*args, **kwargs)
        kept = tap.kept if tap is not None else {}  # what forward_step's get_batch drew
        if not (isinstance(result, tuple) and len(result) == 2):
            raise ContractError(
                f"forward_step returned {_describe(result)}, expected (output_tensor, loss_func)")
        output, megatron_loss = result
        loss_mask = loss_mask_of(megatron_loss, expected_loss_func)
        extra = {}
        rows = None if loss_mask is None else loss_mask.shape[0]
        if (per_doc or packing[0] is not None) and loss_mask is not None:
            from rw_units import unit_ids
            if per_doc and packing[0] is None and get_eod is None:
                raise ContractError("documents as units need the tokenizer's end-of-document id")
            per_row = getattr(config[0], "units_per_row", 1)
            units, num_units = unit_ids(
                kept, loss_mask, per_row=per_row, packing=packing[0],
                eod=get_eod() if per_doc and packing[0] is None else None)
            if units is not None:
                extra.update(units=units, num_units=num_units)
            if packing[0] is not None:  # the original rows of the one packed row
                rows = loss_mask.shape[0] * num_units // per_row
        iteration = get_iteration()
        sink = None
        if samples[0] is not None and loss_mask is not None:
            from megatron_rw.schedule import temperature_at
            sink = samples[0].sink(iteration, temperature_at(config[0], iteration))
        if (per_domain or sink is not None) and loss_mask is not None:
            from rw_domains import row_domains

            from megatron_rw.telemetry import SampleTelemetry
            ids = (row_domains(kept.get("dataset_id"), rows, loss_mask.device)
                   if per_domain else None)
            extra["telemetry"] = SampleTelemetry(domain_ids=ids, domain_names=tuple(domains),
                                                 sink=sink, shares=True)
        reweighted = functools.partial(loss_func, loss_mask, config=config[0],
                                       iteration=iteration, contract=contract, **extra)
        return output, functools.partial(
            megatron_checked_loss, loss_mask, reweighted=reweighted, megatron_loss=megatron_loss,
            skip_nonfinite=getattr(config[0], "skip_nonfinite", False))

    return reweighted_forward_step


def _training(args: tuple, kwargs: dict) -> bool:
    """Whether ``forward_step``'s model (second positional or ``model=``) is in training mode;
    Megatron-LM's ``evaluate`` switches it to eval mode."""
    model = args[1] if len(args) > 1 else kwargs.get("model")
    return bool(getattr(model, "training", True))


def _tap_data_iterator(args: tuple, kwargs: dict, tap_class):
    """``forward_step``'s arguments with its data iterator (first positional or
    ``data_iterator=``) wrapped in ``tap_class``, and the tap; None (ranks that read no data)
    stays None."""
    source = args[0] if args else kwargs.get("data_iterator")
    tap = None if source is None else tap_class(source)
    if args:
        return (tap if tap is not None else source, *args[1:]), kwargs, tap
    return args, {**kwargs, "data_iterator": tap if tap is not None else source}, tap


def chain_extra_args(*providers: Optional[Callable]) -> Callable:
    """One ``extra_args_provider`` that applies each non-None provider in order.

    Megatron-LM's contract: a provider takes the parser and returns it. A provider that returns
    None (a common slip) keeps the parser it was given.
    """
    active = [p for p in providers if p is not None]

    def extra_args_provider(parser):
        for provider in active:
            result = provider(parser)
            parser = parser if result is None else result
        return parser

    return extra_args_provider


def with_extra_args(func: Callable, provider: Callable) -> Callable:
    """``func`` (``pretrain`` or ``parse_and_validate_args``) with ``provider`` chained after
    whatever ``extra_args_provider`` its caller passes; ``func`` itself if it takes none."""
    signature = inspect.signature(func)
    if "extra_args_provider" not in signature.parameters:
        return func

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.arguments["extra_args_provider"] = chain_extra_args(
            bound.arguments.get("extra_args_provider"), provider)
        return func(*bound.args, **bound.kwargs)

    return wrapper


def guard_pretrain(pretrain: Callable, forward_step: Callable, provider: Callable) -> Callable:
    """``pretrain`` that chains ``provider`` and refuses to start without ``forward_step``.

    ``guard.calls`` counts the calls, so the caller can tell whether the main block used it.
    """
    inner = with_extra_args(pretrain, provider)

    @functools.wraps(pretrain)
    def guard(*args, **kwargs):
        if not any(a is forward_step for a in (*args, *kwargs.values())):
            raise ContractError(
                "pretrain_gpt.py's main block called pretrain without its module-level "
                f"forward_step; arguments: {[_describe(a) for a in (*args, *kwargs.values())]}")
        guard.calls += 1
        return inner(*args, **kwargs)

    guard.calls = 0
    return guard


def _is_main_test(test: ast.expr) -> bool:
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1
            and isinstance(test.ops[0], ast.Eq)):
        return False
    sides = [test.left, test.comparators[0]]
    return (any(isinstance(s, ast.Name) and s.id == "__name__" for s in sides)
            and any(isinstance(s, ast.Constant) and s.value == "__main__" for s in sides))


def main_block(path: str) -> CodeType:
    """The body of the top-level ``if __name__ == "__main__":`` block of the file at ``path``,
    compiled with the file's name and line numbers (tracebacks point into it)."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), filename=path)
    for node in tree.body:
        if isinstance(node, ast.If) and _is_main_test(node.test):
            return compile(ast.Module(body=node.body, type_ignores=[]), path, "exec")
    raise ContractError(f'{path} has no top-level `if __name__ == "__main__":` block')


def run_main_block(module: ModuleType, overrides: Dict[str, Any]) -> None:
    """Run ``module``'s own main block with some of its globals replaced, then restore them.

    The block runs in the module's namespace, not a copy, so functions it calls (a ``main()``,
    say) see the replacements too. Replaced names are restored afterwards, and names the
    block created are removed, so the module can be run again.
    """
    code = main_block(module.__file__)
    namespace = vars(module)
    before = dict(namespace)
    namespace.update(overrides)
    try:
        exec(code, namespace)
    finally:
        for name in set(namespace) - set(before):
            del namespace[name]
        namespace.update(before)
