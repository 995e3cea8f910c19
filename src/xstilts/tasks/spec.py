"""Task specifications: what a data set is, where its files are and how to read its fields."""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from xstilts.names import PathName, TaskName

SplitName = Literal["train", "dev", "test"]
HUB_ID = re.compile(r"(?!.*\.\.)[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?", re.ASCII)  # owner/name or name
LABELLED_TYPES = ("classification", "token_classification")  # types whose head predicts one of `labels`
TOKEN_COLUMNS = {"tokens": "tokens", "tags": "tags", "lines": "lines"}  # the fields of a conll/conllu record


class StrictModel(BaseModel):
    """Base for every config model: unknown keys are errors, not silently ignored; numbers are finite."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class LabelsFrom(StrictModel):
    """Labels read from another file (a translated test set that ships without labels, with its labelled
    original): `column` of `file` (a name or position; `{language}` allowed in `file`), in the task's format
    unless `format` says otherwise. Row by row (both files must have the same number of rows), or by key:
    the row of `file` whose `key` column equals the data row's `data_key` column."""

    file: str
    column: str | int
    header: bool = False
    format: Literal["tsv", "csv", "json", "jsonl"] | None = None
    key: str | int | None = None
    data_key: str | int | None = None

    @model_validator(mode="after")
    def _both_keys(self) -> LabelsFrom:
        if (self.key is None) != (self.data_key is None):
            raise ValueError("labels_from: give both `key` (in the labels file) and `data_key` (in the data file), "
                             "or neither (rows align one to one)")
        return self


class LocalSource(StrictModel):
    """Files on disk, relative to the data directory; `{language}` is filled per language in `files` and in
    column names. Columns are header names or 0-based positions (positions work with or without a header)."""

    format: Literal["tsv", "csv", "json", "jsonl", "text", "squad", "conll", "conllu"] = Field(
        description="squad: SQuAD v1.1 JSON, one record per question: id, title, context, question, answers.text, "
        "answers.answer_start; conll: a word and its tag per line, blank lines between sentences; conllu: CoNLL-U "
        "(FORM and UPOS); both: one record per sentence with `tokens`, `tags` and `lines`")
    files: dict[SplitName, str]
    header: bool = True
    quoted: bool = Field(default=False, description="tsv: fields are quoted as Python's csv module writes them "
                                                    "(PAWS-X); by default a tsv has no quoting (XNLI)")
    columns: dict[str, str | int | list[str | int]] = Field(default_factory=dict, description="conll and conllu "
                                                             "records name their own: tokens, tags, lines")
    separator: Literal["tab", "space"] = Field(default="tab", description="conll: what separates a word from its "
                                               "tag (a line splits at its last separator)")
    rows: dict[SplitName, str] = Field(default_factory=dict, description="a slice 'START:END' of a file's records "
                                       "per split: two splits from one file (a dev slice held out of train)")
    lines_per_record: int = Field(default=1, ge=1, description="text: consecutive lines that make one record")
    aligned_files: dict[SplitName, str] = Field(default_factory=dict, description="a second file per split whose "
                                                "record i continues record i of `files` (its fields numbered after "
                                                "the first file's): parallel sentences in two files")
    label_map: dict[str, str] = Field(default_factory=dict)
    absolute_paths: bool = Field(default=False, description="allow absolute file names (files outside the data folder)")
    skip_rows: int = Field(default=0, ge=0, description="tsv/csv: rows to skip before the header (or the data)")
    relative_to: Literal["data", "task"] = Field(
        default="data", description="relative file names are inside the data folder, or next to the task's YAML")
    labels_from: LabelsFrom | None = None

    @model_validator(mode="before")
    @classmethod
    def _token_columns(cls, data: Any) -> Any:
        """conll and conllu records name their own fields: `tokens`, `tags` and `lines` map to themselves."""
        if isinstance(data, dict) and data.get("format") in ("conll", "conllu"):
            return {**data, "columns": {**TOKEN_COLUMNS, **(data.get("columns") or {})}}
        return data

    @model_validator(mode="after")
    def _placeholders(self) -> LocalSource:
        if self.separator != "tab" and self.format != "conll":
            raise ValueError("separator is an option of format: conll")
        if self.aligned_files and self.format != "text":
            raise ValueError("aligned_files needs format: text (line i of one file continues line i of the other)")
        for split, value in self.rows.items():
            start, colon, end = value.partition(":")
            if not colon or not all(part.strip().isdigit() for part in (start, end) if part.strip()):
                raise ValueError(f"rows.{split}: {value!r} is not a slice START:END of record numbers (e.g. '0:9000')")
        _check_placeholders({**{f"files.{split}": name for split, name in self.files.items()},
                             **{f"aligned_files.{split}": name for split, name in self.aligned_files.items()},
                             **{f"columns.{key}": name for key, name in self.columns.items() if isinstance(name, str)},
                             **({"labels_from.file": self.labels_from.file} if self.labels_from else {})})
        return self


def _check_placeholders(templates: dict[str, str]) -> None:
    """Each template (key -> text) may hold `{language}` and no other placeholder (`{lang}`, `{0}`, `{}`), so
    that a misspelt one fails when the task is loaded, not when the file is first opened."""
    for where, template in templates.items():
        try:
            names = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
        except ValueError as error:  # a lone '{' or '}'
            raise ValueError(f"{where}: {error} in {template!r}; write '{{{{' or '}}}}' for a brace") from None
        if names - {"language"}:
            unknown = ", ".join("{" + name + "}" for name in sorted(names - {"language"}))
            raise ValueError(f"{where}: unknown placeholder {unknown} in {template!r}; the only one is {{language}}")


class HubSource(StrictModel):
    """A Hugging Face Hub data set; `{language}` in `name` is filled per language; a column `a.b` is field b of
    the nested record a; a split may combine several (`train_r1+train_r2`)."""

    path: str = Field(description="a Hub identifier (`owner/name` or `name`); or a folder `datasets` can read: "
                      "`./FOLDER` inside the data folder, or an absolute one with `absolute_paths: true`")
    name: str | None = None
    splits: dict[SplitName, str]
    columns: dict[str, str | list[str]]
    label_map: dict[str, str] = Field(default_factory=dict)
    absolute_paths: bool = Field(default=False, description="allow an absolute folder as `path` (outside the data "
                                                            "folder)")
    revision: str | None = Field(default=None, description="the Hub data set's commit, branch or tag to read "
                                                           "(default: the latest, resolved when online)")

    @model_validator(mode="after")
    def _path_and_placeholders(self) -> HubSource:
        folder = self.path.startswith("./")
        absolute = self.path.startswith(("/", "~"))
        if not (HUB_ID.fullmatch(self.path) or folder or absolute) or ".." in Path(self.path).parts \
                or not self.path.isprintable():
            raise ValueError(f"path {self.path!r} is not a Hub identifier (owner/name or name), a folder './FOLDER' "
                             "inside the data folder or an absolute folder")
        if absolute and not self.absolute_paths:
            raise ValueError(f"path {self.path!r} is an absolute folder; set `absolute_paths: true` under `hub:` to "
                             "read a folder outside the data folder")
        _check_placeholders({"name": self.name} if self.name else {})
        return self


class TaskSpec(StrictModel):
    """A task: its type, label set, languages and sources (local files and/or the Hub)."""

    name: TaskName
    type: Literal["classification", "multiple_choice", "span_qa", "retrieval", "masked_lm",
                  "token_classification"] = "classification"
    description: str = ""
    labels: list[str] = Field(default_factory=list, description="classification: the label set; multiple "
                              "choice: optional names of the candidates (e.g. A-D) when the file gives names")
    choices: int | None = Field(default=None, ge=2, description="multiple choice: candidates per example")
    max_length: int | None = Field(default=None, ge=16, description="pieces per sequence for this task, instead of "
                                   "the run's `max_length` (span QA: a question and a window of its context)")
    doc_stride: int = Field(default=128, ge=1, description="span QA: pieces shared by consecutive context windows")
    max_answer_length: int = Field(default=30, ge=1, description="span QA: the longest predicted answer, in pieces")
    answer_normalization: Literal["squad", "mlqa"] = Field(
        default="squad", description="span QA: how answers are compared: SQuAD v1.1's (English articles, ASCII "
        "punctuation, whitespace tokens) or MLQA's (per-language articles, Unicode punctuation, characters for zh)")
    metric: Literal["accuracy", "f1"] | None = Field(
        default=None, description="token classification: `accuracy` per word (POS, the default) or `f1`, "
        "entity-level span F1 over IOB2 tags as seqeval computes it (NER)")
    languages: list[PathName] = Field(default_factory=lambda: ["en"])
    skip_labels: list[str] = Field(default_factory=list)
    override: bool = Field(default=False, description="replace a task of the same name from an earlier folder")
    parallel: bool = Field(default=False, description="the languages are translations of the same items, row by "
                                                      "row (XNLI): the report resamples items jointly")
    local: LocalSource | None = None
    hub: HubSource | None = None
    extend: str | None = Field(default=None, description="another task whose languages this one adds to; its "
                                                         "sources serve its own languages, this task's the new ones")
    _base: TaskSpec | None = PrivateAttr(default=None)
    _folder: Path | None = PrivateAttr(default=None)  # where the task's YAML file is
    _own: frozenset[str] = PrivateAttr(default=frozenset())

    def extending(self, base: TaskSpec) -> TaskSpec:
        """This task as an extension of `base`: base's languages then its own; labels must agree."""
        if base.labels != self.labels:
            raise ValueError(f"extends {base.name!r}, whose labels are {base.labels}, with labels {self.labels}")
        own = [language for language in self.languages if language not in base.languages]
        spec = self.model_copy(update={"languages": [*base.languages, *own]})
        spec._base, spec._own = base, frozenset(own)
        return spec

    def for_language(self, language: str) -> TaskSpec:
        """The spec whose sources read `language`: the base task's for its languages, else this one."""
        if self._base is not None and language not in self._own:
            return self._base.for_language(language)
        return self

    @model_validator(mode="after")
    def _has_source(self) -> TaskSpec:
        if self.local is None and self.hub is None:
            raise ValueError("a task needs a `local` or a `hub` source")
        if self.type in LABELLED_TYPES and not self.labels:
            raise ValueError(f"a {self.type} task needs its `labels`")
        if self.metric is not None and self.type != "token_classification":
            raise ValueError(f"`metric` is a token_classification option; a {self.type} task has its type's metric")
        if self.metric == "f1":
            _check_iob2(self.labels)
        if self.type == "multiple_choice" and self.choices is None:
            raise ValueError("a multiple_choice task needs `choices`: the number of candidates per example")
        required = {"classification": "`text_a` and `label` (or give `labels_from`)",
                    "multiple_choice": "`context`, `choices` and `label`",
                    "span_qa": "`context`, `question`, `answer_text` and `answer_start`",
                    "masked_lm": "`text_a` (a sentence or paragraph)",
                    "retrieval": "`text_a` (a sentence) and `text_b` (its English translation)",
                    "token_classification": "`tokens` and `tags` (lists, one per word)"}[self.type]
        for source in (self.local, self.hub):
            if source is None:
                continue
            has_labels = "label" in source.columns or getattr(source, "labels_from", None) is not None \
                or self.type in ("retrieval", "span_qa", "masked_lm", "token_classification")
            text = {"classification": ["text_a"], "multiple_choice": ["context", "choices"],
                    "span_qa": ["context", "question", "answer_text", "answer_start"], "masked_lm": ["text_a"],
                    "retrieval": ["text_a", "text_b"], "token_classification": ["tokens", "tags"]}[self.type]
            if not all(name in source.columns for name in text) or not has_labels:
                raise ValueError(f"columns must map at least {required}")
            if "label" in source.columns and getattr(source, "labels_from", None) is not None:
                raise ValueError("labels come from `columns.label` or from `labels_from`, not both")
        return self

    @property
    def splits(self) -> list[str]:
        """Splits available from the local source (else the Hub source); with a base task, those of both."""
        source = self.local or self.hub
        own = list(source.files if self.local else source.splits)
        return list(dict.fromkeys([*self._base.splits, *own])) if self._base is not None else own


def _check_iob2(labels: list[str]) -> None:
    """Span F1 needs IOB2 tags: `O`, and `B-X` with `I-X` for every entity type X."""
    types = {label[2:] for label in labels if label[:2] in ("B-", "I-")}
    wanted = {"O"} | {f"{prefix}{kind}" for kind in types for prefix in ("B-", "I-")}
    if set(labels) != wanted:
        odd = sorted(set(labels) ^ wanted)
        raise ValueError(f"metric f1 needs IOB2 labels (O, and B-X with I-X for each type X); "
                         f"{', '.join(odd)} breaks this")


@dataclass(frozen=True)
class Example:
    """One labelled example: a text or a text pair and the index of its label; for multiple choice, the
    context and its candidates, the label the index of the right one; for span QA, the question (text_a),
    the context (text_b), its gold answers (text, first character in the context) and its id (`key`); for token
    classification, a sentence's words and the index of each word's tag."""

    text_a: str
    text_b: str | None
    label: int
    choices: tuple[str, ...] = ()
    answers: tuple[tuple[str, int], ...] = ()
    key: str = ""
    words: tuple[str, ...] = ()
    tags: tuple[int, ...] = ()
