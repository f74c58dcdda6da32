"""Stand-in for Megatron-LM's ``megatron.training`` (not in the megatron-core wheel) for
tests/test_patches.py: the names ``pretrain_gpt.py`` imports, and a ``pretrain`` that trains the
tiny GPT of tests/_layouts.py through megatron-core's real ``get_forward_backward_func``, DDP and
``get_megatron_optimizer`` on CPU/gloo with the ``forward_step_func`` it is given.

This directory has no ``megatron/__init__.py``: like the installed megatron-core, ``megatron``
is a namespace package, so with this directory on ``sys.path`` ``megatron.core`` is the real one.

Like Megatron-LM's ``pretrain`` it parses ``sys.argv`` (unknown flags are errors) after calling
``extra_args_provider(parser)``, applies ``args_defaults``, and sets ``args.curr_iteration``
before each optimizer step. Per step it records, into ``RECORDS[-1]``, the ``lm loss`` report
averaged over micro-batches and DP ranks, every ``main_grad`` after the backward passes, and
every parameter after the optimizer step.
"""

from __future__ import annotations

import argparse

import torch
import torch.distributed as dist

from . import inprocess_restart

# What pretrain_gpt.py imports from here.
__all__ = ["get_args", "get_timers", "inprocess_restart", "pretrain", "print_rank_0",
           "set_startup_timestamps"]

MICRO, ROWS = 2, 4  # micro-batches per step, rows per global micro-batch

_ARGS = None
RECORDS = []  # one dict per pretrain() call


def get_args():
    return _ARGS


class _Timer:
    def start(self, barrier=False):
        pass

    def stop(self, barrier=False):
        pass


def get_timers():
    return lambda name, log_level=0: _Timer()


def print_rank_0(message):
    if not dist.is_initialized() or dist.get_rank() == 0:
        print(message, flush=True)


def set_startup_timestamps(program_start=None, main_entry=None):
    pass


def _parse_args(extra_args_provider, args_defaults):
    parser = argparse.ArgumentParser(allow_abbrev=False)
    parser.add_argument("--train-iters", type=int, required=True)
    parser.add_argument("--tokenizer-type", default=None)
    if extra_args_provider is not None:
        parser = extra_args_provider(parser)
    args = parser.parse_args()
    for key, value in args_defaults.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    return args


def pretrain(train_valid_test_dataset_provider, model_provider, model_type, forward_step_func,
             process_non_loss_data_func=None, extra_args_provider=None, args_defaults={},
             get_embedding_ranks=None, get_position_embedding_ranks=None, non_loss_data_func=None,
             store=None, inprocess_call_wrapper=None):
    """Megatron-LM's signature; builds the tiny GPT itself (model_provider and the dataset
    provider are not called) and trains ``--train-iters`` steps of MICRO micro-batches."""
    global _ARGS
    from megatron_rw.cpu.runtime import backend, enable_cpu_runtime

    enable_cpu_runtime()
    _ARGS = _parse_args(extra_args_provider, args_defaults)
    if not dist.is_initialized():
        dist.init_process_group(backend())
    from megatron.core import parallel_state as ps
    from megatron.core.pipeline_parallel import get_forward_backward_func
    from tests import _layouts as L

    chunks, optimizer, _ = L.build_model_and_optimizer(L.Layout())
    model = chunks[0]
    dp = ps.get_data_parallel_world_size(with_context_parallel=False)
    # As Megatron-LM's validate_args sets them.
    _ARGS.data_parallel_size, _ARGS.micro_batch_size = dp, ROWS // dp
    record = {"loss": [], "grads": [], "params": []}
    for step in range(_ARGS.train_iters):
        _ARGS.curr_iteration = step
        model.zero_grad_buffer()
        optimizer.zero_grad()
        batches = iter([L.local_micro_batch(L.uneven_global_micro_batch(step, m, ROWS))
                        for m in range(MICRO)])
        reports = get_forward_backward_func()(
            forward_step_func=forward_step_func, data_iterator=batches, model=model,
            num_microbatches=MICRO, seq_length=L.SEQ, micro_batch_size=ROWS // dp,
            forward_only=False)
        record["grads"].append([p.main_grad.clone() for p in model.parameters()])
        optimizer.step()
        record["params"].append([p.detach().clone() for p in model.parameters()])
        total = torch.stack([r["lm loss"] for r in reports]).sum(0).double()
        dist.all_reduce(total, group=ps.get_data_parallel_group(with_context_parallel=True))
        record["loss"].append((total[0] / total[1]).item())
    RECORDS.append(record)
    ps.destroy_model_parallel()
