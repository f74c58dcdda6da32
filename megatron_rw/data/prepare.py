"""Build the multi-domain corpus, tokenizer and Megatron datasets: ``python -m megatron_rw.data.prepare``.

Steps (each skipped when its result exists and its inputs are unchanged, so a rerun resumes):

1. fetch every source's package into ``--cache-dir`` (several at once: it is network-bound);
2. per domain: documents -> sample to the budget -> train/val/test by id hash -> JSONL;
3. train a SentencePiece BPE model on a sample of the train splits;
4. per domain and split: a Megatron indexed dataset (``.bin``/``.idx``), EOD after each document;
5. ``manifest.json``: counts, tokenizer, and ready-to-use ``--*-data-path`` blends.

A source that fails is reported (with the command that failed) and left out; the run fails only
when fewer than two domains have any documents.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

from megatron_rw.data import corpus, fetch
from megatron_rw.data.cache import read_json, write_json_atomic
from megatron_rw.data.config import BLEND_WEIGHTS, PROFILES, PrepareConfig
from megatron_rw.data.indexed import indexed_exists, read_jsonl_texts, write_indexed_dataset
from megatron_rw.data.manifest import build_manifest
from megatron_rw.data.sources import DOMAINS, SOURCES, Source, sources_for
from megatron_rw.data.split import SPLITS, sample_by_budget

MIN_DOMAINS = 2


def log(msg: str) -> None:
    print(msg, flush=True)


def build_parser() -> argparse.ArgumentParser:
    listing = "\n".join(f"  {s.domain:13s} {s.name:12s} {s.about}" for s in SOURCES)
    p = argparse.ArgumentParser(
        prog="python -m megatron_rw.data.prepare",
        description="Fetch a real multi-domain English corpus and build a SentencePiece tokenizer "
                    "and one Megatron indexed dataset per domain and split.",
        epilog=f"sources (domain, name, content):\n{listing}",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", choices=sorted(PROFILES), default="small",
                   help="size defaults: small (CPU demo, ~2 MB/domain) or full (~70 MB)")
    p.add_argument("--out", help="output directory (default: data/<profile>)")
    p.add_argument("--cache-dir", default="data/cache", help="downloads cache (default: %(default)s)")
    p.add_argument("--domains", help=f"comma-separated subset of: {','.join(DOMAINS)}")
    p.add_argument("--max-mb-per-domain", type=float, help="text budget per domain in MB")
    p.add_argument("--vocab-size", type=int, help="BPE vocabulary size (small 4096, full 8000)")
    p.add_argument("--tokenizer-sample-mb", type=float, help="train text for the tokenizer, MB")
    p.add_argument("--val-fraction", type=float, default=0.02, help="default: %(default)s")
    p.add_argument("--test-fraction", type=float, default=0.02, help="default: %(default)s")
    p.add_argument("--max-doc-chars", type=int, default=8000,
                   help="cut longer texts into documents of this size (default: %(default)s)")
    p.add_argument("--blend-weights", choices=BLEND_WEIGHTS, default="tokens",
                   help="blend weights by token count or uniform per domain (default: %(default)s)")
    p.add_argument("--threads", type=int, help="threads for tokenizer training and encoding")
    p.add_argument("--force", action="store_true", help="redo all steps (downloads stay cached)")
    return p


def config_from_args(args: argparse.Namespace) -> PrepareConfig:
    """Flags override the profile's defaults."""
    kwargs = dict(PROFILES[args.profile])
    for name in ("max_mb_per_domain", "vocab_size", "tokenizer_sample_mb", "threads"):
        if getattr(args, name) is not None:
            kwargs[name] = getattr(args, name)
    if args.domains:
        kwargs["domains"] = tuple(d.strip() for d in args.domains.split(",") if d.strip())
    return PrepareConfig(out=args.out or f"data/{args.profile}", cache_dir=args.cache_dir,
                         profile=args.profile, val_fraction=args.val_fraction,
                         test_fraction=args.test_fraction, max_doc_chars=args.max_doc_chars,
                         blend_weights=args.blend_weights, force=args.force, **kwargs)


def _fetch_group(artifacts: list[fetch.Artifact], cache: Path) -> dict:
    """Fetch artifacts one after another (one group per registry: apt must not run twice at once)."""
    done = {}
    for a in artifacts:
        start, cached = time.perf_counter(), fetch.is_cached(a, cache)
        try:
            root = fetch.fetch(a, cache)
        except Exception as exc:  # noqa: BLE001 - reported per source by the caller
            done[a] = (None, f"{type(exc).__name__}: {exc}")
            continue
        done[a] = (root, None)
        size = sum(p.stat().st_size for p in (cache / "downloads" / a.key).iterdir()) / 1e6
        log(f"[fetch] {a.kind:4s} {a.spec:32s} {size:6.1f} MB {time.perf_counter() - start:5.1f} s"
            + (" (cached)" if cached else ""))
    return done


def fetch_sources(sources: list[Source], cache: Path) -> dict[fetch.Artifact, tuple]:
    """Fetch every artifact of ``sources``: ``{artifact: (unpacked root, error message)}``."""
    groups: dict[str, list[fetch.Artifact]] = {}
    for s in sources:
        if s.artifact is not None and s.artifact not in groups.get(s.artifact.kind, []):
            groups.setdefault(s.artifact.kind, []).append(s.artifact)
    results: dict = {}
    with ThreadPoolExecutor(max_workers=max(1, len(groups))) as pool:
        for part in pool.map(lambda g: _fetch_group(g, cache), groups.values()):
            results.update(part)
    return results


def build_domains(cfg: PrepareConfig, out: Path) -> tuple[dict[str, dict], dict[str, str]]:
    """Steps 1-2: JSONL per domain.

    Returns:
        The stats of every domain that has documents, and ``{source name: error}`` of the sources
        that failed.
    """
    cache = Path(cfg.cache_dir)
    stats: dict[str, dict] = {}
    failed: dict[str, str] = {}
    todo = []
    for d in cfg.domains:
        done = corpus.load_done(out, d, cfg)
        if done is None:
            todo.append(d)
        else:
            stats[d] = done
            log(f"[extract] {d:13s} {_summary(done)} (done earlier)")
    fetched = fetch_sources([s for d in todo for s in sources_for(d)], cache)
    for domain in todo:
        start, results, packages = time.perf_counter(), {}, {}
        for src in sources_for(domain):
            root, error = (None, None) if src.artifact is None else fetched[src.artifact]
            if error is not None:
                results[src.name] = corpus.SourceResult(error=error)
            else:
                results[src.name] = corpus.read_source(src, root, cfg.max_doc_chars)
                packages[src.name] = fetch.package_file(src.artifact, cache) if src.artifact else None
            if results[src.name].error:
                failed[src.name] = results[src.name].error
                what = f"{src.artifact.kind} {src.artifact.spec}" if src.artifact else "local files"
                log(f"ERROR: source {src.name!r} ({what}) failed, continuing without it: "
                    f"{results[src.name].error}")
        if not any(r.documents for r in results.values()):
            log(f"ERROR: domain {domain!r} has no documents: every source failed")
            continue
        stats[domain] = corpus.write_domain(out, domain, results, cfg, packages, log)
        for name, r in results.items():
            if not r.error:
                src = stats[domain]["sources"][name]
                log(f"[extract]   {name:13s} kept {src['documents']:6d} of {len(r.documents):6d} docs, "
                    f"{src['bytes'] / 1e6:6.2f} of {src['available_bytes'] / 1e6:6.2f} MB "
                    f"{r.seconds:5.1f} s")
        log(f"[extract] {domain:13s} {_summary(stats[domain])} {time.perf_counter() - start:5.1f} s")
    return stats, failed


def _summary(st: dict) -> str:
    sp = st["splits"]
    docs = sum(v["documents"] for v in sp.values())
    mb = sum(v["bytes"] for v in sp.values()) / 1e6
    return (f"{docs:6d} docs {mb:6.2f} MB (train/val/test docs "
            f"{sp['train']['documents']}/{sp['val']['documents']}/{sp['test']['documents']})")


def train_tokenizer(cfg: PrepareConfig, out: Path, stats: dict[str, dict]) -> Path:
    """Step 3: the tokenizer, retrained only when its settings or the train splits changed."""
    from megatron_rw.data.tokenizer import train_sentencepiece

    model, info_path = out / "tokenizer.model", out / "tokenizer.json"
    key = _digest({"vocab_size": cfg.vocab_size, "sample_mb": cfg.tokenizer_sample_mb,
                   "train": {d: stats[d]["splits"]["train"]["sha256"] for d in sorted(stats)}})
    if not cfg.force and model.exists() and info_path.exists() and read_json(info_path)["key"] == key:
        log(f"[tokenizer] done earlier: {model}")
        return model
    start = time.perf_counter()
    # An equal share per domain, so that small domains get pieces of their own.
    budget = int(cfg.tokenizer_sample_mb * 1e6 / len(stats))
    sample: list[str] = []
    for d in sorted(stats):
        texts = list(read_jsonl_texts(corpus.jsonl_path(out, d, "train")))
        keep = sample_by_budget([f"{d}/{i}" for i in range(len(texts))],
                                [len(t.encode("utf-8")) for t in texts], budget)
        sample.extend(texts[i] for i in keep)
    mb = sum(len(t.encode("utf-8")) for t in sample) / 1e6
    train_sentencepiece(sample, model, cfg.vocab_size, num_threads=cfg.threads)
    write_json_atomic(info_path, {"key": key, "vocab_size": cfg.vocab_size, "sample_mb": round(mb, 3)})
    log(f"[tokenizer] BPE vocab {cfg.vocab_size} trained on {mb:.1f} MB in "
        f"{time.perf_counter() - start:.1f} s -> {model}")
    return model


def build_indexed(cfg: PrepareConfig, out: Path, stats: dict[str, dict], model: Path) -> dict:
    """Step 4: ``{domain: {split: {documents, tokens, bytes, prefix}}}``."""
    from megatron_rw.data.tokenizer import SentencePieceTokenizer

    tok = SentencePieceTokenizer(model)
    result: dict[str, dict] = {}
    for d in sorted(stats):
        start, result[d] = time.perf_counter(), {}
        for split in SPLITS:
            prefix = out / "megatron" / f"{d}_{split}"
            info_path = Path(f"{prefix}.json")
            key = _digest({"tokenizer": tok.sha256, "jsonl": stats[d]["splits"][split]["sha256"]})
            info = read_json(info_path) if info_path.exists() else None
            if cfg.force or not indexed_exists(prefix) or not info or info["key"] != key:
                texts = read_jsonl_texts(corpus.jsonl_path(out, d, split))
                info = {"key": key, **write_indexed_dataset(prefix, texts, tok, num_threads=cfg.threads)}
                write_json_atomic(info_path, info)
            result[d][split] = {**{k: info[k] for k in ("documents", "tokens", "bytes")},
                                "prefix": str(prefix.resolve())}
        r = result[d]
        tokens = sum(v["tokens"] for v in r.values())
        bpt = sum(v["bytes"] for v in r.values()) / max(tokens, 1)
        log(f"[tokenize] {d:13s} tokens train/val/test {r['train']['tokens']}/{r['val']['tokens']}/"
            f"{r['test']['tokens']}  {bpt:.2f} bytes/token {time.perf_counter() - start:5.1f} s")
    return result


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode("utf-8")).hexdigest()


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = config_from_args(args)
    except ValueError as exc:
        build_parser().error(str(exc))
    start = time.perf_counter()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    log(f"[prepare] profile {cfg.profile}: {cfg.max_mb_per_domain:g} MB/domain, vocab "
        f"{cfg.vocab_size}, out {out}, cache {cfg.cache_dir}")
    stats, failed = build_domains(cfg, out)
    if len(stats) < MIN_DOMAINS:
        log(f"ERROR: only {len(stats)} domain(s) have documents ({', '.join(stats) or 'none'}); "
            f"at least {MIN_DOMAINS} are needed. See the errors above.")
        return 1
    model = train_tokenizer(cfg, out, stats)
    indexed = build_indexed(cfg, out, stats, model)
    manifest = build_manifest(cfg, out, stats, indexed, model, argv if argv is not None else sys.argv[1:])
    manifest["failed_sources"] = failed
    manifest["failed_domains"] = [d for d in cfg.domains if d not in stats]
    write_json_atomic(out / "manifest.json", manifest)
    failed = [*failed, *(f"domain:{d}" for d in manifest["failed_domains"])]
    total = manifest["totals"]
    log(f"[done] {len(stats)} domains, {total['documents']} docs, {total['tokens']} tokens, "
        f"{total['bytes_per_token']:.2f} bytes/token, {time.perf_counter() - start:.1f} s wall"
        + (f"; FAILED: {', '.join(failed)}" if failed else "") + f"\n[done] manifest: {out / 'manifest.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
