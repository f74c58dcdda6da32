"""``PrepareConfig``: every setting of ``python -m megatron_rw.data.prepare``, with its profiles."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from megatron_rw.data.sources import DOMAINS

# Size profiles. "small" is a CPU demo (whole prepare in about a minute on 2 cores, downloads
# included); "full" keeps everything the sources have (~70 MB of text).
PROFILES: dict[str, dict] = {
    "small": {"max_mb_per_domain": 2.0, "vocab_size": 4096, "tokenizer_sample_mb": 4.0},
    "full": {"max_mb_per_domain": 25.0, "vocab_size": 8000, "tokenizer_sample_mb": 20.0},
}

BLEND_WEIGHTS = ("tokens", "uniform")


@dataclass(frozen=True)
class PrepareConfig:
    """Settings of the data preparation (one field per ``prepare`` flag)."""

    out: str
    """Output directory: JSONL, tokenizer, Megatron datasets and ``manifest.json``."""

    cache_dir: str = "data/cache"
    """Where downloaded and unpacked packages are kept; shared by all profiles and outputs."""

    profile: str = "small"
    """Size profile naming the defaults of the three size settings below (see ``PROFILES``)."""

    domains: tuple[str, ...] = DOMAINS
    """Domains to build; each becomes one Megatron dataset per split."""

    max_mb_per_domain: float = PROFILES["small"]["max_mb_per_domain"]
    """Text budget per domain in MB (10^6 bytes of UTF-8); documents are sampled by id hash."""

    vocab_size: int = PROFILES["small"]["vocab_size"]
    """SentencePiece BPE vocabulary size (ids 0-2 are <unk>, <s>, </s>; 3 is the newline)."""

    tokenizer_sample_mb: float = PROFILES["small"]["tokenizer_sample_mb"]
    """Train-split text the tokenizer is trained on, in MB, shared equally between domains so that
    small domains (qa) get pieces of their own."""

    val_fraction: float = 0.02
    """Share of documents in the validation split (by hash of the document id)."""

    test_fraction: float = 0.02
    """Share of documents in the test split (by hash of the document id)."""

    max_doc_chars: int = 8000
    """Longer texts are cut at paragraph boundaries into documents of at most this many characters.
    Changing it changes document ids, hence splits: keep it equal across profiles."""

    blend_weights: str = "tokens"
    """Weights of the ``--data-path`` blends: ``tokens`` (each domain by its token count, i.e. the
    natural mixture) or ``uniform`` (every domain equally, upsampling small ones)."""

    threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    """Threads for tokenizer training and encoding."""

    force: bool = False
    """Redo every step in ``out`` even when its result exists (downloads stay cached)."""

    def __post_init__(self):
        if self.profile not in PROFILES:
            raise ValueError(f"--profile: unknown profile {self.profile!r}; known: {', '.join(PROFILES)}")
        unknown = [d for d in self.domains if d not in DOMAINS]
        if unknown or not self.domains:
            raise ValueError(f"--domains: unknown or empty {unknown}; known: {', '.join(DOMAINS)}")
        if not self.max_mb_per_domain > 0 or not self.tokenizer_sample_mb > 0:
            raise ValueError("--max-mb-per-domain and --tokenizer-sample-mb must be > 0")
        if self.vocab_size < 300:  # 256 byte-fallback pieces + specials must fit
            raise ValueError(f"--vocab-size must be >= 300, got {self.vocab_size}")
        if not (self.val_fraction >= 0 and self.test_fraction >= 0
                and self.val_fraction + self.test_fraction < 1):
            raise ValueError("--val-fraction and --test-fraction must be >= 0 and sum to < 1")
        if self.max_doc_chars < 200:
            raise ValueError(f"--max-doc-chars must be >= 200, got {self.max_doc_chars}")
        if self.blend_weights not in BLEND_WEIGHTS:
            raise ValueError(f"--blend-weights must be one of {', '.join(BLEND_WEIGHTS)}")
        if self.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {self.threads}")

    @property
    def max_bytes_per_domain(self) -> int:
        return int(self.max_mb_per_domain * 1e6)
