"""Sentences of word-per-line files: `conll` (a word and its tag per line, blank lines between sentences: the
XTREME layout of UD POS and PAN-X with a tab, MasakhaNER with a space) and `conllu` (CoNLL-U: FORM and UPOS of
each word line; comment lines, multiword-token ranges such as `3-4` and empty nodes such as `3.1` skipped).
Blank lines at the start or end of a file and runs of them between sentences are read as one separator (XTREME's
files have them); a sentence of comments alone is an error. Each sentence is one record: `tokens`, `tags` and
`lines` (each word's 1-based line number, for errors)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator

from xstilts.errors import XstiltsError
from xstilts.tasks.spec import LocalSource

Record = tuple[int, tuple[dict, None]]  # (the sentence's first line, its record), as `readers._rows` yields


def token_records(path: Path, source: LocalSource, lines: Iterable[str]) -> Iterator[Record]:
    """One record per sentence of a conll or conllu file's lines."""
    word = _conllu_word if source.format == "conllu" else _conll_word(" " if source.separator == "space" else "\t")
    sentence: dict[str, list] = {"tokens": [], "tags": [], "lines": []}
    start = None  # the first line of the sentence being read (comments included)
    for number, raw in enumerate(lines, start=1):
        line = raw.rstrip("\r\n")
        if not line.strip():  # ends a sentence; blank lines at the start, at the end or repeated separate nothing
            if start is not None:
                yield _finished(path, start, sentence)
                sentence, start = {"tokens": [], "tags": [], "lines": []}, None
            continue
        start = number if start is None else start
        found = word(path, number, line)
        if found is not None:
            sentence["tokens"].append(found[0])
            sentence["tags"].append(found[1])
            sentence["lines"].append(number)
    if start is not None:
        yield _finished(path, start, sentence)


def _finished(path: Path, start: int, sentence: dict[str, list]) -> Record:
    if not sentence["tokens"]:
        raise XstiltsError(f"{path}:{start}: an empty sentence (no word line)")
    return start, (sentence, None)


def _conll_word(separator: str):
    """A conll line's (word, tag), split at its last separator: a word may hold the separator or be empty."""
    name = "a tab" if separator == "\t" else "a space"

    def word(path: Path, number: int, line: str) -> tuple[str, str]:
        token, found, tag = line.rpartition(separator)
        if not found or not tag.strip():
            raise XstiltsError(f"{path}:{number}: no tag (expected a word, {name} and its tag): {line[:60]!r}")
        return token, tag

    return word


def _conllu_word(path: Path, number: int, line: str) -> tuple[str, str] | None:
    """A CoNLL-U word line's (FORM, UPOS); None for a comment, a multiword-token range or an empty node."""
    if line.startswith("#"):
        return None
    fields = line.split("\t")
    if len(fields) != 10:
        raise XstiltsError(f"{path}:{number}: expected 10 tab-separated CoNLL-U fields, found {len(fields)}")
    if "-" in fields[0] or "." in fields[0]:
        return None
    if fields[3] in ("", "_"):
        raise XstiltsError(f"{path}:{number}: no tag (UPOS is {fields[3]!r}) for word {fields[1]!r}")
    return fields[1], fields[3]
