"""A SentencePiece BPE tokenizer: training, and the adapter object megatron-core's datasets use.

Training settings and why:

- ``normalization_rule_name="identity"``, ``remove_extra_whitespaces=False``,
  ``allow_whitespace_only_pieces=True``: code and docs need their indentation and newlines; the
  default NFKC rule and whitespace folding would lose them (decode(encode(x)) == x here).
- ``"\\n"`` is a user-defined symbol: a single token that BPE merges never cross.
- ``byte_fallback=True``: any character outside the vocabulary becomes its UTF-8 bytes, never
  ``<unk>``, so every domain (Greek, symbols, emoji in docs) round-trips.
- ``split_digits=True``: numbers are read digit by digit, as in Llama's tokenizer.
- ids: ``<unk>`` 0, ``<s>`` 1, ``</s>`` 2 (the end-of-document token appended to each document),
  no padding id (megatron-core then uses -1 for padding, which no token can collide with).

The trained model works with Megatron-LM's ``--tokenizer-type GPTSentencePieceTokenizer``, whose
``eod`` is the model's ``</s>`` id as here.
"""

from __future__ import annotations

import hashlib
import io
from collections import OrderedDict
from pathlib import Path
from typing import Iterable, Sequence

import sentencepiece as spm

from megatron_rw.data.cache import atomic_path

# SentencePiece drops training sentences longer than this (bytes); documents are cut well below it.
MAX_SENTENCE_BYTES = 1 << 16


def train_sentencepiece(docs: Iterable[str], model_path: str | Path, vocab_size: int,
                        num_threads: int = 2) -> Path:
    """Train a BPE model on ``docs`` (one string per document) and write it to ``model_path``.

    Documents are passed as separate sentences rather than one concatenated string: SentencePiece
    counts pieces per sentence, and one huge string would be dropped for exceeding
    ``MAX_SENTENCE_BYTES``.
    """
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(docs),
        model_writer=model,
        model_type="bpe",
        vocab_size=vocab_size,
        character_coverage=0.9995,  # rarer characters are left to byte fallback
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        user_defined_symbols=["\n"],
        byte_fallback=True,
        split_digits=True,
        max_sentence_length=MAX_SENTENCE_BYTES,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        num_threads=num_threads,
        minloglevel=2,  # SentencePiece logs every step to stderr otherwise
    )
    with atomic_path(model_path) as tmp:
        tmp.write_bytes(model.getvalue())
    return Path(model_path)


class SentencePieceTokenizer:
    """Tokenizer object for ``GPTDatasetConfig(tokenizer=...)`` and for encoding documents.

    megatron-core's ``GPTDataset`` reads ``eod`` and ``vocab_size`` and, optionally, ``pad`` (absent
    here: no padding id, megatron-core falls back to -1). ``unique_identifiers`` follows
    megatron-core's tokenizer convention of naming what determines the tokenization.

    Args:
        model_path: A SentencePiece ``.model`` file.
    """

    def __init__(self, model_path: str | Path):
        self.model_path = str(model_path)
        self._proto = Path(model_path).read_bytes()
        self._sp = spm.SentencePieceProcessor(model_proto=self._proto)
        self.unique_identifiers = OrderedDict(
            [("class", type(self).__name__), ("tokenizer_path", [self.model_path]),
             ("sha256", hashlib.sha256(self._proto).hexdigest())])

    @property
    def vocab_size(self) -> int:
        """Number of ids (pieces) in the model."""
        return self._sp.get_piece_size()

    @property
    def eod(self) -> int:
        """End-of-document id, appended to every document: the model's ``</s>``."""
        return self._sp.eos_id()

    @property
    def eos(self) -> int:
        """Same as ``eod``."""
        return self._sp.eos_id()

    @property
    def bos(self) -> int:
        """Beginning-of-sentence id (not added to documents)."""
        return self._sp.bos_id()

    @property
    def vocab(self) -> dict[str, int]:
        """Piece -> id."""
        return {self._sp.id_to_piece(i): i for i in range(self.vocab_size)}

    @property
    def inv_vocab(self) -> dict[int, str]:
        """Id -> piece."""
        return {i: self._sp.id_to_piece(i) for i in range(self.vocab_size)}

    @property
    def sha256(self) -> str:
        """Digest of the model file: identifies the tokenization."""
        return self.unique_identifiers["sha256"]

    def tokenize(self, text: str) -> list[int]:
        """Ids of ``text`` (no EOD added)."""
        return self._sp.encode(text)

    def tokenize_batch(self, texts: Sequence[str], num_threads: int = -1) -> list[list[int]]:
        """Ids of each text; SentencePiece encodes a list on several threads."""
        return self._sp.encode(list(texts), num_threads=num_threads)

    def detokenize(self, ids: Sequence[int]) -> str:
        """Text of ``ids``; control ids (``</s>``) decode to nothing."""
        return self._sp.decode([int(i) for i in ids])
