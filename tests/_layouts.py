"""Build a tiny GPT in any (TP, PP, VPP, CP, DP) layout with layout-invariant weights and data.

Shared by the multi-rank equivalence tests (tests/workers/equivalence.py). The contract that makes
layouts comparable: the same seed gives
  - the same global weights (`reinit_layout_invariant`: every ShardedTensor is cut out of a full
    tensor generated from its checkpoint key, so TP sharding, PP stage split and RNG consumption
    order do not matter), and
  - the same global micro-batches (`global_micro_batch`), which `local_micro_batch` cuts into this
    rank's DP rows and CP chunks exactly as Megatron-LM does.
Call after `torch.distributed.init_process_group` (gloo on CPU) and `enable_cpu_runtime()`.
"""

from __future__ import annotations

import dataclasses
import zlib
from typing import Optional

import torch
import torch.distributed as dist

from megatron.core import parallel_state as ps
from megatron.core.dist_checkpointing.mapping import ShardedTensor
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
from megatron.core.distributed.finalize_model_grads import finalize_model_grads
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed
from megatron.core.transformer import TransformerConfig

from megatron_rw.compat import slice_for_context_parallel
from megatron_rw.cpu.layers import cpu_gpt_block_spec

VOCAB, SEQ, HIDDEN, HEADS, LAYERS = 128, 32, 64, 4, 4


@dataclasses.dataclass(frozen=True)
class Layout:
    """A parallel layout. dp is derived: world_size / (tp * pp * cp)."""

    tp: int = 1
    pp: int = 1
    cp: int = 1
    vpp: Optional[int] = None  # virtual pipeline stages per PP rank (needs pp > 1)
    sp: bool = False  # sequence parallel (needs tp > 1)
    dist_opt: bool = False  # Megatron distributed optimizer
    stock: bool = False  # megatron's own get_gpt_layer_local_spec (no CP, no SP) as a reference

    @property
    def dp(self) -> int:
        return dist.get_world_size() // (self.tp * self.pp * self.cp)

    @property
    def name(self) -> str:
        parts = [f"{k.upper()}{v}" for k, v in (("tp", self.tp), ("pp", self.pp), ("cp", self.cp))
                 if v > 1]
        parts += [f"VPP{self.vpp}"] if self.vpp else []
        parts += [f"DP{self.dp}"] if self.dp > 1 else []
        parts += ["SP"] * self.sp + ["DOPT"] * self.dist_opt + ["STOCK"] * self.stock
        return "x".join(parts) or "1proc"


def parse_layout(text: str) -> Layout:
    """'tp2xdp2', 'pp2xvpp2', 'tp2xsp', 'cp2', 'dp2xdopt', 'stock', '1' -> Layout.
    DP, if given, must match the world size."""
    flags = {"sp": "sp", "dopt": "dist_opt", "stock": "stock"}
    kw = {}
    for part in text.lower().replace("-", "x").split("x"):
        if part in flags:
            kw[flags[part]] = True
        elif part and part not in ("1", "1proc"):
            key = part.rstrip("0123456789")
            kw[key] = int(part[len(key):])
    dp = kw.pop("dp", None)
    layout = Layout(**kw)
    if dp is not None and dp != layout.dp:
        raise ValueError(f"{text}: DP{dp} does not match world size {dist.get_world_size()}")
    return layout


def init_parallel(layout: Layout, seed: int = 1234) -> None:
    """(Re)initialise Megatron's process groups and RNG tracker for `layout`."""
    ps.destroy_model_parallel()
    _destroy_subgroups()
    ps.initialize_model_parallel(
        tensor_model_parallel_size=layout.tp,
        pipeline_model_parallel_size=layout.pp,
        virtual_pipeline_model_parallel_size=layout.vpp,
        context_parallel_size=layout.cp,
    )
    torch.manual_seed(seed)
    model_parallel_cuda_manual_seed(seed)


def _destroy_subgroups() -> None:
    """Destroy every process group but the default one.

    ``destroy_model_parallel()`` only drops Megatron's references: the groups themselves (gloo:
    threads of their own) live on. The workers re-initialise for every layout and contract, ~45
    times per launch, which left ~2,500 threads per process on megatron-core 0.19.
    """
    from torch.distributed import distributed_c10d as c10d

    default = c10d._get_default_group()
    for group in list(c10d._world.pg_map):
        if group is not default:
            dist.destroy_process_group(group)


def model_config(layout: Layout, **overrides) -> TransformerConfig:
    """Tiny fp32 GPT config; dropout off so layouts are comparable. Overrides win."""
    kw = dict(
        num_layers=LAYERS, hidden_size=HIDDEN, num_attention_heads=HEADS,
        tensor_model_parallel_size=layout.tp, pipeline_model_parallel_size=layout.pp,
        virtual_pipeline_model_parallel_size=layout.vpp, context_parallel_size=layout.cp,
        sequence_parallel=layout.sp, use_cpu_initialization=True,
        params_dtype=torch.float32, pipeline_dtype=torch.float32,
        hidden_dropout=0.0, attention_dropout=0.0,
        # gloo: batched isend/irecv is silently wrong with interleaved PP; overlap needs streams.
        batch_p2p_comm=False, overlap_p2p_comm=False,
    )
    kw.update(overrides)
    return TransformerConfig(**kw)


def reinit_layout_invariant(module: torch.nn.Module, seed: int) -> None:
    """Overwrite every parameter with a slice of a global tensor that depends only on its
    checkpoint key and `seed` (norm weights ~ 1 + 0.1 N, everything else ~ 0.02 N)."""
    for sh in _sharded_tensors(module.sharded_state_dict()):
        gen = torch.Generator().manual_seed((zlib.crc32(sh.key.encode()) ^ seed) & 0x7FFFFFFF)
        full = torch.randn(sh.global_shape, generator=gen, dtype=torch.float32)
        is_norm_weight = sh.data.dim() == 1 and sh.key.endswith("weight")
        full = 1.0 + 0.1 * full if is_norm_weight else 0.02 * full
        # global_offset covers the prepended axes (e.g. the layer index, size 1 each) and then
        # the tensor's own axes; local_shape covers only the latter.
        sizes = (1,) * sh.prepend_axis_num + tuple(sh.local_shape)
        local = full[tuple(slice(o, o + n) for o, n in zip(sh.global_offset, sizes))]
        with torch.no_grad():
            sh.data.copy_(local.reshape(sh.data.shape))


def _sharded_tensors(tree):
    if isinstance(tree, ShardedTensor):
        yield tree
    elif isinstance(tree, dict):
        for value in tree.values():
            yield from _sharded_tensors(value)
    elif isinstance(tree, (list, tuple)):
        for value in tree:
            yield from _sharded_tensors(value)


def build_model_and_optimizer(layout: Layout, seed: int = 1234, lr: float = 1e-3,
                              clip_grad: float = 1.0, **config_overrides):
    """Initialise parallel state, build GPTModel chunks (one per virtual stage) wrapped in
    Megatron DDP, and a Megatron Adam optimizer. Returns (model_chunks, optimizer, config)."""
    init_parallel(layout, seed)
    config = model_config(layout, **config_overrides)
    chunks = []
    for vp in range(layout.vpp or 1):
        vp_stage = vp if layout.vpp else None
        model = GPTModel(
            config=config,
            transformer_layer_spec=(get_gpt_layer_local_spec() if layout.stock
                                    else cpu_gpt_block_spec(config, vp_stage=vp_stage)),
            vocab_size=VOCAB, max_sequence_length=SEQ,
            pre_process=ps.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage),
            post_process=ps.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp_stage),
            share_embeddings_and_output_weights=False, position_embedding_type="rope",
            vp_stage=vp_stage,
        )
        reinit_layout_invariant(model, seed)  # before DDP moves params into its buffers
        ddp_config = DistributedDataParallelConfig(use_distributed_optimizer=layout.dist_opt)
        chunks.append(DistributedDataParallel(config, ddp_config, model, disable_bucketing=vp > 0))
    opt_config = OptimizerConfig(optimizer="adam", lr=lr, clip_grad=clip_grad,
                                 use_distributed_optimizer=layout.dist_opt)
    optimizer = get_megatron_optimizer(opt_config, chunks)
    config.finalize_model_grads_func = finalize_model_grads
    config.grad_scale_func = optimizer.scale_loss
    return chunks, optimizer, config


def global_micro_batch(step: int, micro: int, rows: int = 4, seed: int = 0) -> dict:
    """The GLOBAL micro-batch `micro` of optimizer step `step`: [rows, SEQ] tensors, identical on
    every rank and layout. Labels are the next token of a random stream; loss_mask is all ones."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + step * 1_009 + micro)
    stream = torch.randint(0, VOCAB, (rows, SEQ + 1), generator=gen)
    return {
        "tokens": stream[:, :-1].contiguous(),
        "labels": stream[:, 1:].contiguous(),
        "loss_mask": torch.ones(rows, SEQ),
        "position_ids": torch.arange(SEQ).expand(rows, SEQ).contiguous(),
    }


def uneven_global_micro_batch(step: int, micro: int, rows: int = 4) -> dict:
    """``global_micro_batch`` with rows of different token counts and, on odd micro-batches, row 2
    all-masked (a padding sample): the cases where reweighting and normalisation can go wrong."""
    batch = global_micro_batch(step, micro, rows)
    mask = batch["loss_mask"]
    mask[0, : 5 + step] = 0
    mask[3, ::3] = 0
    if micro % 2:
        mask[2] = 0
    return batch


def local_micro_batch(batch: dict) -> dict:
    """This rank's part of a global micro-batch: a contiguous block of rows by DP rank (without
    CP), then chunks r and 2cp-1-r of the sequence by CP rank (`slice_for_context_parallel`)."""
    dp = ps.get_data_parallel_world_size(with_context_parallel=False)
    rank = ps.get_data_parallel_rank(with_context_parallel=False)
    rows = next(iter(batch.values())).shape[0] // dp
    local = {k: v[rank * rows:(rank + 1) * rows] for k, v in batch.items()}
    return slice_for_context_parallel(local, ps.get_context_parallel_group())


def gpt_loss_func(loss_mask, output_tensor):
    """Megatron-LM's pretrain_gpt loss contract: (masked token-loss sum, token count, report)."""
    losses = output_tensor.view(-1).float()
    mask = loss_mask.view(-1).float()
    loss = torch.sum(losses * mask)
    num_tokens = mask.sum().clone().detach().to(torch.int)
    report = torch.cat([loss.clone().detach().view(1), num_tokens.view(1)])
    return loss, num_tokens, {"lm loss": report}
