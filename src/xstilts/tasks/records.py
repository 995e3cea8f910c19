"""The rows of a split as read from any source (local files or the Hub), before a task type turns them into
examples."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Record:
    """One row of a split as read: its fields by column name, and where it is (file:line, or a Hub row)."""

    fields: dict[str, Any]
    where: str


@dataclass
class Records:
    """The rows of one task/split/language as read, before a task type turns them into examples."""

    task: str
    split: str
    language: str
    records: list[Record]
    label_map: dict[str, str]
    source: str
    sha256: str | None = None
