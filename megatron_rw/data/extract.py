"""Format extractors: pure functions from one file's content to plain text (markup is in ``markup``).

No file system access here (``sources`` decides which files to read), so every function can be
tested on a small inline sample. The goal is readable prose for language modelling, not a faithful
rendering: markup that a reader would not see is dropped, the words are kept.
"""

from __future__ import annotations

import re
import textwrap

# ---------------------------------------------------------------------------- generic text


def normalize_text(text: str) -> str:
    """Unify newlines, drop control characters, trailing spaces and runs of blank lines."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = re.sub(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]", "", text)
    text = re.sub(r"[ \t]+\n", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    # Leading spaces are kept: they are indentation when a document starts inside a code block.
    return text.lstrip("\n").rstrip()


def _pack(parts: list[str], sep: str, max_chars: int) -> list[str]:
    """Greedily join consecutive ``parts`` with ``sep`` into pieces of at most ``max_chars``."""
    pieces, current = [], ""
    for part in parts:
        if current and len(current) + len(sep) + len(part) > max_chars:
            pieces.append(current)
            current = part
        else:
            current = f"{current}{sep}{part}" if current else part
    if current:
        pieces.append(current)
    return pieces


def _hard_split(text: str, max_chars: int) -> list[str]:
    """Split at line ends where possible, else every ``max_chars`` characters."""
    lines = []
    for line in text.split("\n"):
        # one very long line (minified data, a long verse) is cut into max_chars slices
        lines += [line[i:i + max_chars] for i in range(0, len(line), max_chars)] or [line]
    return _pack(lines, "\n", max_chars)


def chunk_text(text: str, max_chars: int) -> list[str]:
    """Cut ``text`` into documents of at most ``max_chars`` characters at paragraph boundaries.

    Whole books would give a handful of huge documents: too few to split into train/val/test by
    document, and a packed row would almost never see a document start. Paragraph-sized packing keeps
    related text together while giving many documents.
    """
    text = normalize_text(text)
    if len(text) <= max_chars:
        return [text] if text.strip() else []
    parts = []
    for para in text.split("\n\n"):
        parts += [para] if len(para) <= max_chars else _hard_split(para, max_chars)
    chunks = _pack(parts, "\n\n", max_chars)
    return [c.strip("\n") for c in chunks if c.strip()]


def strip_gutenberg_boilerplate(text: str) -> str:
    """Keep what lies between Project Gutenberg's ``*** START OF`` and ``*** END OF`` markers."""
    start = re.search(r"^\*\*\*\s*START OF.*$", text, flags=re.M | re.I)
    if start:
        text = text[start.end():]
    end = re.search(r"^\*\*\*\s*END OF", text, flags=re.M | re.I)
    if end:
        text = text[:end.start()]
    return text


# ---------------------------------------------------------------------------- dictd dictionaries

_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def dictd_b64_decode(digits: str) -> int:
    """Decode a dictd index number: base-64 digits, most significant first (not RFC 4648 bytes)."""
    value = 0
    for ch in digits:
        value = value * 64 + _B64.index(ch)
    return value


def dictd_entries(index_text: str, dict_bytes: bytes) -> list[tuple[str, str]]:
    """Return ``(headword, definition)`` pairs of a dictd dictionary.

    Args:
        index_text: The ``.index`` file: ``headword<TAB>offset<TAB>length`` per line.
        dict_bytes: The uncompressed ``.dict`` data (``.dict.dz`` is gzip-compatible).

    Several headwords may point at the same entry (aliases): each entry is returned once. The
    ``00-database-*`` entries are the dictionary's own metadata and are skipped.
    """
    seen, out = set(), []
    for line in index_text.splitlines():
        parts = line.split("\t")
        if len(parts) < 3 or parts[0].startswith("00-database") or parts[0].startswith("00database"):
            continue
        span = (dictd_b64_decode(parts[1]), dictd_b64_decode(parts[2]))
        if span in seen:
            continue
        seen.add(span)
        body = dict_bytes[span[0]:span[0] + span[1]].decode("utf-8", errors="replace")
        out.append((parts[0], body))
    return out


def dictd_entry_text(body: str) -> str:
    """Plain text of one dictd entry: dedented, ``{cross references}`` reduced to their words."""
    lines = body.strip("\n").split("\n")
    # Bodies are indented (by 4 in jargon, 8 in foldoc) after a less indented part-of-speech line:
    # remove the most common indent, keeping the extra indent of examples.
    indents = [len(ln) - len(ln.lstrip(" ")) for ln in lines[1:] if ln.strip()]
    common = max(set(indents), key=lambda i: (indents.count(i), i)) if indents else 0
    rest = "\n".join(ln[min(common, len(ln) - len(ln.lstrip(" "))):] for ln in lines[1:])
    head = lines[0].strip()
    rest = re.sub(r"\{\s*([^{}]*?)\s*\}", lambda m: re.sub(r"\s+", " ", m.group(1)), rest)
    return normalize_text(f"{head}\n{rest}")


# ---------------------------------------------------------------------------- WordNet

_WN_POS = {"n": "noun", "v": "verb", "a": "adjective", "s": "adjective", "r": "adverb"}


def wordnet_gloss(line: str) -> str | None:
    """One ``data.<pos>`` line as ``"word, other word (noun): gloss"``; None for the header lines.

    A data line is ``offset lex_filenum ss_type w_cnt word lex_id ... | gloss`` with ``w_cnt`` in
    hexadecimal; the licence header lines start with two spaces.
    """
    if line.startswith("  ") or " | " not in line:
        return None
    fields_part, gloss = line.split(" | ", 1)
    fields = fields_part.split()
    try:
        pos, count = fields[2], int(fields[3], 16)
    except (IndexError, ValueError):
        return None
    words = []
    for i in range(count):
        word = fields[4 + 2 * i]
        word = re.sub(r"\((a|p|ip)\)$", "", word)  # adjective position markers, e.g. "galore(ip)"
        words.append(word.replace("_", " "))
    return f"{', '.join(words)} ({_WN_POS.get(pos, pos)}): {gloss.strip()}"


# ---------------------------------------------------------------------------- Brown corpus

_NO_SPACE_BEFORE = {",", ".", ";", ":", "!", "?", ")", "]", "''", "'", "n't", "'s"}
_NO_SPACE_AFTER = {"``", "(", "[", "$"}


def brown_to_text(raw: str) -> str:
    """Detokenise a Brown corpus file (``word/tag`` tokens; a tab starts a paragraph)."""
    paragraphs: list[list[str]] = []
    for line in raw.split("\n"):
        if not line.strip():
            continue
        tokens = line.split()
        words = [t.rsplit("/", 1)[0] for t in tokens]
        headline = all(t.rsplit("/", 1)[-1].endswith("-hl") for t in tokens)
        if line.startswith("\t") or headline or not paragraphs:
            paragraphs.append([])
        paragraphs[-1].extend(words)
        if headline:
            paragraphs.append([])
    texts = []
    for words in paragraphs:
        pieces: list[str] = []
        glue = True  # no space before the first word
        for w in words:
            if not glue and w not in _NO_SPACE_BEFORE:
                pieces.append(" ")
            pieces.append('"' if w in ("``", "''") else w)
            glue = w in _NO_SPACE_AFTER
        if pieces:
            texts.append("".join(pieces))
    return normalize_text("\n\n".join(t for t in texts if t))


# ---------------------------------------------------------------------------- chatterbot YAML


def _yaml_scalar(first: str, more: list[str]) -> str:
    """The value of one list item: a plain, quoted or block (``|``, ``>``) scalar."""
    first = first.strip()
    if first[:1] in ("|", ">") and re.match(r"^[|>][+-]?\d*$", first):
        body = textwrap.dedent("\n".join(more)).strip("\n")
        return body if first[0] == "|" else re.sub(r"(?<!\n)\n(?!\n)", " ", body)
    joined = " ".join([first] + [m.strip() for m in more if m.strip()])
    if joined[:1] == "'" and joined.endswith("'") and len(joined) > 1:
        return joined[1:-1].replace("''", "'")
    if joined[:1] == '"' and joined.endswith('"') and len(joined) > 1:
        return joined[1:-1].encode("latin-1", "backslashreplace").decode("unicode_escape")
    return joined


def chatterbot_conversations(text: str) -> list[list[str]]:
    """Conversations of a chatterbot-corpus YAML file: ``conversations:`` then ``- - a`` / ``  - b``.

    A small parser for exactly this layout (no PyYAML in the environment): each ``- -`` starts a
    conversation, each deeper ``-`` adds an utterance, lines indented further belong to the value.
    """
    convs: list[list[str]] = []
    lines = text.replace("\r\n", "\n").split("\n")
    try:
        start = next(i for i, ln in enumerate(lines) if ln.startswith("conversations:")) + 1
    except StopIteration:
        return []
    item: tuple[int, str] | None = None  # (indent of the item's text, its first line)
    more: list[str] = []

    def flush():
        if item is not None and convs:
            convs[-1].append(_yaml_scalar(item[1], more))

    for line in lines[start:]:
        if line and not line[0].isspace() and not line.startswith("-"):
            break  # the next top-level key
        new_conv = re.match(r"^(\s*)-\s+-\s+(.*)$", line)
        new_item = re.match(r"^(\s*)-\s+(.*)$", line)
        if new_conv:
            flush()
            convs.append([])
            item, more = (len(new_conv.group(1)) + 2, new_conv.group(2)), []
        elif new_item and item is not None and len(new_item.group(1)) == item[0]:
            flush()
            item, more = (item[0], new_item.group(2)), []
        elif item is not None:
            more.append(line)
    flush()
    return [[u for u in c if u.strip()] for c in convs if any(u.strip() for u in c)]


def dialogue_text(utterances: list[str]) -> str:
    """A conversation as alternating ``Q:`` / ``A:`` lines."""
    return "\n".join(("Q: " if i % 2 == 0 else "A: ") + u.strip() for i, u in enumerate(utterances))
