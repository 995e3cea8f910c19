"""Read one split of a task, in one language, into records: each row's fields, checked, with where it is
(local files or the Hugging Face Hub). The task's type turns records into examples (`task_types.read_split`)."""

from __future__ import annotations

import bz2
import csv
import dataclasses
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from xstilts.errors import XstiltsError
from xstilts.manifest import file_sha256, remembered_file_sha256
from xstilts.tasks.hub import hub_location, hub_revision, read_hub
from xstilts.tasks.records import Record, Records
from xstilts.tasks.spec import Example, LocalSource, TaskSpec
from xstilts.tasks.token_readers import token_records

csv.field_size_limit(1 << 30)


@dataclass
class SplitData:
    """The examples of one task/split/language, with provenance for the manifest."""

    task: str
    split: str
    language: str
    examples: list[Example]
    source: str
    sha256: str | None = None
    skipped_unlabelled: int = 0
    labels: list[str] = field(default_factory=list)


def local_path(spec: TaskSpec, split: str, language: str, data_dir: Path, template: str | None = None) -> Path:
    """The local file of a split and language (`~` and `$VARS` expanded), or of `template` (another file of the
    task): a relative name inside the data folder (a `..` that leaves it is refused), or, where the task allows
    `absolute_paths`, an absolute path."""
    template = spec.local.files[split] if template is None else template
    name = Path(os.path.expandvars(template.format(language=language))).expanduser()
    if name.is_absolute():
        if not spec.local.absolute_paths:
            raise XstiltsError(f"task {spec.name!r}: file {str(name)!r} is an absolute path; set `absolute_paths: "
                               "true` under its `local:` to read files outside the data folder")
        return name
    root = spec._folder if spec.local.relative_to == "task" and spec._folder is not None else data_dir
    path = root / name
    if not path.resolve().is_relative_to(root.resolve()):
        raise XstiltsError(f"task {spec.name!r}: file {str(name)!r} is outside the folder {root}; give an "
                           "absolute path (with `absolute_paths: true`) to read a file elsewhere")
    return path


def input_fingerprint(spec: TaskSpec, split: str, language: str, data_dir: Path | None, source: str = "auto") -> str:
    """What reading a split depends on besides the spec: the local file's SHA-256 ('missing' if absent), or
    the Hub address with the revision it resolves to (`hub.hub_revision`: pinned, the latest when online, or
    a folder's files' SHA-256)."""
    spec = spec.for_language(language)
    if reads_local(spec, data_dir, source) and split in spec.local.files and data_dir is not None:
        paths = [local_path(spec, split, language, data_dir)]
        if split in spec.local.aligned_files:
            paths.append(local_path(spec, split, language, data_dir, spec.local.aligned_files[split]))
        if spec.local.labels_from is not None:
            paths.append(local_path(spec, split, language, data_dir, spec.local.labels_from.file))
        if not all(path.is_file() for path in paths):
            return "missing"
        return "+".join(remembered_file_sha256(path) for path in paths)
    if spec.hub is not None and split in spec.hub.splits:
        name = spec.hub.name.format(language=language) if spec.hub.name else ""
        revision = hub_revision(spec, data_dir)
        return f"hub:{spec.hub.path}/{name}/{spec.hub.splits[split]}" + (f"@{revision}" if revision else "")
    return "missing"


def _rows(path: Path, source: LocalSource, odd: dict[str, list[int]]) -> Iterator[tuple[int, Any]]:
    """Yield (1-based line number in the file, raw row) for each record of a local file. A UTF-8 byte-order
    mark is read as such; the line numbers of rows with more fields than the header (`odd['extra']`) and of
    records that run over several lines (`odd['multiline']`, a quoted field with line breaks, or an unclosed
    quote) are noted for a warning."""
    if source.format == "text":
        with _open_text(path) as handle:
            record: list[str] = []
            for number, line in enumerate(handle, start=1):
                record.append(line.rstrip("\r\n"))
                if len(record) == source.lines_per_record:
                    yield number - len(record) + 1, (record, None)
                    record = []
            if record:
                raise XstiltsError(f"{path}:{number - len(record) + 1}: an incomplete record: {len(record)} of "
                                   f"{source.lines_per_record} lines")
    elif source.format in ("tsv", "csv"):
        with _open_text(path, newline="") as handle:
            if source.format == "tsv":
                reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_MINIMAL if source.quoted else csv.QUOTE_NONE)
            else:
                reader = csv.reader(handle)
            header: list[str] | None = None
            line, skip = 1, source.skip_rows
            for row in reader:
                number, line = line, reader.line_num + 1
                if not row:
                    continue
                if skip:
                    skip -= 1
                    continue
                if reader.line_num > number:
                    odd["multiline"].append(number)
                if source.header and header is None:
                    header = row
                    continue
                if header and len(row) > len(header):
                    odd["extra"].append(number)
                yield number, (row, header)
    elif source.format in ("conll", "conllu"):
        with _open_text(path) as handle:
            yield from token_records(path, source, handle)
    elif source.format == "jsonl":
        with _open_text(path) as handle:
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    try:
                        yield number, (json.loads(line), None)
                    except json.JSONDecodeError as error:
                        raise XstiltsError(f"{path}:{number}: invalid JSON ({error.msg})") from None
    else:
        try:
            with _open_text(path) as handle:
                data = json.loads(handle.read())
        except json.JSONDecodeError as error:
            raise XstiltsError(f"{path}:{error.lineno}: invalid JSON ({error.msg})") from None
        if source.format == "squad":
            yield from _squad_records(path, data)
            return
        if not isinstance(data, (dict, list)):
            raise XstiltsError(f"{path}: expected a JSON object or array of records, found {type(data).__name__}")
        records = data.values() if isinstance(data, dict) else data
        for number, record in enumerate(records, start=1):
            yield number, (record, None)


def _squad_records(path: Path, data: Any) -> Iterator[tuple[int, Any]]:
    """(question number, record) for each question of a SQuAD v1.1 JSON file, as the Hub's `squad` has them:
    id, title, context, question and answers {text: [...], answer_start: [...]}."""
    number, reached = 0, 1  # the question being read, or the next one while between questions
    try:
        for article in data["data"]:
            for paragraph in article["paragraphs"]:
                for qa in paragraph["qas"]:
                    number = reached
                    answers = qa.get("answers", [])
                    record = {"id": str(qa.get("id", number)), "title": article.get("title", ""),
                              "context": paragraph["context"], "question": qa["question"],
                              "answers": {"text": [a["text"] for a in answers],
                                          "answer_start": [a["answer_start"] for a in answers]}}
                    reached = number + 1
                    yield number, (record, None)
    except (KeyError, TypeError) as error:
        missing = f"no {error}" if isinstance(error, KeyError) else str(error)
        raise XstiltsError(f"{path}: question {reached}: not SQuAD v1.1 JSON (data > paragraphs > qas with "
                           f"context, question, answers): {missing}") from None


def _open_text(path: Path, newline: str | None = None):
    """A file as UTF-8 text (a byte-order mark read as such), decompressed when its name ends in .bz2."""
    if path.suffix == ".bz2":
        return bz2.open(path, "rt", encoding="utf-8-sig", newline=newline)
    return open(path, encoding="utf-8-sig", newline=newline)


def _read_rows(path: Path, source: LocalSource, odd: dict[str, list[int]]) -> list[tuple[int, Any]]:
    """All rows of a local file (see `_rows`); a file that is not UTF-8 is one line naming the first bad line."""
    try:
        return list(_rows(path, source, odd))
    except (OSError, EOFError) as error:
        if path.suffix != ".bz2":
            raise
        raise XstiltsError(f"{path}: not a readable bzip2 file ({error})") from None
    except UnicodeDecodeError:
        if path.suffix == ".bz2":
            raise XstiltsError(f"{path}: not UTF-8 text once decompressed") from None
        line, where = _first_bad_line(path)
        raise XstiltsError(f"{path}:{line}: not UTF-8 text ({where})") from None


def _first_bad_line(path: Path) -> tuple[int, str]:
    """The first line of a file that is not UTF-8, and why."""
    for number, line in enumerate(path.read_bytes().split(b"\n"), start=1):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as error:
            return number, f"byte {line[error.start:error.start + 1]!r} at column {error.start + 1}"
    return 0, "unknown position"


def _field(path: Path, number: int, row: Any, header: list[str] | None, column: str | int) -> str:
    """One field of a raw row: by position (an int, with or without a header) or by name (a header's, or a
    JSON record's key); a missing column is an error naming file and row."""
    if isinstance(row, list):
        if header is not None and len(row) < len(header):
            raise XstiltsError(f"{path}:{number}: expected {len(header)} columns, found {len(row)}")
        if isinstance(column, str):
            if header is None:
                raise XstiltsError(f"{path}: column {column!r} must be an index for a file without header")
            if column not in header:
                raise XstiltsError(f"{path}:{number}: missing field {column!r} (the header has {', '.join(header)})")
            column = header.index(column)
        if column >= len(row):
            raise XstiltsError(f"{path}:{number}: expected at least {column + 1} columns, found {len(row)}")
        return row[column]
    nested = isinstance(column, str) and isinstance(row, dict) and column not in row
    value = row
    for part in column.split(".") if nested else [column]:  # `a.b`: field b of the nested record a
        if not isinstance(value, dict) or part not in value:
            raise XstiltsError(f"{path}:{number}: missing field {column!r}")
        value = value[part]
    if value is None:
        raise XstiltsError(f"{path}:{number}: field {column!r} is null")
    return value


def _for_language(column: str | int | list, language: str) -> str | int | list:
    """A column name with `{language}` filled in (e.g. premise_{language}); positions stay as they are."""
    if isinstance(column, list):
        return [_for_language(c, language) for c in column]
    return column.format(language=language) if isinstance(column, str) else column


def _checked_text(path: Path, number: int, name: str, value: Any) -> Any:
    """A field's value, refused when it (or a candidate in it) holds a NUL byte (binary data, not text)."""
    if any(isinstance(v, str) and "\x00" in v for v in (value if isinstance(value, list) else [value])):
        raise XstiltsError(f"{path}:{number}: field {name!r} holds a NUL byte (binary data?)")
    return value


def read_local(spec: TaskSpec, split: str, language: str, data_dir: Path) -> Records:
    """Read a split from the task's local files under `data_dir`."""
    check_available(spec, split, language, data_dir, "local")
    source = spec.local
    path = local_path(spec, split, language, data_dir)
    if path.stat().st_size == 0:
        raise XstiltsError(f"{path}: empty file")
    columns = {name: _for_language(column, language) for name, column in source.columns.items()}
    labels = _labels_from(spec, split, language, data_dir, path) if source.labels_from else None
    records, odd = [], {"extra": [], "multiline": []}
    rows = _read_rows(path, source, odd)
    if split in source.aligned_files:
        rows = _aligned(spec, split, language, data_dir, path, rows)
    if labels is not None and labels.by_key is None and len(labels) != len(rows):
        raise XstiltsError(f"{path}: {len(rows)} rows, but its labels_from file {labels.path} has "
                           f"{len(labels)}: the rows must align one to one")
    chosen = _slice(source.rows[split]) if split in source.rows else slice(None)
    for index, (number, (row, header)) in list(enumerate(rows))[chosen]:
        fields = {name: _checked_text(path, number, name, [_field(path, number, row, header, c) for c in column]
                                      if isinstance(column, list) else _field(path, number, row, header, column))
                  for name, column in columns.items()}
        if labels is not None and labels.by_key is not None:
            key = str(_field(path, number, row, header, source.labels_from.data_key))
            if key not in labels.by_key:
                raise XstiltsError(f"{path}:{number}: key {key!r} is not in the labels_from file {labels.path}")
            fields["label"] = labels.by_key[key]
        elif labels is not None:
            fields["label"] = labels.values[index]
        records.append(Record(fields, f"{path}:{number}"))
    if odd["extra"]:
        print(f"xstilts: warning: {path}:{odd['extra'][0]}: more fields than the header names; the extra fields "
              f"of {len(odd['extra'])} row(s) were ignored", file=sys.stderr)
    if odd["multiline"]:
        print(f"xstilts: warning: {path}:{odd['multiline'][0]}: {len(odd['multiline'])} record(s) run over several "
              "lines (quoted line breaks, or an unclosed quote swallowing rows); check the file", file=sys.stderr)
    return Records(spec.name, split, language, records, source.label_map, str(path), file_sha256(path))


def _aligned(spec: TaskSpec, split: str, language: str, data_dir: Path, path: Path,
             rows: list[tuple[int, Any]]) -> list[tuple[int, Any]]:
    """Rows of `path` continued by the rows of the split's aligned file (same format, same number of rows)."""
    other = local_path(spec, split, language, data_dir, spec.local.aligned_files[split])
    if not other.is_file():
        raise XstiltsError(f"{other}: aligned file not found (it continues {path} row by row)")
    continued = _read_rows(other, spec.local, {"extra": [], "multiline": []})
    if len(continued) != len(rows):
        raise XstiltsError(f"{path}: {len(rows)} rows, but its aligned file {other} has {len(continued)}: the rows "
                           "must align one to one")
    return [(number, (list(row) + list(more), None)) for (number, (row, _)), (_, (more, _)) in zip(rows, continued)]


def _slice(text: str) -> slice:
    """'START:END' (either may be empty) as a slice of records."""
    start, _, end = text.partition(":")
    return slice(int(start) if start.strip() else None, int(end) if end.strip() else None)


@dataclass(frozen=True)
class _Labels:
    """A labels_from file's labels, in row order, and by key when the task joins by key."""

    path: Path
    values: list[str]
    by_key: dict[str, str] | None

    def __len__(self) -> int:
        return len(self.values)


def _labels_from(spec: TaskSpec, split: str, language: str, data_dir: Path, data_path: Path) -> _Labels:
    """The label column of the task's `labels_from` file, one value per row."""
    given = spec.local.labels_from
    path = local_path(spec, split, language, data_dir, given.file)
    if not path.is_file():
        raise XstiltsError(f"{path}: labels_from file not found (labels for {data_path})")
    source = LocalSource(format=given.format or spec.local.format, files={split: given.file}, header=given.header,
                         columns={"text_a": given.column, "label": given.column})
    rows = _read_rows(path, source, {"extra": [], "multiline": []})
    values = [str(_field(path, number, row, header, given.column)) for number, (row, header) in rows]
    by_key = None
    if given.key is not None:
        keys = [str(_field(path, number, row, header, given.key)) for number, (row, header) in rows]
        by_key = dict(zip(keys, values))
    return _Labels(path, values, by_key)


def reads_local(spec: TaskSpec, data_dir: Path | None, source: str) -> bool:
    """Whether a read uses the local files (else the Hub)."""
    return spec.local is not None and source != "hub" and (data_dir is not None or source == "local")


def check_available(spec: TaskSpec, split: str, language: str, data_dir: Path | None, source: str = "auto") -> None:
    """Fail early, before any training, if a split/language does not exist or its local file is missing."""
    if language not in spec.languages:
        raise XstiltsError(f"task {spec.name!r} has no language {language!r} (has {', '.join(spec.languages)})")
    spec = spec.for_language(language)
    if reads_local(spec, data_dir, source):
        if split not in spec.local.files:
            raise XstiltsError(f"task {spec.name!r} has no local split {split!r} (has {', '.join(spec.local.files)})")
        if data_dir is None:
            raise XstiltsError(f"task {spec.name!r}: source 'local' needs --data-dir or XSTILTS_DATA_DIR")
        path = local_path(spec, split, language, data_dir)
        if not path.is_file():
            raise XstiltsError(f"{path}: file not found (task {spec.name!r}, split {split!r}, language {language!r})")
    elif spec.hub is None:
        raise XstiltsError(f"task {spec.name!r} reads local files: set --data-dir or XSTILTS_DATA_DIR to the data folder")
    elif split not in spec.hub.splits:
        raise XstiltsError(f"task {spec.name!r} has no Hub split {split!r}")
    else:
        hub_location(spec, data_dir)


def read_records(spec: TaskSpec, split: str, language: str, data_dir: Path | None, source: str = "auto") -> Records:
    """Read a split's rows: from local files when the task has them and a data directory is set (or source
    'local'), else (or with source 'hub') from the Hugging Face Hub."""
    check_available(spec, split, language, data_dir, source)
    own = spec.for_language(language)
    if reads_local(own, data_dir, source):
        data = read_local(own, split, language, data_dir)
    else:
        data = read_hub(own, split, language, data_dir)
    return data if own is spec else dataclasses.replace(data, task=spec.name)
