"""The prepare CLI: frozen flags, profiles, and an offline end-to-end run with a failing source."""

import json
import platform
from pathlib import Path

import pytest

from megatron_rw.data import fetch, prepare
from megatron_rw.data.cache import CommandError
from megatron_rw.data.config import PROFILES, PrepareConfig
from megatron_rw.data.fetch import Artifact
from megatron_rw.data.gpt import datasets_from_manifest
from megatron_rw.data.sources import DOMAINS, SOURCES, Source
from tests.data.stdlib_text import stdlib_docstrings

EXPECTED_FLAGS = {
    "--profile", "--out", "--cache-dir", "--domains", "--max-mb-per-domain", "--vocab-size",
    "--tokenizer-sample-mb", "--val-fraction", "--test-fraction", "--max-doc-chars",
    "--blend-weights", "--threads", "--force",
}


def test_cli_is_frozen():
    # Renaming or dropping a flag breaks users' scripts and the Makefile: change this deliberately.
    parser = prepare.build_parser()
    flags = {s for a in parser._actions for s in a.option_strings if s.startswith("--")}
    assert flags - {"--help"} == EXPECTED_FLAGS


def test_profiles_and_overrides():
    cfg = prepare.config_from_args(prepare.build_parser().parse_args([]))
    assert cfg.profile == "small" and cfg.out == "data/small" and cfg.domains == DOMAINS
    assert cfg.vocab_size == PROFILES["small"]["vocab_size"] == 4096
    cfg = prepare.config_from_args(prepare.build_parser().parse_args(
        ["--profile", "full", "--vocab-size", "1000", "--domains", "qa, code"]))
    assert (cfg.out, cfg.vocab_size, cfg.domains) == ("data/full", 1000, ("qa", "code"))
    assert cfg.max_mb_per_domain == PROFILES["full"]["max_mb_per_domain"]
    with pytest.raises(ValueError, match="--domains"):
        PrepareConfig(out="x", domains=("nope",))
    with pytest.raises(SystemExit):
        prepare.main(["--vocab-size", "10"])


def test_registry_covers_seven_domains():
    assert set(DOMAINS) == {"books", "general", "encyclopedic", "tech_docs", "reference", "code", "qa"}
    assert len({s.name for s in SOURCES}) == len(SOURCES)


def _fake_sources(domain):
    """Offline sources of real text; the books source needs a download that fails."""
    docs = stdlib_docstrings()

    def read_code(_root):
        for path in sorted(Path(json.__file__).parent.parent.glob("*.py")):  # the stdlib's top level
            yield path.name, path.read_text(encoding="utf-8", errors="replace")

    def read_docs(_root):
        for i, doc in enumerate(docs):
            yield str(i), doc

    fakes = {"code": [Source("pycode", "code", None, read_code, "json package source")],
             "qa": [Source("docstrings", "qa", None, read_docs, "stdlib docstrings")],
             "books": [Source("broken", "books", Artifact("npm", "no-such-book@0.0.0"), read_docs,
                              "a package that cannot be fetched")]}
    return fakes[domain]


def _fail_fetch(artifact, cache_dir):
    raise CommandError(f"`npm pack --loglevel=error {artifact.spec}` exited with status 1: E404 Not Found")


ARGS = ["--vocab-size", "400", "--max-mb-per-domain", "0.1", "--tokenizer-sample-mb", "0.2",
        "--max-doc-chars", "1000", "--val-fraction", "0.1", "--test-fraction", "0.1",
        "--threads", "1"]


def test_prepare_end_to_end_offline(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(prepare, "sources_for", _fake_sources)
    monkeypatch.setattr(fetch, "fetch", _fail_fetch)
    out = tmp_path / "out"
    argv = ["--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--domains", "code,qa,books"]
    assert prepare.main(argv + ARGS) == 0
    log = capsys.readouterr().out
    # The failing source is named with its command; the others go on.
    assert "ERROR: source 'broken' (npm no-such-book@0.0.0)" in log
    assert "`npm pack --loglevel=error no-such-book@0.0.0` exited with status 1" in log
    assert "FAILED: broken, domain:books" in log

    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(manifest["domains"]) == ["code", "qa"]
    assert manifest["tokenizer"]["vocab_size"] == 400 and manifest["tokenizer"]["eod_id"] == 2
    assert manifest["tokenizer"]["dtype"] == "uint16"
    for split in ("train", "val", "test"):
        line = json.loads((out / "jsonl" / f"qa.{split}.jsonl").read_text().splitlines()[0])
        assert set(line) == {"id", "domain", "text"} and line["domain"] == "qa"
        assert manifest["tokens"][split] == sum(d["tokens"][split] for d in manifest["domains"].values())
    words = manifest["data_path"]["train"].split()
    assert len(words) == 4 and words[1].endswith("code_train") and words[3].endswith("qa_train")
    code_share = manifest["domains"]["code"]["tokens"]["train"] / manifest["tokens"]["train"]
    assert float(words[0]) == pytest.approx(code_share, abs=1e-5)  # natural (token-count) blend
    assert "--tokenizer-type GPTSentencePieceTokenizer" in manifest["megatron_args"]
    # The versions the corpus depends on (the code domain is this Python's stdlib).
    env = manifest["environment"]
    assert env["python"] == platform.python_version()
    assert env["packages"]["sentencepiece"] and env["packages"]["megatron-core"]

    (train, valid, test), tok, blends = datasets_from_manifest(out / "manifest.json", 32, [40, 8, 8])
    # A blend may round its size up by a sample or so.
    assert len(train) >= 40 and len(valid) >= 8 and len(test) >= 8 and tok.eod == 2
    assert {int(train[i]["dataset_id"]) for i in range(40)} == {0, 1}
    assert [p.rsplit("/", 1)[-1] for p in blends[1][0]] == ["code_val", "qa_val"]
    assert manifest["blend_domains"] == {"train": ["code", "qa"], "valid": ["code", "qa"],
                                         "test": ["code", "qa"]}  # dataset_id -> domain

    # A rerun resumes: nothing is rebuilt.
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != "manifest.json"}
    assert prepare.main(argv + ARGS) == 0
    assert "done earlier" in capsys.readouterr().out
    assert mtimes == {p: p.stat().st_mtime_ns for p in mtimes}


def test_prepare_fails_with_fewer_than_two_domains(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(prepare, "sources_for", _fake_sources)
    monkeypatch.setattr(fetch, "fetch", _fail_fetch)
    argv = ["--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"),
            "--domains", "code,books"]
    assert prepare.main(argv + ARGS) == 1
    assert "only 1 domain(s) have documents (code)" in capsys.readouterr().out
    assert not (tmp_path / "out" / "manifest.json").exists()
