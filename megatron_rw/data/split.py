"""Stable document-level splits and sampling, both decided by a hash of the document id.

Hashing the id (not the position, not a seeded RNG) means a document lands in the same split
whatever else is in the corpus, in every profile and on every machine: the small profile's test
documents are also test documents in the full profile, and adding a source moves nothing.
"""

from __future__ import annotations

import hashlib
from typing import Sequence, TypeVar

SPLITS = ("train", "val", "test")

T = TypeVar("T")


def unit_hash(key: str) -> float:
    """A uniform number in [0, 1) from ``key`` (BLAKE2b, so equal on every platform and run)."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def assign_split(doc_id: str, val_fraction: float = 0.02, test_fraction: float = 0.02) -> str:
    """``"test"``, ``"val"`` or ``"train"`` for ``doc_id``; about the given fractions of documents."""
    if not (0 <= val_fraction and 0 <= test_fraction and val_fraction + test_fraction < 1):
        raise ValueError(f"bad split fractions: val {val_fraction}, test {test_fraction}")
    # "split/" salts the hash so that it is independent of the sampling order below.
    h = unit_hash("split/" + doc_id)
    if h < test_fraction:
        return "test"
    if h < test_fraction + val_fraction:
        return "val"
    return "train"


def sample_by_budget(ids: Sequence[str], sizes: Sequence[int], budget: int | None) -> list[int]:
    """Indices of a hash-ordered subset of documents whose sizes sum to at most ``budget``.

    Documents are taken in the order of their (salted) id hash, so the subset is a uniform sample
    of the domain (every book contributes, not just the first ones) and a larger budget only adds
    documents. Returned indices are sorted, which keeps the corpus order (chapters in sequence).

    Args:
        ids: Document ids.
        sizes: Their sizes (bytes).
        budget: Total size allowed; None keeps everything.
    """
    if budget is None:
        return list(range(len(ids)))
    order = sorted(range(len(ids)), key=lambda i: unit_hash("sample/" + ids[i]))
    chosen, total = [], 0
    for i in order:
        if total + sizes[i] > budget:
            break  # stop at the first misfit: a prefix of one order keeps larger budgets supersets
        chosen.append(i)
        total += sizes[i]
    return sorted(chosen)
