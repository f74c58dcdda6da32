"""Megatron data flags for a prepared corpus: ``python -m megatron_rw.data.flags DIR``.

Prints one argument per line (for ``mapfile`` in the launcher): the tokenizer, the train blend
and the valid blend from ``DIR/manifest.json``. Prefixes are re-rooted at ``DIR`` so a corpus
keeps working after it is moved or mounted elsewhere (a container, a shared file system).

With ``--per-domain-validation`` the validation prefixes are listed without weights and
Megatron's own per-set evaluation is switched on (``--multiple-validation-sets
--full-validation``: every validation document of every domain, each domain logged as its own
set; Megatron builds several validation sets only from an unweighted blend, and only with
full validation). Where the ``megatron.training`` on the path knows ``--validation-set-names``
the domains' names are passed too, so the sets are logged as ``validation-books`` rather than
``validation-0``.
"""

from __future__ import annotations

import json
import os
import sys
from typing import List, Optional

from megatron_rw.data.domains import domain_name

TOKENIZER_TYPE = "GPTSentencePieceTokenizer"  # the model's own ids, EOD = </s>, as prepared
BLENDS = (("train", "--train-data-path"), ("valid", "--valid-data-path"))


def data_flags(corpus_dir: str, per_domain_validation: bool = False,
               set_names: Optional[bool] = None) -> List[str]:
    """Flags for ``pretrain_gpt`` (and Megatron-LM's ``pretrain_gpt.py``) from a prepared corpus.

    Args:
        per_domain_validation: one validation set per domain (see the module's docstring).
        set_names: pass ``--validation-set-names``; None asks the installed
            ``megatron.training`` (:func:`megatron_rw.megatron_training.installed.names_validation_sets`).

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
    names = []
    for split, flag in BLENDS:
        words = manifest["data_path"][split].split()
        flags.append(flag)
        unweighted = per_domain_validation and split == "valid"
        for weight, prefix in zip(words[0::2], words[1::2]):
            local = os.path.join(root, "megatron", os.path.basename(prefix))
            if not os.path.isfile(local + ".bin"):
                raise FileNotFoundError(f"{local}.bin (listed in {manifest_path}) does not exist")
            flags += [local] if unweighted else [weight, local]
            if unweighted:
                names.append(domain_name(prefix))
    if per_domain_validation:
        flags += ["--multiple-validation-sets", "--full-validation"]
        if set_names is None:
            from megatron_rw.megatron_training.installed import names_validation_sets
            set_names = names_validation_sets()
        if set_names:
            flags += ["--validation-set-names", *names]
    return flags


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    per_domain = "--per-domain-validation" in argv
    rest = [a for a in argv if a != "--per-domain-validation"]
    if len(rest) != 1 or rest[0].startswith("-"):
        print("usage: python -m megatron_rw.data.flags CORPUS_DIR [--per-domain-validation]",
              file=sys.stderr)
        return 2
    try:
        print("\n".join(data_flags(rest[0], per_domain_validation=per_domain)))
    except FileNotFoundError as e:
        print(f"megatron_rw.data.flags: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
