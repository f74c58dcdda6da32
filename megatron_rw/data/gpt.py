"""Build megatron-core ``GPTDataset`` blends from what ``prepare`` wrote (``manifest.json``).

For code that drives megatron-core directly (the CPU demo, tests). Megatron-LM users pass the
manifest's ``megatron_args`` instead.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional, Sequence

from megatron_rw.data.cache import read_json
from megatron_rw.data.tokenizer import SentencePieceTokenizer

# Manifest split name for each of megatron-core's three splits (train, valid, test).
MANIFEST_SPLITS = ("train", "val", "test")


def parse_blend(blend: str) -> tuple[list[str], list[float]]:
    """``"w1 p1 w2 p2 ..."`` -> ``([p1, p2, ...], [w1, w2, ...])``."""
    parts = blend.split()
    if len(parts) % 2:
        raise ValueError(f"a blend needs weight/prefix pairs, got {len(parts)} words")
    return [parts[i + 1] for i in range(0, len(parts), 2)], [float(parts[i]) for i in range(0, len(parts), 2)]


def gpt_dataset_config(tokenizer, seq_length: int, blend_per_split: Sequence[Optional[tuple]],
                       seed: int = 1234, path_to_cache: Optional[str] = None,
                       reset_position_ids: bool = False, reset_attention_mask: bool = False,
                       eod_mask_loss: bool = False):
    """A ``GPTDatasetConfig`` with every field megatron-core 0.16 insists on set explicitly.

    ``create_attention_mask=False``: the causal mask is built by the attention itself; a dense
    [s, s] mask per sample only costs memory. ``path_to_cache`` (index files on disk) needs
    ``torch.distributed`` initialised: megatron-core 0.16's ``BlendedDataset`` asks for the rank.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Transformer Engine and Apex are not installed")
        from megatron.core.datasets.gpt_dataset import GPTDatasetConfig

    return GPTDatasetConfig(
        random_seed=seed,
        sequence_length=seq_length,
        blend_per_split=list(blend_per_split),
        path_to_cache=path_to_cache,
        tokenizer=tokenizer,
        reset_position_ids=reset_position_ids,
        reset_attention_mask=reset_attention_mask,
        eod_mask_loss=eod_mask_loss,
        create_attention_mask=False,
    )


def build_gpt_datasets(config, num_samples: Sequence[int]):
    """``[train, valid, test]`` datasets (None where a split has no blend or 0 samples)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Transformer Engine and Apex are not installed")
        from megatron.core.datasets.blended_megatron_dataset_builder import (
            BlendedMegatronDatasetBuilder,
        )
        from megatron.core.datasets.gpt_dataset import GPTDataset

    return BlendedMegatronDatasetBuilder(GPTDataset, list(num_samples), lambda: True, config).build()


def datasets_from_manifest(manifest_path: str | Path, seq_length: int, num_samples: Sequence[int],
                           seed: int = 1234, path_to_cache: Optional[str] = None, **config_kwargs):
    """Train/valid/test ``GPTDataset`` blends of a prepared corpus, and its tokenizer.

    Each sample of a blend carries ``dataset_id``: the index of its domain in the blend's prefix
    list (domains sorted by name, those with no tokens in the split left out).

    Returns:
        ``(datasets, tokenizer, blends)`` where ``blends[i]`` is the ``(prefixes, weights)`` of split i.
    """
    manifest = read_json(manifest_path)
    tokenizer = SentencePieceTokenizer(manifest["tokenizer"]["model"])
    blends = [parse_blend(manifest["data_path"][k]) if manifest["data_path"][k] else None
              for k in ("train", "valid", "test")]
    config = gpt_dataset_config(tokenizer, seq_length, blends, seed, path_to_cache, **config_kwargs)
    return build_gpt_datasets(config, num_samples), tokenizer, blends
