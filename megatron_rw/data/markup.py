"""Markup extractors: reStructuredText (Python docs) and AsciiDoc (git docs) to plain text.

Not full parsers: they drop what a reader of the rendered page would not see (directives' syntax,
roles, section underlines, block delimiters, attributes) and keep every word.
"""

from __future__ import annotations

import re

from megatron_rw.data.extract import normalize_text

# ---------------------------------------------------------------------------- reStructuredText

_ADORNMENT = re.compile(r"^([=\-~^\"'`#*+_.:])\1{2,}\s*$")
_ROLE = re.compile(r":[\w:.+-]+:`([^`]*)`")
# Directives whose whole block carries no prose (index entries, table of contents, test setup...).
_DROP_DIRECTIVES = {
    "index", "toctree", "module", "moduleauthor", "sectionauthor", "highlight", "testsetup",
    "testcleanup", "currentmodule", "include", "raw", "only", "tabularcolumns", "impl-detail",
    "audit-event", "audit-event-table", "program", "opcode", "image", "figure", "productionlist",
}
_ADMONITIONS = {"note", "warning", "seealso", "important", "tip", "caution", "attention", "hint",
                "danger", "error", "deprecated", "versionadded", "versionchanged"}


def _role_text(m: re.Match) -> str:
    inner = m.group(1)
    target = re.match(r"^(.*?)\s*<[^<>]*>$", inner, flags=re.S)
    if target and target.group(1):
        inner = target.group(1)  # :ref:`Title <label>` -> Title
    return inner.lstrip("~!")


def rst_inline(text: str) -> str:
    """Strip inline reST markup: roles, literals, hyperlinks, substitutions."""
    text = _ROLE.sub(_role_text, text)
    text = re.sub(r"`([^`<]*?)\s*<[^`>]*>`__?", r"\1", text)  # `text <url>`_
    text = re.sub(r"``([^`]+)``", r"\1", text)
    text = re.sub(r"`([^`]+)`_{0,2}", r"\1", text)
    text = re.sub(r"\*\*([^*]+)\*\*", r"\1", text)
    text = re.sub(r"\s*\[(#[\w-]*|\d+|\*)\]_", "", text)  # footnote references
    return text


def rst_to_text(text: str) -> str:
    """Readable plain text of a reST document (Sphinx flavoured, as in Python's ``_sources``)."""
    out: list[str] = []
    lines = normalize_text(text).split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        directive = re.match(r"^\.\.\s+([\w:-]+)::\s*(.*)$", stripped)
        # Explicit markup: a directive, or a comment / target / footnote (dropped with its body).
        if stripped == ".." or stripped.startswith(".. "):
            name, args = (directive.group(1), directive.group(2)) if directive else ("", "")
            i += 1
            # The directive's options (":synopsis: ...") and, for dropped ones, its body.
            drop_body = not directive or name.split(":")[-1] in _DROP_DIRECTIVES
            while i < len(lines):
                nxt = lines[i]
                nxt_indent = len(nxt) - len(nxt.lstrip())
                if nxt.strip() and nxt_indent <= indent:
                    break
                if drop_body or re.match(r"^\s*:[\w-]+:(\s|$)", nxt):
                    i += 1
                    continue
                break
            if drop_body:
                continue
            short = name.split(":")[-1]
            if short in _ADMONITIONS:
                label = {"versionadded": "New in version", "versionchanged": "Changed in version",
                         "deprecated": "Deprecated since version", "seealso": "See also"}.get(
                             short, short.capitalize())
                out.append(" " * indent + (f"{label} {args}." if args else f"{label}:"))
            elif args:
                out.append(" " * indent + args)
            continue
        if _ADORNMENT.match(line):
            i += 1  # section over/underline or a transition
            continue
        if stripped == "::":
            i += 1
            continue
        if stripped.endswith("::"):
            line = line[:-1]  # "For example::" introduces a literal block -> "For example:"
        out.append(line)
        i += 1
    # Inline markup once over the whole text: a role may span two lines, and it is 10x faster.
    return normalize_text(rst_inline("\n".join(out)))


def rst_sections(text: str) -> list[tuple[str, str]]:
    """Split a reST document at its section titles: ``[(title, body), ...]`` (raw reST bodies)."""
    lines = text.replace("\r\n", "\n").split("\n")
    sections: list[tuple[str, list[str]]] = [("", [])]
    i = 0
    while i < len(lines):
        line = lines[i]
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if (line.strip() and not _ADORNMENT.match(line) and _ADORNMENT.match(nxt)
                and len(nxt.strip()) >= len(line.strip())):
            if sections[-1][1] and _ADORNMENT.match(sections[-1][1][-1]):
                sections[-1][1].pop()  # an overline belongs to this title
            sections.append((rst_inline(line.strip()), []))
            i += 2
            continue
        sections[-1][1].append(line)
        i += 1
    return [(title, "\n".join(body)) for title, body in sections if title or "".join(body).strip()]


# ---------------------------------------------------------------------------- AsciiDoc (git docs)


def asciidoc_to_text(text: str) -> str:
    """Readable plain text of an AsciiDoc page: drops delimiters, attributes and macros' syntax."""
    out = []
    for line in normalize_text(text).split("\n"):
        stripped = line.strip()
        if re.match(r"^([=\-~^+.*_/])\1+$", stripped) or stripped == "+":
            continue  # title underlines, block delimiters, list continuations
        if re.match(r"^\[\[?[^\]]*\]\]?$", stripped) or re.match(r"^:[\w-]+!?:", stripped):
            continue  # [verse], [[anchor]], :attribute: value
        if re.match(r"^(include|ifdef|ifndef|endif|ifeval)::", stripped):
            continue
        line = re.sub(r"\blink(git|man)?:([^\[\s]+)\[(\d*)\]",
                      lambda m: f"{m.group(2)}({m.group(3)})" if m.group(3) else m.group(2), line)
        line = re.sub(r"\b(https?://\S+?)\[([^\]]*)\]", lambda m: m.group(2) or m.group(1), line)
        line = line.replace("{litdd}", "--").replace("{caret}", "^").replace("{tilde}", "~")
        line = re.sub(r"^(=+)\s+(.*?)(\s+=+)?$", r"\2", line)  # "== Title ==" one-line titles
        out.append(line)
    return normalize_text("\n".join(out))
