"""Megatron data flags for a prepared corpus: ``python -m megatron_rw.data.flags DIR``.

Prints one argument per line (for ``mapfile`` in the launcher): the tokenizer, the train blend
and the valid blend from ``DIR/manifest.json``. Prefixes are re-rooted at ``DIR`` so a corpus
keeps working after it is moved or mounted elsewhere (a container, a shared file system).
"""

from __future__ import annotations

import json
import os
import sys
from typing import List, Optional

TOKENIZER_TYPE = "GPTSentencePieceTokenizer"  # the model's own ids, EOD = </s>, as prepared
BLENDS = (("train", "--train-data-path"), ("valid", "--valid-data-path"))


def data_flags(corpus_dir: str) -> List[str]:
    """Flags for ``pretrain_gpt`` (and Megatron-LM's ``pretrain_gpt.py``) from a prepared corpus.

    Raises:
        FileNotFoundError: no manifest, or a dataset file it names is missing under ``corpus_dir``.
    """
    manifest_path = os.path.join(corpus_dir, "manifest.json")
    if not os.path.isfile(manifest_path):
        raise FileNotFoundError(
            f"{manifest_path} does not exist: prepare the corpus first with "
            f"'python -m megatron_rw.data.prepare --profile small --out {corpus_dir}'")
    with open(manifest_path, encoding="utf-8") as f:
        manifest = json.load(f)
    root = os.path.abspath(corpus_dir)
    flags = ["--tokenizer-type", TOKENIZER_TYPE,
             "--tokenizer-model", os.path.join(root, "tokenizer.model")]
    for split, flag in BLENDS:
        words = manifest["data_path"][split].split()
        flags.append(flag)
        for weight, prefix in zip(words[0::2], words[1::2]):
            local = os.path.join(root, "megatron", os.path.basename(prefix))
            if not os.path.isfile(local + ".bin"):
                raise FileNotFoundError(f"{local}.bin (listed in {manifest_path}) does not exist")
            flags += [weight, local]
    return flags


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0].startswith("-"):
        print("usage: python -m megatron_rw.data.flags CORPUS_DIR", file=sys.stderr)
        return 2
    try:
        print("\n".join(data_flags(argv[0])))
    except FileNotFoundError as e:
        print(f"megatron_rw.data.flags: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
