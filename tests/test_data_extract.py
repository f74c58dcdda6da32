"""Format extractors on small inline samples of each format."""

import gzip

import pytest

from megatron_rw.data import extract as ex
from megatron_rw.data import markup

# ---------------------------------------------------------------------------- dictd


def _b64(n: int) -> str:
    digits = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    out = ""
    while True:
        out = digits[n % 64] + out
        n //= 64
        if n == 0:
            return out


@pytest.mark.parametrize("digits,value", [("A", 0), ("B", 1), ("/", 63), ("BA", 64),
                                          ("Ph", 15 * 64 + 33), ("BCy", 64 * 64 + 2 * 64 + 50)])
def test_dictd_numbers_are_big_endian_base64_digits(digits, value):
    assert ex.dictd_b64_decode(digits) == value
    assert _b64(value) == digits


def test_dictd_entries_follow_offsets_skip_metadata_and_aliases():
    bodies = ["00-database-info\n   This file was converted by dictfmt.\n",
              "hack\n n.\n\n    1. Originally, a quick job that produces what is needed.\n",
              "cruft\n n.\n\n    An unpleasant substance; see {\n    kluge}.\n"]
    data = "".join(bodies).encode("utf-8")
    offsets, pos = [], 0
    for b in bodies:
        offsets.append((pos, len(b.encode("utf-8"))))
        pos += len(b.encode("utf-8"))
    index = "\n".join([f"00-database-info\t{_b64(offsets[0][0])}\t{_b64(offsets[0][1])}",
                       f"cruft\t{_b64(offsets[2][0])}\t{_b64(offsets[2][1])}",
                       f"hack\t{_b64(offsets[1][0])}\t{_b64(offsets[1][1])}",
                       f"hacking\t{_b64(offsets[1][0])}\t{_b64(offsets[1][1])}"])  # alias
    # The .dict.dz file is dictzip, i.e. gzip-compatible: the reader gunzips it whole.
    entries = ex.dictd_entries(index, gzip.decompress(gzip.compress(data)))
    assert [h for h, _ in entries] == ["cruft", "hack"]
    assert ex.dictd_entry_text(entries[0][1]) == (
        "cruft\nn.\n\nAn unpleasant substance; see kluge.")
    assert ex.dictd_entry_text(entries[1][1]).startswith("hack\nn.\n\n1. Originally, a quick job")


# ---------------------------------------------------------------------------- WordNet


def test_wordnet_gloss():
    line = ("00006024 03 n 01 heterotroph 0 001 @ 00004475 n 0000 | an organism that depends on "
            "complex organic substances for nutrition  ")
    assert ex.wordnet_gloss(line) == (
        "heterotroph (noun): an organism that depends on complex organic substances for nutrition")
    adj = "00005205 00 s 02 absolute(a) 0 living_thing 0 000 | perfect or complete; \"an absolute loss\""
    assert ex.wordnet_gloss(adj) == ("absolute, living thing (adjective): perfect or complete; "
                                     "\"an absolute loss\"")
    assert ex.wordnet_gloss("  1 This software and database is being provided") is None


# ---------------------------------------------------------------------------- reST / AsciiDoc

RST = """\
:mod:`functools` --- Higher-order functions
===========================================

.. module:: functools
   :synopsis: Higher-order functions and operations on callable objects.

.. index:: single: cache

The :mod:`functools` module is for `higher-order <https://example.org/hof>`_ functions.

.. function:: cache(user_function)

   Returns the same as ``lru_cache(maxsize=None)``; see :func:`~functools.lru_cache`.
   For example::

        @cache
        def f(n): ...

   .. versionadded:: 3.9

.. seealso::

   :ref:`The sorting HOWTO <sortinghowto>`
"""


def test_rst_to_text():
    text = markup.rst_to_text(RST)
    assert text.splitlines()[0] == "functools --- Higher-order functions"
    assert "====" not in text and "synopsis" not in text and "single: cache" not in text
    assert "The functools module is for higher-order functions." in text
    assert "cache(user_function)" in text and ".. function" not in text
    assert "Returns the same as lru_cache(maxsize=None); see functools.lru_cache." in text
    assert "For example:\n\n        @cache" in text
    assert "New in version 3.9." in text
    assert "See also:" in text and "The sorting HOWTO" in text and "sortinghowto" not in text


def test_rst_sections_split_at_titles():
    doc = ("Programming FAQ\n===============\n\nIntro.\n\nHow do I do X?\n--------------\n\n"
           "Use :func:`x`.\n\n=======\nWhy Y?\n=======\n\nBecause.\n")
    sections = markup.rst_sections(doc)
    assert [t for t, _ in sections] == ["Programming FAQ", "How do I do X?", "Why Y?"]
    assert markup.rst_to_text(sections[1][1]) == "Use x."
    assert markup.rst_to_text(sections[2][1]) == "Because."


def test_asciidoc_to_text():
    doc = ("git-add(1)\n==========\n\nNAME\n----\ngit-add - Add file contents to the index\n\n"
           "SYNOPSIS\n--------\n[verse]\n'git add' [--verbose | -v]\n\n:git-add: 1\n"
           "Please see linkgit:git-commit[1] for the {litdd}amend option.\n+\n"
           "------------\n$ git add .\n------------\ninclude::config/add.txt[]\n")
    text = markup.asciidoc_to_text(doc)
    assert text.splitlines()[:3] == ["git-add(1)", "", "NAME"]
    assert "Please see git-commit(1) for the --amend option." in text
    assert "$ git add ." in text
    for gone in ("====", "----", "[verse]", ":git-add:", "include::", "\n+\n"):
        assert gone not in text


# ---------------------------------------------------------------------------- Brown corpus


def test_brown_detokenization():
    raw = ("\n\n\tThe/at jury/nn said/vbd ``/`` it/pps did/dod n't/* find/vb ''/'' ,/, "
           "Atlanta's/np$ mayor/nn (/( Mr./np-tl Allen/np )/) agreed/vbd ./.\n"
           "It/pps urged/vbd action/nn ;/. costs/nns :/: $/$ 5/cd ./.\n\n\n"
           "Merger/nn-hl proposed/vbn-hl\n\tHowever/wrb ,/, no/at ./.\n")
    assert ex.brown_to_text(raw) == (
        'The jury said "it didn\'t find", Atlanta\'s mayor (Mr. Allen) agreed. '
        "It urged action; costs: $5.\n\nMerger proposed\n\nHowever, no.")


# ---------------------------------------------------------------------------- chatterbot YAML

YAML = """\
categories:
- coding
conversations:
- - What is AI?
  - Artificial Intelligence is the branch of engineering and science devoted to
    constructing machines that think.
- - 'Who''s there?'
  - "A \\"bot\\"."
  - Really?
- - can you write bubble sort?
  - |
    Here it is:

    ```
    def f(a):
        return sorted(a)
    ```
- - folded?
  - >
    one
    two
"""


def test_chatterbot_conversations():
    convs = ex.chatterbot_conversations(YAML)
    assert convs[0] == ["What is AI?", "Artificial Intelligence is the branch of engineering and "
                        "science devoted to constructing machines that think."]
    assert convs[1] == ["Who's there?", 'A "bot".', "Really?"]
    assert convs[2] == ["can you write bubble sort?",
                        "Here it is:\n\n```\ndef f(a):\n    return sorted(a)\n```"]
    assert convs[3] == ["folded?", "one two"]
    assert ex.dialogue_text(convs[1]) == "Q: Who's there?\nA: A \"bot\".\nQ: Really?"
    assert ex.chatterbot_conversations("categories:\n- x\n") == []


# ---------------------------------------------------------------------------- generic


def test_chunk_text_respects_size_and_keeps_every_paragraph():
    paras = [f"Paragraph {i}. " + "word " * (i * 7 % 60) for i in range(80)]
    text = "\n\n".join(p.strip() for p in paras)
    chunks = ex.chunk_text(text, 500)
    assert all(len(c) <= 500 for c in chunks) and len(chunks) > 5
    assert "\n\n".join(chunks) == ex.normalize_text(text)  # cut only between paragraphs


def test_chunk_text_splits_an_oversized_paragraph_at_lines():
    text = "\n".join(f"line {i} " + "x" * 40 for i in range(50))  # one 2.4 kB paragraph
    chunks = ex.chunk_text(text, 300)
    assert all(len(c) <= 300 for c in chunks)
    assert "\n".join(chunks) == text
    assert ex.chunk_text("a" * 1000, 300) == ["a" * 300] * 3 + ["a" * 100]
    assert ex.chunk_text("  \n\n ", 300) == []


def test_chunk_text_keeps_code_indentation():
    code = "def f(x):\n    y = x + 1\n\n    return y\n"
    assert ex.chunk_text(code, 24) == ["def f(x):\n    y = x + 1", "    return y"]


def test_normalize_and_gutenberg_boilerplate():
    assert ex.normalize_text("a \r\nb\x00\n\n\n\nc\t\n") == "a\nb\n\nc"
    book = "Header\n*** START OF THIS PROJECT GUTENBERG EBOOK EMMA ***\nText.\n*** END OF THE EBOOK\nLicence"
    assert ex.strip_gutenberg_boilerplate(book).strip() == "Text."
    assert ex.strip_gutenberg_boilerplate("No markers.") == "No markers."
