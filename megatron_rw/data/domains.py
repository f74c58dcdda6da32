"""A blend member's domain name, from its prefix: what per-domain reports and validation sets
are called, the same for the train and validation prefixes of one domain."""

from __future__ import annotations

import os

SPLIT_SUFFIXES = ("_train", "_valid", "_val", "_test")
# What Megatron-LM's tools/preprocess_data.py appends to --output-prefix (json key, level).
MEGATRON_SUFFIX = "_text_document"


def domain_name(prefix: str) -> str:
    """A blend member's display name: its basename without Megatron-LM's ``_text_document`` and
    a split suffix (``.../megatron/books_train`` and ``.../books_text_document`` -> ``books``),
    so train and valid name a domain alike."""
    name = os.path.basename(prefix)
    if name.endswith(MEGATRON_SUFFIX) and len(name) > len(MEGATRON_SUFFIX):
        name = name[: -len(MEGATRON_SUFFIX)]
    for suffix in SPLIT_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name
