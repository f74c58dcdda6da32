"""Pieces of ``python -m megatron_rw.pretrain_gpt``: arguments, data, checkpoints, metrics."""
