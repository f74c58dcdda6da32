"""Megatron-LM's ``pretrain_gpt.py``, unchanged, with megatron-rw's reweighted loss.

    PYTHONPATH=/path/to/Megatron-LM:/path/to/megatron-rw \\
    torchrun --nproc-per-node 8 patches/megatron_lm/pretrain_gpt_rw.py \\
        <the usual pretrain_gpt.py flags> \\
        --sample-reweight-strategy linupper --sample-reweight-r 0.4

It imports the checkout's ``pretrain_gpt`` module and runs that file's own
``if __name__ == "__main__":`` block, so ``pretrain`` gets exactly the arguments this checkout's
``pretrain_gpt.py`` passes (they differ between Megatron-LM versions), with two names replaced
while the block runs:

- ``forward_step``: Megatron-LM's, but the ``partial(loss_func, loss_mask, model=model)`` it
  returns becomes ``partial(reweighted_loss_func, loss_mask, config=..., iteration=...)``; the
  config is built once from the parsed ``--sample-reweight-*`` flags and the iteration is
  ``args.curr_iteration``, which Megatron-LM's ``train`` sets before each step;
- ``pretrain`` (and ``parse_and_validate_args`` where the block parses the flags itself): the
  block's ``extra_args_provider`` is chained with ``add_sample_reweight_args``.

With a blend of several prefixes and a strategy other than ``uniform`` (or a preview), training
steps also report each domain's share of the samples and of the weight (rw_domains.py).

Every step checks that it replaced what it expected and raises otherwise; see rw_wrap.py.
"""

from __future__ import annotations

import os
import sys

# rw_wrap.py sits next to this file; torchrun puts the script's directory on sys.path, an import
# from elsewhere (tests) does not.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from rw_wrap import (  # noqa: E402
    ContractError,
    guard_pretrain,
    run_main_block,
    with_extra_args,
    wrap_forward_step,
)

from rw_units import check_packing, packing_of  # noqa: E402

from megatron_rw import ReweightConfig, add_sample_reweight_args  # noqa: E402

# Megatron-LM flags under which its loss_func computes something other than masked cross
# entropy (distillation losses); replacing it by the reweighted loss would silently drop them.
UNSUPPORTED = {
    "modelopt_enabled": "ModelOpt (its loss_func adds distillation losses)",
    "logits_load_dir": "--logits-load-dir (offline knowledge distillation)",
}


def reweight_config(args) -> ReweightConfig:
    """``ReweightConfig`` from Megatron-LM's parsed args; refuses args without our flags (the
    chaining did not reach the parser), settings whose loss is not plain cross entropy, a
    global micro-batch of fewer than 2 units and packed layouts whose rows cannot be found."""
    if not hasattr(args, "sample_reweight_strategy"):
        raise ContractError(
            "the --sample-reweight-* flags are not in Megatron-LM's parsed args: the "
            "extra_args_provider chain did not reach its argument parser")
    for name, what in UNSUPPORTED.items():
        if getattr(args, name, None):
            raise ContractError(
                f"megatron-rw replaces Megatron-LM's loss_func; {what} is not supported")
    config = ReweightConfig.from_args(args)
    # Megatron-LM 0.19's data_parallel_size is the replicate degree; weight-sharded TP (GTP)
    # ranks of a replicate hold distinct micro-batches as well.
    data_ranks = args.data_parallel_size * getattr(args, "gtp_weight_remat_size", 1)
    config.check_normalisation_group(data_ranks, args.micro_batch_size)
    check_packing(packing_of(args), args)
    return config


def current_iteration(args) -> int:
    """Optimizer steps done before this one. ``train`` sets ``curr_iteration`` before every step;
    an evaluation before the first step (e.g. ``--skip-train``) only has ``iteration``."""
    if hasattr(args, "curr_iteration"):
        return args.curr_iteration
    return args.iteration


def run(pretrain_gpt, get_args, get_eod=None, get_domains=None, get_sample_log=None) -> None:
    """Run ``pretrain_gpt``'s main block with the reweighted ``forward_step`` and flags;
    ``get_eod`` returns the tokenizer's end-of-document id (for documents as units),
    ``get_domains`` the training blend's member names (for per-domain shares),
    ``get_sample_log`` the ``--log-sample-weights`` log (rw_samples.py)."""
    for name in ("forward_step", "loss_func", "pretrain"):
        if not hasattr(pretrain_gpt, name):
            raise ContractError(
                f"{pretrain_gpt.__file__} defines no {name}: not Megatron-LM's pretrain_gpt.py?")
    forward_step = wrap_forward_step(
        pretrain_gpt.forward_step,
        get_config=lambda: reweight_config(get_args()),
        get_iteration=lambda: current_iteration(get_args()),
        expected_loss_func=pretrain_gpt.loss_func,
        get_eod=get_eod,
        get_domains=get_domains,
        get_packing=lambda: packing_of(get_args()),
        get_sample_log=get_sample_log,
    )
    pretrain = guard_pretrain(pretrain_gpt.pretrain, forward_step, add_sample_reweight_args)
    overrides = {"forward_step": forward_step, "pretrain": pretrain}
    # The newest version read parses the flags in the main block itself, before pretrain.
    if hasattr(pretrain_gpt, "parse_and_validate_args"):
        overrides["parse_and_validate_args"] = with_extra_args(
            pretrain_gpt.parse_and_validate_args, add_sample_reweight_args)
    run_main_block(pretrain_gpt, overrides)
    if pretrain.calls == 0:
        raise ContractError(f"the main block of {pretrain_gpt.__file__} never called pretrain")


def main() -> None:
    try:
        import pretrain_gpt
    except ModuleNotFoundError as e:
        if e.name != "pretrain_gpt":
            raise
        raise SystemExit("cannot import Megatron-LM's pretrain_gpt: put the checkout on "
                         "PYTHONPATH (PYTHONPATH=/path/to/Megatron-LM)") from e
    from megatron.training import get_args

    def get_eod() -> int:
        # Imported when first needed: the tokenizer exists only once pretrain has built it.
        from megatron.training import get_tokenizer
        return get_tokenizer().eod

    from rw_domains import domain_names
    from rw_samples import sample_log

    run(pretrain_gpt, get_args, get_eod, lambda: domain_names(get_args()),
        lambda: sample_log(get_args()))


if __name__ == "__main__":
    main()
