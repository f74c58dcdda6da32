"""Megatron-LM's command-line flags, for the subset ``pretrain_gpt`` supports.

Flag names and defaults follow Megatron-LM (``megatron/training/arguments.py``) so a command line
moves between the two. Anything not listed is an argparse error: an unsupported Megatron flag must
fail loudly rather than be silently ignored.
"""

from __future__ import annotations

import argparse
from typing import List, Optional

from megatron_rw.arguments import add_sample_reweight_args


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m megatron_rw.pretrain_gpt", allow_abbrev=False,
        description="GPT pretraining on megatron-core with loss-based sample reweighting.")
    g = p.add_argument_group("model")
    g.add_argument("--num-layers", type=int, required=True)
    g.add_argument("--hidden-size", type=int, required=True)
    g.add_argument("--num-attention-heads", type=int, required=True)
    g.add_argument("--ffn-hidden-size", type=int, default=None, help="Default: 4 * hidden size.")
    g.add_argument("--seq-length", type=int, required=True)
    g.add_argument("--max-position-embeddings", type=int, default=None)
    g.add_argument("--position-embedding-type", choices=("rope", "learned_absolute"), default="rope")
    g.add_argument("--rotary-base", type=int, default=10000)
    g.add_argument("--normalization", choices=("LayerNorm", "RMSNorm"), default="LayerNorm")
    g.add_argument("--swiglu", action="store_true")
    g.add_argument("--untie-embeddings-and-output-weights", action="store_true")
    g.add_argument("--hidden-dropout", type=float, default=0.1)
    g.add_argument("--attention-dropout", type=float, default=0.1)
    g.add_argument("--init-method-std", type=float, default=0.02)
    g.add_argument("--make-vocab-size-divisible-by", type=int, default=128)
    g.add_argument("--bf16", action="store_true")

    g = p.add_argument_group("parallelism")
    g.add_argument("--tensor-model-parallel-size", type=int, default=1)
    g.add_argument("--pipeline-model-parallel-size", type=int, default=1)
    g.add_argument("--context-parallel-size", type=int, default=1)

    g = p.add_argument_group("training")
    g.add_argument("--micro-batch-size", type=int, required=True)
    g.add_argument("--global-batch-size", type=int, default=None,
                   help="Default: micro batch size * data-parallel size.")
    g.add_argument("--train-iters", type=int, required=True)
    g.add_argument("--exit-interval", type=int, default=None,
                   help="Stop (after saving) once the iteration is a multiple of this.")
    g.add_argument("--seed", type=int, default=1234)
    g.add_argument("--lr", type=float, required=True)
    g.add_argument("--min-lr", type=float, default=0.0)
    g.add_argument("--lr-decay-style", choices=("constant", "linear", "cosine"), default="linear")
    g.add_argument("--lr-decay-iters", type=int, default=None, help="Default: --train-iters.")
    g.add_argument("--lr-warmup-iters", type=int, default=0)
    g.add_argument("--weight-decay", type=float, default=0.01)
    g.add_argument("--clip-grad", type=float, default=1.0)
    g.add_argument("--adam-beta1", type=float, default=0.9)
    g.add_argument("--adam-beta2", type=float, default=0.999)
    g.add_argument("--adam-eps", type=float, default=1e-8)

    g = p.add_argument_group("data")
    g.add_argument("--data-path", nargs="+", default=None,
                   help="Blend 'w1 prefix1 w2 prefix2 ...' or one prefix, cut by --split.")
    g.add_argument("--split", default="969,30,1")
    g.add_argument("--train-data-path", nargs="+", default=None)
    g.add_argument("--valid-data-path", nargs="+", default=None)
    g.add_argument("--data-cache-path", default=None)
    g.add_argument("--tokenizer-type", choices=("SentencePieceTokenizer", "GPTSentencePieceTokenizer"),
                   required=True,
                   help="Both read --tokenizer-model as is: the model's own ids, EOD = its </s>. "
                        "(In Megatron-LM, GPTSentencePieceTokenizer is the one that matches data "
                        "prepared by megatron_rw.data.prepare.)")
    g.add_argument("--tokenizer-model", required=True)
    g.add_argument("--reset-position-ids", action="store_true")
    g.add_argument("--reset-attention-mask", action="store_true")
    g.add_argument("--eod-mask-loss", action="store_true")

    g = p.add_argument_group("checkpointing and logging")
    g.add_argument("--save", default=None)
    g.add_argument("--load", default=None)
    g.add_argument("--save-interval", type=int, default=None)
    g.add_argument("--log-interval", type=int, default=100)
    g.add_argument("--eval-interval", type=int, default=1000)
    g.add_argument("--eval-iters", type=int, default=100)
    g.add_argument("--tensorboard-dir", default=None)
    g.add_argument("--metrics-file", default=None,
                   help="JSONL of every logged scalar. Default: <--save or --tensorboard-dir>/metrics.jsonl.")
    g.add_argument("--log-sample-weights", action="store_true",
                   help="On logged iterations, write each sample's loss, normalised loss, weight and "
                        "domain (first data-parallel replica) to sample_weights.jsonl next to the "
                        "metrics file.")
    add_sample_reweight_args(p)
    return p


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    if args.ffn_hidden_size is None:
        args.ffn_hidden_size = 4 * args.hidden_size
    if args.max_position_embeddings is None:
        args.max_position_embeddings = args.seq_length
    if args.lr_decay_iters is None:
        args.lr_decay_iters = args.train_iters
    return args


class ArgumentError(ValueError):
    """A bad flag value found before training starts; the message names the flag."""


def validate_layout(args: argparse.Namespace, world_size: int) -> int:
    """Check sizes against the world; fill ``args.data_parallel_size``, ``args.global_batch_size``
    and ``args.num_microbatches``. Returns the data-parallel size."""
    for flag in ("num_layers", "hidden_size", "num_attention_heads", "seq_length",
                 "micro_batch_size", "train_iters", "tensor_model_parallel_size",
                 "pipeline_model_parallel_size", "context_parallel_size", "log_interval",
                 "eval_iters"):
        if getattr(args, flag) is not None and getattr(args, flag) < (0 if flag == "eval_iters" else 1):
            raise ArgumentError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    tp, pp, cp = (args.tensor_model_parallel_size, args.pipeline_model_parallel_size,
                  args.context_parallel_size)
    if world_size % (tp * pp * cp):
        raise ArgumentError(
            f"--tensor-model-parallel-size ({tp}) x --pipeline-model-parallel-size ({pp}) x "
            f"--context-parallel-size ({cp}) = {tp * pp * cp} does not divide the world size "
            f"{world_size}")
    dp = world_size // (tp * pp * cp)
    if args.global_batch_size is None:
        args.global_batch_size = args.micro_batch_size * dp
    if args.global_batch_size % (args.micro_batch_size * dp):
        raise ArgumentError(
            f"--global-batch-size ({args.global_batch_size}) must be divisible by "
            f"--micro-batch-size ({args.micro_batch_size}) x data-parallel size ({dp})")
    if args.num_attention_heads % tp:
        raise ArgumentError(f"--num-attention-heads ({args.num_attention_heads}) must be divisible "
                            f"by --tensor-model-parallel-size ({tp})")
    if args.num_layers % pp:
        raise ArgumentError(f"--num-layers ({args.num_layers}) must be divisible by "
                            f"--pipeline-model-parallel-size ({pp})")
    if args.seq_length % (2 * cp) and cp > 1:
        raise ArgumentError(f"--seq-length ({args.seq_length}) must be divisible by 2 x "
                            f"--context-parallel-size ({cp})")
    if args.seq_length > args.max_position_embeddings and args.position_embedding_type != "rope":
        raise ArgumentError("--seq-length exceeds --max-position-embeddings")
    if (args.data_path is None) == (args.train_data_path is None):
        raise ArgumentError("give either --data-path (with --split) or --train-data-path "
                            "(and optionally --valid-data-path)")
    if args.lr_warmup_iters >= args.lr_decay_iters:
        raise ArgumentError(f"--lr-warmup-iters ({args.lr_warmup_iters}) must be smaller than "
                            f"--lr-decay-iters ({args.lr_decay_iters}, default --train-iters)")
    if args.save_interval is not None and not args.save:
        raise ArgumentError("--save-interval needs --save")
    args.data_parallel_size = dp
    args.num_microbatches = args.global_batch_size // (args.micro_batch_size * dp)
    return dp
