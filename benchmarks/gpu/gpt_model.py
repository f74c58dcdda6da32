"""A GPT, its DDP wrapper and optimizer from megatron-core, for harnesses that step the schedule
themselves (``benchmarks.gpu.gpu_overhead``, tests/test_gpu.py's bitwise checks).

Built from flags parsed by Megatron's own parser (``benchmarks.megatron_args``): megatron-core's
``GPTModel`` with Transformer Engine's layer spec when it imports and the local one otherwise
(megatron_rw.cpu.layers' on a CPU, where the local spec's fused kernels cannot run), Megatron DDP
(fp32 gradient reduction in bf16), Megatron's optimizer. No training loop, checkpoints or data:
the callers time or compare single steps of ``get_forward_backward_func``. Needs model-parallel
state initialised (``parallel_state.initialize_model_parallel``) and, on a CPU, the CPU runtime
installed before megatron is imported.
"""

from __future__ import annotations

import argparse
import math

import torch

from megatron_rw.cpu import runtime as cpu_runtime


def padded_vocab_size(vocab: int, args: argparse.Namespace) -> int:
    """Megatron's padding: a multiple of ``--make-vocab-size-divisible-by`` × TP."""
    multiple = args.make_vocab_size_divisible_by * args.tensor_model_parallel_size
    return int(math.ceil(vocab / multiple) * multiple)


def layer_spec(config, args: argparse.Namespace):
    """Transformer Engine's spec where it imports, megatron-core's local one otherwise; on a
    CPU the project's (megatron_rw/cpu/layers.py)."""
    if cpu_runtime.is_enabled():
        from megatron_rw.cpu.layers import cpu_gpt_block_spec
        return cpu_gpt_block_spec(config)
    from megatron.core.models.gpt import gpt_layer_specs as specs
    try:
        import transformer_engine  # noqa: F401
        return specs.get_gpt_layer_with_transformer_engine_spec()
    except ImportError:
        return specs.get_gpt_layer_local_spec(normalization=args.normalization)


def build(args: argparse.Namespace, vocab_size: int):
    """``(model, optimizer, config)`` for ``args`` (parsed flags) and a padded vocabulary.

    ``model`` is the DDP-wrapped ``GPTModel`` (on the current CUDA device where there is one),
    ``config`` its ``TransformerConfig`` with Megatron's gradient finalisation and loss scaling
    hooked in, as ``pretrain`` sets them.
    """
    from megatron.core import parallel_state as ps
    from megatron.core.distributed import (DistributedDataParallel, DistributedDataParallelConfig,
                                           finalize_model_grads)
    from megatron.core.models.gpt import GPTModel
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from megatron.core.transformer import TransformerConfig

    on_cpu = cpu_runtime.is_enabled()
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    swiglu = getattr(args, "swiglu", False)
    config = TransformerConfig(
        num_layers=args.num_layers, hidden_size=args.hidden_size,
        num_attention_heads=args.num_attention_heads,
        ffn_hidden_size=args.ffn_hidden_size or 4 * args.hidden_size,
        tensor_model_parallel_size=args.tensor_model_parallel_size,
        pipeline_model_parallel_size=args.pipeline_model_parallel_size,
        context_parallel_size=args.context_parallel_size,
        hidden_dropout=args.hidden_dropout, attention_dropout=args.attention_dropout,
        init_method_std=args.init_method_std, normalization=args.normalization,
        gated_linear_unit=swiglu,
        activation_func=torch.nn.functional.silu if swiglu else torch.nn.functional.gelu,
        bf16=args.bf16, params_dtype=dtype, pipeline_dtype=dtype,
        use_cpu_initialization=on_cpu)
    model = GPTModel(
        config=config, transformer_layer_spec=layer_spec(config, args), vocab_size=vocab_size,
        max_sequence_length=args.max_position_embeddings or args.seq_length,
        pre_process=ps.is_pipeline_first_stage(), post_process=ps.is_pipeline_last_stage(),
        share_embeddings_and_output_weights=not args.untie_embeddings_and_output_weights,
        position_embedding_type=args.position_embedding_type, rotary_base=args.rotary_base)
    if not on_cpu:
        model.cuda(torch.cuda.current_device())
    model = DistributedDataParallel(
        config, DistributedDataParallelConfig(grad_reduce_in_fp32=args.bf16), model)
    optimizer = get_megatron_optimizer(OptimizerConfig(
        optimizer="adam", lr=args.lr, min_lr=args.min_lr or 0.0, weight_decay=args.weight_decay,
        adam_beta1=args.adam_beta1, adam_beta2=args.adam_beta2, adam_eps=args.adam_eps,
        clip_grad=args.clip_grad, bf16=args.bf16, params_dtype=dtype), [model])
    config.finalize_model_grads_func = finalize_model_grads
    config.grad_scale_func = optimizer.scale_loss
    return model, optimizer, config
