"""A stand-in for Megatron-LM's ``pretrain_gpt.py`` with the same interface the patch relies on.

Mirrors the contract of NVIDIA/Megatron-LM at commit 000ab9d6, written for this test: the
names, signatures and return shapes of ``loss_func`` (its plain cross-entropy branch: no ModelOpt,
NaN or spike checks) and ``forward_step``, and the structure of the ``__main__`` block (startup
timestamps, in-process-restart wrapping, the ``pretrain`` call's arguments; ModelOpt absent, so
no extra_args_provider). ``get_batch`` reads the test's micro-batch dicts; the stand-in
``megatron.training.pretrain`` builds the model and the data.
"""

import time

_PROGRAM_START_TIME = time.time()

from functools import partial  # noqa: E402
from typing import Optional  # noqa: E402

import torch  # noqa: E402

from megatron.core.enums import ModelType  # noqa: E402
from megatron.core.models.gpt import GPTModel  # noqa: E402
from megatron.training import (  # noqa: E402
    get_args,
    get_timers,
    inprocess_restart,
    pretrain,
    print_rank_0,
    set_startup_timestamps,
)


def gpt_builder(args, pre_process, post_process, vp_stage=None, config=None):
    raise NotImplementedError("the stand-in pretrain builds its own model")


def model_provider(model_builder, pre_process=True, post_process=True, vp_stage=None):
    return model_builder(get_args(), pre_process, post_process, vp_stage)


def get_batch(data_iterator, vp_stage=None):
    """Generate a batch (Megatron-LM's order: tokens, labels, loss_mask, attention_mask,
    position_ids)."""
    batch = next(data_iterator)
    return batch["tokens"], batch["labels"], batch["loss_mask"], None, batch["position_ids"]


def loss_func(
    loss_mask: torch.Tensor, output_tensor: torch.Tensor, model: Optional[GPTModel] = None
):
    """``(Σ mask·l, Σ mask as int, {"lm loss": [Σ mask·l, Σ mask]})`` for one micro-batch."""
    losses = output_tensor.view(-1).float()
    loss_mask = loss_mask.view(-1).float()
    loss = torch.sum(losses * loss_mask)

    num_tokens = loss_mask.sum().clone().detach().to(torch.int)
    report = {'lm loss': torch.cat([loss.clone().detach().view(1), num_tokens.view(1)])}

    return loss, num_tokens, report


def forward_step(data_iterator, model: GPTModel, return_schedule_plan: bool = False):
    """One micro-batch: per-token losses and the loss function bound to its mask."""
    timers = get_timers()

    timers('batch-generator', log_level=2).start()
    tokens, labels, loss_mask, attention_mask, position_ids = get_batch(data_iterator)
    timers('batch-generator').stop()

    if return_schedule_plan:
        raise NotImplementedError("EP A2A overlap is not part of the stand-in")
    output_tensor = model(tokens, position_ids, attention_mask, labels=labels, loss_mask=loss_mask)

    return output_tensor, partial(loss_func, loss_mask, model=model)


def train_valid_test_datasets_provider(train_val_test_num_samples, vp_stage=None):
    print_rank_0("> the stand-in pretrain builds its own micro-batches")
    return None, None, None


if __name__ == "__main__":
    _MAIN_ENTRY_TIME = time.time()

    set_startup_timestamps(program_start=_PROGRAM_START_TIME, main_entry=_MAIN_ENTRY_TIME)

    train_valid_test_datasets_provider.is_distributed = True

    pretrain, store = inprocess_restart.maybe_wrap_for_inprocess_restart(pretrain)

    pretrain(
        train_valid_test_datasets_provider,
        partial(model_provider, gpt_builder),
        ModelType.encoder_or_decoder,
        forward_step,
        args_defaults={'tokenizer_type': 'GPT2BPETokenizer'},
        extra_args_provider=None,
        store=store,
    )
