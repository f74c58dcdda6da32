"""A prepared corpus with deliberately redundant and corrupted training data added.

    python -m benchmarks.quality.noisy_corpus --base data/small --out data/small_noisy

Two extra training "domains" join the base corpus's seven (validation stays the clean base one):

- ``duplicated``: ``--dup-docs`` training documents of the base corpus (drawn with a fixed seed
  from all domains), each repeated ``--dup-copies`` times: text the model has seen over and over;
- ``random``: documents of uniformly random token ids (outside the special ids), decoded to text
  and written like any other document: pure noise, nothing to learn.

Each gets ``--share`` of the training blend; the base domains keep their relative weights. The
output is laid out as ``megatron_rw.data.prepare`` writes one (its ``manifest.json`` feeds
``python -m megatron_rw.data.flags`` and the launcher's ``DATA=``); base datasets and tokenizer
are symlinked, not copied.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

from megatron_rw.data.indexed import indexed_exists, read_jsonl_texts, write_indexed_dataset
from megatron_rw.data.tokenizer import SentencePieceTokenizer

EXTRA = ("duplicated", "random")


def _link(src: Path, dst: Path) -> None:
    if not dst.exists():
        dst.symlink_to(src.resolve())


def build(base: Path, out: Path, dup_docs: int, dup_copies: int, random_docs: int,
          random_len: int, share: float, seed: int) -> dict:
    manifest = json.loads((base / "manifest.json").read_text())
    tok = SentencePieceTokenizer(base / "tokenizer.model")
    (out / "megatron").mkdir(parents=True, exist_ok=True)
    _link(base / "tokenizer.model", out / "tokenizer.model")
    for f in (base / "megatron").iterdir():
        _link(f, out / "megatron" / f.name)

    rng = random.Random(seed)
    docs = [t for d in sorted(manifest["domains"])
            for t in read_jsonl_texts(manifest["domains"][d]["jsonl"]["train"])]
    picked = rng.sample(docs, dup_docs)
    special = {tok.eod, tok.bos, 0}
    ids = [i for i in range(tok.vocab_size) if i not in special]
    noise = [tok.detokenize([rng.choice(ids) for _ in range(random_len)])
             for _ in range(random_docs)]
    texts = {"duplicated": [d for d in picked for _ in range(dup_copies)], "random": noise}
    stats = {}
    for name in EXTRA:
        prefix = out / "megatron" / f"{name}_train"
        if not indexed_exists(prefix):
            stats[name] = write_indexed_dataset(prefix, texts[name], tok, num_threads=1)

    words = manifest["data_path"]["train"].split()
    scale = 1.0 - share * len(EXTRA)
    train = [f"{float(w) * scale:.6f} {p}" for w, p in zip(words[0::2], words[1::2])]
    train += [f"{share:.6f} {out.resolve() / 'megatron' / (n + '_train')}" for n in EXTRA]
    noisy = {
        "command": "python -m benchmarks.quality.noisy_corpus " + " ".join(sys.argv[1:]),
        "base": str(base.resolve()),
        "extra": {"duplicated": {"documents": dup_docs, "copies": dup_copies},
                  "random": {"documents": random_docs, "tokens_per_document": random_len},
                  "share_each": share, "seed": seed, "written": stats},
        "tokenizer": manifest["tokenizer"],
        "data_path": {"train": " ".join(train), "valid": manifest["data_path"]["valid"],
                      "test": manifest["data_path"]["test"]},
    }
    (out / "manifest.json").write_text(json.dumps(noisy, indent=1))
    return noisy


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", default="data/small", help="a corpus from megatron_rw.data.prepare")
    p.add_argument("--out", default="data/small_noisy")
    p.add_argument("--dup-docs", type=int, default=8)
    p.add_argument("--dup-copies", type=int, default=250)
    p.add_argument("--random-docs", type=int, default=2000)
    p.add_argument("--random-len", type=int, default=400, help="token ids per random document")
    p.add_argument("--share", type=float, default=0.1, help="blend share of each extra domain")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if not (Path(a.base) / "manifest.json").exists():
        print(f"noisy_corpus: error: {a.base}/manifest.json does not exist; run "
              f"python -m megatron_rw.data.prepare --profile small --out {a.base}", file=sys.stderr)
        return 1
    build(Path(a.base), Path(a.out), a.dup_docs, a.dup_copies, a.random_docs, a.random_len,
          a.share, a.seed)
    print(f"wrote {a.out}/manifest.json: extra training domains {', '.join(EXTRA)} at "
          f"{a.share:.0%} of the blend each")
    return 0


if __name__ == "__main__":
    sys.exit(main())
