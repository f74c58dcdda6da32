"""GPT layer specs that run every parallel layout on CPU (no Transformer Engine, no Apex).

megatron-core's local (non-TE) spec has two gaps that matter on a CPU/gloo machine:

- `DotProductAttention` asserts `context_parallel_size == 1` (only TE attention implements CP).
  `ContextParallelDotProductAttention` adds CP by all-gathering K and V over the CP group.
- `WrappedTorchNorm` asserts `not config.sequence_parallel`. `SequenceParallelNorm` is the same
  torch LayerNorm / RMSNorm with its parameters tagged `sequence_parallel`, which is what
  `finalize_model_grads` looks for to sum their gradients over the TP group.

Use `cpu_gpt_block_spec(config)` as GPTModel's `transformer_layer_spec` (it also replaces the final
norm); `cpu_gpt_layer_spec()` is the per-layer spec, enough when sequence_parallel is off. Both are
meant for tests and CPU demos: the CP attention materialises the [s_local, s_global] score matrix.
"""

from __future__ import annotations

import copy
from typing import Optional

import torch
import torch.distributed as dist

from megatron.core import parallel_state
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.transformer.dot_product_attention import DotProductAttention
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.identity_op import IdentityOp
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.torch_norm import WrappedTorchNorm
from megatron.core.transformer.transformer_block import (
    TransformerBlockSubmodules,
    get_num_layers_to_build,
)
from megatron.core.transformer.transformer_config import TransformerConfig

__all__ = [
    "SequenceParallelNorm",
    "ContextParallelDotProductAttention",
    "cp_global_positions",
    "cpu_gpt_layer_spec",
    "cpu_gpt_block_spec",
]


class SequenceParallelNorm:
    """torch LayerNorm / RMSNorm that accepts `config.sequence_parallel`.

    A norm acts per token, so sequence parallelism changes nothing in its forward pass; but each TP
    rank sees a different slice of the sequence, so the (replicated) weight and bias gradients are
    partial sums. Tagging the parameters `sequence_parallel=True` makes Megatron's
    `finalize_model_grads` all-reduce (sum) them over the TP group, as it does for TE norms.
    Same constructor signature as `WrappedTorchNorm`.
    """

    def __new__(
        cls,
        config: TransformerConfig,
        hidden_size: int,
        eps: float = 1e-5,
        persist_layer_norm: bool = False,
        zero_centered_gamma: bool = False,
        normalization: str = "LayerNorm",
    ):
        if config.normalization == "LayerNorm":
            norm = torch.nn.LayerNorm(hidden_size, eps=eps)
        elif config.normalization == "RMSNorm":
            norm = torch.nn.RMSNorm(hidden_size, eps=eps)
        else:
            raise ValueError(f"unsupported normalization {config.normalization!r}")
        assert not config.layernorm_zero_centered_gamma, "zero_centered_gamma not supported"
        for param in norm.parameters():
            param.sequence_parallel = config.sequence_parallel
        return norm


def cp_global_positions(local_len: int, cp_rank: int, cp_size: int, device=None) -> torch.Tensor:
    """Global sequence positions of this CP rank's tokens, in local order.

    Megatron's load-balanced CP layout (`megatron.core.utils.get_batch_on_this_cp_rank`) splits a
    sequence of length S into 2*cp chunks of c = S/(2*cp) tokens; CP rank r holds chunks r and
    2*cp-1-r, concatenated. `local_len` = 2*c. Returns int64 [local_len].
    """
    c = local_len // 2
    first = torch.arange(cp_rank * c, (cp_rank + 1) * c, device=device)
    start = (2 * cp_size - 1 - cp_rank) * c
    second = torch.arange(start, start + c, device=device)
    return torch.cat([first, second])


def _gathered_to_global_index(cp_size: int) -> list:
    """Chunk permutation: global chunk k is chunk number `idx[k]` of the all-gathered tensor.

    All-gathered order is [rank0.chunkA, rank0.chunkB, rank1.chunkA, ...], rank r's chunk A being
    global chunk r and chunk B global chunk 2*cp-1-r.
    """
    return [2 * k if k < cp_size else 2 * (2 * cp_size - 1 - k) + 1 for k in range(2 * cp_size)]


class _AllGatherSequence(torch.autograd.Function):
    """[s_local, ...] per CP rank -> [S, ...] in global token order, S = cp * s_local.

    Backward: every CP rank's queries attended to the full K/V, so the gradient of a rank's local
    K/V is the SUM over CP ranks of the gradient of the global tensor at its positions: reorder back
    to all-gather order and reduce-scatter (sum) over the CP group.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
        cp = group.size()
        ctx.group = group
        ctx.index = torch.tensor(_gathered_to_global_index(cp))
        gathered = x.new_empty((cp * x.shape[0],) + tuple(x.shape[1:]))
        dist.all_gather_into_tensor(gathered, x.contiguous(), group=group)
        chunks = gathered.view((2 * cp, x.shape[0] // 2) + tuple(x.shape[1:]))
        return chunks.index_select(0, ctx.index).flatten(0, 1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        cp = ctx.group.size()
        chunks = grad.reshape((2 * cp, grad.shape[0] // (2 * cp)) + tuple(grad.shape[1:]))
        in_gather_order = torch.empty_like(chunks)
        in_gather_order.index_copy_(0, ctx.index, chunks)
        local = grad.new_empty((grad.shape[0] // cp,) + tuple(grad.shape[1:]))
        dist.reduce_scatter_tensor(local, in_gather_order.flatten(0, 1), group=ctx.group)
        return local, None


class ContextParallelDotProductAttention(DotProductAttention):
    """Megatron's local `DotProductAttention` plus context parallelism (all-gather K/V).

    Shapes (sq = local sequence length = S/cp, b = micro-batch, np/ng = query heads / KV groups
    per TP rank, hn = head dim, hp = np*hn):
        query [sq, b, np, hn], key/value [sq, b, ng, hn]  (this CP rank's chunks r and 2cp-1-r)
        -> K/V all-gathered over the CP group to [S, b, ng, hn] in global order
        -> scores [b, np, sq, S], causal mask from the global positions of the local queries
        -> output [sq, b, hp].
    Process groups: TP from `pg_collection.tp` (heads are split, as in the parent), CP from
    `pg_collection.cp` (falls back to `parallel_state.get_context_parallel_group()`).
    With cp == 1 this is exactly the parent's forward (bitwise).

    An explicit `attention_mask` must be what `get_batch_on_this_cp_rank` makes of a [b,1,S,S]
    mask: queries sliced to [b, 1, sq, S], keys left in global order - which matches our K/V.
    """

    def __init__(self, config: TransformerConfig, *args, pg_collection=None, **kwargs):
        cp_size = config.context_parallel_size
        if cp_size > 1:
            assert config.window_size is None, "sliding-window attention is not supported with CP"
            # The parent refuses CP > 1 only because it cannot attend across ranks; give it a
            # config copy that says CP = 1 (attention.py copies the config the same way for GQA).
            config = copy.copy(config)
            config.context_parallel_size = 1
        super().__init__(config, *args, pg_collection=pg_collection, **kwargs)
        self.cp_size = cp_size
        cp_group = getattr(pg_collection, "cp", None) if pg_collection is not None else None
        self.cp_group = cp_group if cp_group is not None else (
            parallel_state.get_context_parallel_group() if cp_size > 1 else None
        )

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: Optional[torch.Tensor],
        attn_mask_type: Optional[AttnMaskType] = None,
        attention_bias: Optional[torch.Tensor] = None,
        packed_seq_params=None,
    ):
        if self.cp_size == 1:
            return super().forward(
                query, key, value, attention_mask, attn_mask_type, attention_bias, packed_seq_params
            )
        assert packed_seq_params is None, "packed sequences are not supported"
        key = _AllGatherSequence.apply(key, self.cp_group)
        value = _AllGatherSequence.apply(value, self.cp_group)
        if attention_mask is None and self.attn_mask_type == AttnMaskType.causal:
            # True = masked, as Megatron's attention_mask_func expects. [sq, S] broadcasts over
            # [b, np, sq, S]. Key j is visible to local query i iff j <= global position of i.
            q_pos = cp_global_positions(
                query.shape[0], self.cp_group.rank(), self.cp_size, device=query.device
            )
            k_pos = torch.arange(key.shape[0], device=query.device)
            attention_mask = k_pos.unsqueeze(0) > q_pos.unsqueeze(1)
        return super().forward(
            query, key, value, attention_mask, attn_mask_type, attention_bias, packed_seq_params
        )


def _is_torch_norm(module) -> bool:
    return module is WrappedTorchNorm


def cpu_gpt_layer_spec(normalization: str = "LayerNorm", qk_layernorm: bool = False) -> ModuleSpec:
    """`get_gpt_layer_local_spec()` with CP-capable attention and sequence-parallel-capable norms.

    Args:
        normalization: "LayerNorm" or "RMSNorm" (must match `config.normalization`).
        qk_layernorm: add norms on queries and keys (as in megatron's local spec).

    Returns:
        A TransformerLayer ModuleSpec. GPTModel builds its final norm with megatron's default
        (WrappedTorchNorm, which refuses sequence_parallel): use `cpu_gpt_block_spec` for SP.
    """
    spec = get_gpt_layer_local_spec(normalization=normalization, qk_layernorm=qk_layernorm)
    layer = spec.submodules
    for name in ("input_layernorm", "pre_mlp_layernorm"):
        if _is_torch_norm(getattr(layer, name)):
            setattr(layer, name, SequenceParallelNorm)
    attn = layer.self_attention.submodules
    attn.core_attention = ContextParallelDotProductAttention
    for name in ("q_layernorm", "k_layernorm"):
        if getattr(attn, name) is not IdentityOp and _is_torch_norm(getattr(attn, name)):
            setattr(attn, name, SequenceParallelNorm)
    return spec


def cpu_gpt_block_spec(
    config: TransformerConfig,
    vp_stage: Optional[int] = None,
    pp_rank: Optional[int] = None,
) -> TransformerBlockSubmodules:
    """Block spec for this pipeline stage: `cpu_gpt_layer_spec` layers + a SequenceParallelNorm
    final norm. Pass as GPTModel's `transformer_layer_spec` (build one per virtual stage).

    Args:
        config: the model's TransformerConfig (layer count, PP/VP layout, normalization).
        vp_stage: virtual pipeline stage of the model chunk being built (None without VP).
        pp_rank: pipeline rank; None reads it from parallel_state.
    """
    layer = cpu_gpt_layer_spec(
        normalization=config.normalization, qk_layernorm=config.qk_layernorm
    )
    num_layers = get_num_layers_to_build(config, vp_stage=vp_stage, pp_rank=pp_rank)
    return TransformerBlockSubmodules(
        layer_specs=[layer] * num_layers, layer_norm=SequenceParallelNorm
    )
