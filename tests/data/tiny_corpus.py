"""A two-domain corpus laid out as ``megatron_rw.data.prepare`` writes one, built offline.

``DIR/tokenizer.model``, ``DIR/megatron/{alpha,beta}_{train,valid}.bin/.idx`` and a
``DIR/manifest.json`` with the tokenizer's sha256 and the train/valid blends: the docstrings of the
first and second half of the stdlib modules in tests/data/stdlib_text.py.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.data.stdlib_text import stdlib_docstrings


def build_tiny_corpus(root: Path) -> dict:
    """Returns ``{"dir", "tokenizer", "<domain>_<split>": prefix}``."""
    from megatron_rw.data.indexed import write_indexed_dataset
    from megatron_rw.data.tokenizer import SentencePieceTokenizer, train_sentencepiece

    root = Path(root)
    (root / "megatron").mkdir(parents=True, exist_ok=True)
    docs = stdlib_docstrings()
    model = train_sentencepiece(docs, root / "tokenizer.model", vocab_size=512, num_threads=1)
    tok = SentencePieceTokenizer(model)
    half = len(docs) // 2
    out = {"dir": str(root), "tokenizer": str(model)}
    blends = {"train": [], "valid": []}
    for name, part in (("alpha", docs[:half]), ("beta", docs[half:])):
        texts = {"valid": part[::10], "train": [d for i, d in enumerate(part) if i % 10]}
        for split in ("train", "valid"):
            prefix = str(root / "megatron" / f"{name}_{split}")
            write_indexed_dataset(prefix, texts[split], tok, num_threads=1)
            out[f"{name}_{split}"] = prefix
            blends[split] += ["1", prefix]
    manifest = {"tokenizer": {"sha256": tok.sha256},
                "data_path": {split: " ".join(words) for split, words in blends.items()}}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return out
