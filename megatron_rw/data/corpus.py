"""Per-domain documents: read the sources, cut, sample to the budget, split, write JSONL.

Output per domain in ``<out>/jsonl/``: ``<domain>.{train,val,test}.jsonl`` (one
``{"id", "domain", "text"}`` object per line) and ``<domain>.json`` with counts, the settings
that produced them and a digest per split, which later steps use to know when to redo their work.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from megatron_rw.data.cache import atomic_path, read_json, write_json_atomic
from megatron_rw.data.extract import chunk_text
from megatron_rw.data.split import SPLITS, assign_split, sample_by_budget
from megatron_rw.data.sources import Source


@dataclass
class Document:
    """One document: ``id`` is ``<source>/<local id>#<chunk>``, stable across runs."""

    id: str
    domain: str
    text: str


@dataclass
class SourceResult:
    """What one source gave: documents, or the error that stopped it."""

    documents: list[Document] = field(default_factory=list)
    error: Optional[str] = None
    seconds: float = 0.0


def read_source(source: Source, root: Optional[Path], max_chars: int) -> SourceResult:
    """Read all documents of ``source`` from its unpacked directory; never raises."""
    start = time.perf_counter()
    result = SourceResult()
    try:
        for local_id, text in source.read(root):
            for k, chunk in enumerate(chunk_text(text, max_chars)):
                result.documents.append(Document(f"{source.name}/{local_id}#{k}", source.domain, chunk))
        if not result.documents:
            result.error = "no documents found in the package (layout changed?)"
    except Exception as exc:  # noqa: BLE001 - a broken source must not stop the others
        result.error = f"{type(exc).__name__}: {exc}"
        result.documents = []
    result.seconds = time.perf_counter() - start
    return result


def domain_settings(cfg) -> dict:
    """The settings a domain's JSONL depends on; a change means rebuilding it."""
    return {"max_bytes": cfg.max_bytes_per_domain, "val_fraction": cfg.val_fraction,
            "test_fraction": cfg.test_fraction, "max_doc_chars": cfg.max_doc_chars}


def jsonl_path(out: Path, domain: str, split: str) -> Path:
    return out / "jsonl" / f"{domain}.{split}.jsonl"


def stats_path(out: Path, domain: str) -> Path:
    return out / "jsonl" / f"{domain}.json"


def load_done(out: Path, domain: str, cfg) -> Optional[dict]:
    """The domain's stats if its JSONL is complete, from all sources, with the same settings."""
    path = stats_path(out, domain)
    if cfg.force or not path.exists():
        return None
    stats = read_json(path)
    complete = all(jsonl_path(out, domain, s).exists() for s in SPLITS)
    if complete and not stats.get("failed") and stats.get("settings") == domain_settings(cfg):
        return stats
    return None


def write_domain(out: Path, domain: str, results: dict[str, SourceResult], cfg,
                 packages: dict[str, Optional[str]], log: Callable[[str], None] = print) -> dict:
    """Sample, split and write one domain's documents; return (and save) its stats."""
    docs = [d for r in results.values() for d in r.documents]
    sizes = [len(d.text.encode("utf-8")) for d in docs]
    keep = sample_by_budget([d.id for d in docs], sizes, cfg.max_bytes_per_domain)
    stats = {"domain": domain, "settings": domain_settings(cfg), "sources": {}, "failed": {},
             "splits": {s: {"documents": 0, "bytes": 0, "sha256": ""} for s in SPLITS}}
    for name, r in results.items():
        if r.error:
            stats["failed"][name] = r.error
        kept = [i for i in keep if docs[i].id.startswith(name + "/")]
        stats["sources"][name] = {"package": packages.get(name), "documents": len(kept),
                                  "bytes": sum(sizes[i] for i in kept),
                                  "available_bytes": sum(len(d.text.encode("utf-8")) for d in r.documents)}
    by_split: dict[str, list[int]] = {s: [] for s in SPLITS}
    for i in keep:
        by_split[assign_split(docs[i].id, cfg.val_fraction, cfg.test_fraction)].append(i)
    for split, idx in by_split.items():
        digest = hashlib.sha256()
        with atomic_path(jsonl_path(out, domain, split)) as tmp, open(tmp, "w", encoding="utf-8") as f:
            for i in idx:
                line = json.dumps({"id": docs[i].id, "domain": domain, "text": docs[i].text},
                                  ensure_ascii=False) + "\n"
                f.write(line)
                digest.update(line.encode("utf-8"))
        stats["splits"][split] = {"documents": len(idx), "bytes": sum(sizes[i] for i in idx),
                                  "sha256": digest.hexdigest()}
        if not idx:
            log(f"  warning: domain {domain!r} has no {split} documents")
    write_json_atomic(stats_path(out, domain), stats)
    return stats
