"""Megatron indexed datasets (``.bin`` + ``.idx``) from JSONL documents.

One document = its token ids followed by the EOD id, so that GPTDataset's packed rows carry the
document boundaries (``reset_position_ids``/``reset_attention_mask``/``eod_mask_loss`` and
document-level reweighting all find them).
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Iterable, Iterator

import numpy

from megatron_rw.data.cache import remove_path
from megatron_rw.data.tokenizer import SentencePieceTokenizer


def _megatron_indexed():
    """megatron-core's indexed_dataset module, imported on first use: it pulls in torch, which the
    fetch and extract steps do not need, and warns about optional fused kernels we never use."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Transformer Engine and Apex are not installed")
        from megatron.core.datasets import indexed_dataset
    return indexed_dataset


def token_dtype(vocab_size: int) -> type:
    """uint16 when every id fits (half the disk and page cache of int32), else int32.

    The same rule as megatron-core's ``GPTDatasetConfig.token_dtype_code``.
    """
    return numpy.uint16 if vocab_size <= numpy.iinfo(numpy.uint16).max + 1 else numpy.int32


def read_jsonl_texts(path: str | Path) -> Iterator[str]:
    """The ``text`` field of each line of a JSONL file."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)["text"]


def _batches(items: Iterable[str], size: int) -> Iterator[list[str]]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def write_indexed_dataset(prefix: str | Path, texts: Iterable[str], tokenizer: SentencePieceTokenizer,
                          batch_size: int = 256, num_threads: int = -1) -> dict:
    """Tokenize ``texts`` and write ``prefix.bin``/``prefix.idx`` atomically.

    Both files are built under a temporary prefix and renamed, ``.idx`` last: an ``.idx`` on disk
    means the pair is complete.

    Returns:
        ``{"documents", "tokens" (EOD included), "bytes" (UTF-8 text)}``.
    """
    IndexedDatasetBuilder = _megatron_indexed().IndexedDatasetBuilder

    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    tmp = prefix.with_name(f".{prefix.name}.tmp-{os.getpid()}")
    dtype = token_dtype(tokenizer.vocab_size)
    eod = tokenizer.eod
    stats = {"documents": 0, "tokens": 0, "bytes": 0}
    try:
        builder = IndexedDatasetBuilder(f"{tmp}.bin", dtype=dtype)
        for batch in _batches(texts, batch_size):
            for text, ids in zip(batch, tokenizer.tokenize_batch(batch, num_threads=num_threads)):
                ids.append(eod)
                builder.add_document(numpy.asarray(ids, dtype=dtype), [len(ids)])
                stats["documents"] += 1
                stats["tokens"] += len(ids)
                stats["bytes"] += len(text.encode("utf-8"))
        builder.finalize(f"{tmp}.idx")
        os.replace(f"{tmp}.bin", f"{prefix}.bin")
        os.replace(f"{tmp}.idx", f"{prefix}.idx")
    finally:
        remove_path(f"{tmp}.bin")
        remove_path(f"{tmp}.idx")
    return stats


def read_indexed_dataset(prefix: str | Path):
    """Open ``prefix.bin``/``prefix.idx`` with megatron-core's ``IndexedDataset``."""
    return _megatron_indexed().IndexedDataset(str(prefix), multimodal=False, mmap=True)


def indexed_exists(prefix: str | Path) -> bool:
    """True when both files of an indexed dataset exist."""
    return Path(f"{prefix}.idx").exists() and Path(f"{prefix}.bin").exists()
