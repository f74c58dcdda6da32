"""``manifest.json``: what ``prepare`` built and how to hand it to Megatron."""

from __future__ import annotations

import platform
import shlex
from importlib import metadata
from pathlib import Path

from megatron_rw.data.indexed import token_dtype
from megatron_rw.data.split import SPLITS

# Megatron-LM's flag for each split's blend (``--train-data-path`` etc. take "w1 p1 w2 p2 ...").
SPLIT_FLAGS = {"train": "--train-data-path", "val": "--valid-data-path", "test": "--test-data-path"}


def blend_string(prefixes: dict[str, str], tokens: dict[str, int], weights: str) -> str:
    """``"w1 prefix1 w2 prefix2 ..."`` over the domains that have tokens in this split.

    Args:
        prefixes: Domain -> dataset prefix.
        tokens: Domain -> token count of that dataset.
        weights: ``tokens`` (share of tokens: the natural mixture, each token seen about once per
            epoch) or ``uniform`` (equal per domain). Megatron normalises the weights itself.
    """
    present = [d for d in sorted(prefixes) if tokens[d] > 0]
    total = sum(tokens[d] for d in present)
    parts = []
    for d in present:
        w = tokens[d] / total if weights == "tokens" else 1.0 / len(present)
        parts.append(f"{w:.6f} {prefixes[d]}")
    return " ".join(parts)


# Versions that change what ``prepare`` writes: the code domain is the running Python's stdlib,
# the tokenizer comes from sentencepiece, and the indexed datasets from megatron-core.
TRACED_PACKAGES = ("sentencepiece", "megatron-core", "torch", "numpy")


def environment() -> dict:
    """The interpreter and package versions this corpus was built with, so a result can be traced."""
    versions = {}
    for name in TRACED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"python": platform.python_version(), "implementation": platform.python_implementation(),
            "machine": platform.machine(), "packages": versions}


def build_manifest(cfg, out: Path, stats: dict, indexed: dict, model: Path, argv: list[str]) -> dict:
    """Collect counts, tokenizer facts and blends into the manifest's dictionary."""
    from megatron_rw.data.tokenizer import SentencePieceTokenizer

    tok = SentencePieceTokenizer(model)
    domains = {}
    for d in sorted(indexed):
        ix = indexed[d]
        tokens = sum(ix[s]["tokens"] for s in SPLITS)
        domains[d] = {
            "sources": stats[d]["sources"],
            "failed_sources": stats[d]["failed"],
            "documents": {s: ix[s]["documents"] for s in SPLITS},
            "tokens": {s: ix[s]["tokens"] for s in SPLITS},
            "bytes": {s: ix[s]["bytes"] for s in SPLITS},
            "bytes_per_token": round(sum(ix[s]["bytes"] for s in SPLITS) / max(tokens, 1), 3),
            "prefix": {s: ix[s]["prefix"] for s in SPLITS},
            "jsonl": {s: str((out / "jsonl" / f"{d}.{s}.jsonl").resolve()) for s in SPLITS},
        }
    data_path = {s: blend_string({d: domains[d]["prefix"][s] for d in domains},
                                 {d: domains[d]["tokens"][s] for d in domains}, cfg.blend_weights)
                 for s in SPLITS}
    all_tokens = sum(sum(v["tokens"].values()) for v in domains.values())
    all_bytes = sum(sum(v["bytes"].values()) for v in domains.values())
    model_path = str(Path(model).resolve())
    megatron_args = ["--tokenizer-type", "GPTSentencePieceTokenizer", "--tokenizer-model", model_path]
    for s in SPLITS:
        megatron_args += [SPLIT_FLAGS[s], *data_path[s].split()]
    return {
        "command": "python -m megatron_rw.data.prepare " + shlex.join(argv),
        "profile": cfg.profile,
        "environment": environment(),
        "domains": domains,
        "splits": {"val_fraction": cfg.val_fraction, "test_fraction": cfg.test_fraction,
                   "by": "blake2b hash of the document id"},
        "tokenizer": {"model": model_path, "type": "sentencepiece-bpe",
                      "megatron_tokenizer_type": "GPTSentencePieceTokenizer",
                      "vocab_size": tok.vocab_size, "eod_id": tok.eod,
                      "dtype": token_dtype(tok.vocab_size).__name__, "sha256": tok.sha256},
        "tokens": {s: sum(v["tokens"][s] for v in domains.values()) for s in SPLITS},
        "totals": {"documents": sum(sum(v["documents"].values()) for v in domains.values()),
                   "tokens": all_tokens, "bytes": all_bytes,
                   "bytes_per_token": round(all_bytes / max(all_tokens, 1), 3)},
        "blend_weights": cfg.blend_weights,
        "data_path": {"train": data_path["train"], "valid": data_path["val"], "test": data_path["test"]},
        # A sample's dataset_id is its domain's index in this list (empty splits are left out).
        "blend_domains": {k: [d for d in sorted(domains) if domains[d]["tokens"][s] > 0]
                          for k, s in (("train", "train"), ("valid", "val"), ("test", "test"))},
        "megatron_args": shlex.join(megatron_args),
    }
