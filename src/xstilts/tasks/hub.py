"""A task's Hugging Face Hub source: where `datasets` reads it (a Hub identifier, or a local folder the task
may name) and its rows."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

from xstilts.errors import XstiltsError
from xstilts.manifest import folder_sha256
from xstilts.tasks.records import Record, Records
from xstilts.tasks.spec import HubSource, TaskSpec


def hub_location(spec: TaskSpec, data_dir: Path | None) -> str:
    """What `datasets.load_dataset` is given for the task's `hub.path`: a Hub identifier as it is (refused when a
    folder of that name here would be read instead of the Hub), `./FOLDER` as that folder inside the data folder,
    an absolute folder (with `absolute_paths: true`) as it is. `HubSource` checked the forms when it was loaded."""
    path = spec.hub.path
    if not path.startswith(("./", "/", "~")):
        if os.path.exists(path):
            raise XstiltsError(f"task {spec.name!r}: hub.path {path!r} is also a folder or file in {Path.cwd()}, "
                               "which `datasets` would read instead of the Hub; run xstilts from another folder")
        return path
    if not path.startswith("./"):
        return str(Path(path).expanduser())
    if data_dir is None:
        raise XstiltsError(f"task {spec.name!r}: hub.path {path!r} is inside the data folder: set --data-dir or "
                           "XSTILTS_DATA_DIR")
    folder = data_dir / path
    if not folder.resolve().is_relative_to(data_dir.resolve()):
        raise XstiltsError(f"task {spec.name!r}: hub.path {path!r} leads outside the data folder {data_dir}")
    if not folder.is_dir():
        raise XstiltsError(f"{folder}: folder not found (hub.path of task {spec.name!r})")
    return str(folder)


def hub_revision(spec: TaskSpec, data_dir: Path | None) -> str | None:
    """What a task's Hub reads resolve to: `revision` as the task pins it; for a folder (`./FOLDER` in the data
    folder, or an absolute one) `sha256:` of its files, so changed files re-key what reads them and the same
    files elsewhere do not; else the Hub's latest commit when online (asked once per process), or None
    (offline or unreachable)."""
    source = spec.hub
    if source.revision is not None:
        return source.revision
    if source.path.startswith(("./", "/", "~")):
        return f"sha256:{folder_sha256(Path(hub_location(spec, data_dir)), recursive=True)}"
    if any(os.environ.get(flag, "") not in ("", "0") for flag in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")):
        return None
    return _latest_commit(source.path)


@functools.lru_cache(maxsize=256)
def _latest_commit(path: str) -> str | None:
    try:
        from huggingface_hub import HfApi

        return HfApi().dataset_info(path, timeout=10).sha
    except Exception:  # no network, no such data set, a gated one: the key holds the address alone
        return None


def read_hub(spec: TaskSpec, split: str, language: str, data_dir: Path | None) -> Records:
    """Read a split from the Hugging Face Hub with `datasets` (needs internet or a warm HF cache), or from the
    local folder `hub.path` names."""
    import datasets

    source: HubSource | None = spec.hub
    if source is None:
        raise XstiltsError(f"task {spec.name!r} has no Hub source; pass --data-dir for its local files")
    name = source.name.format(language=language) if source.name else None
    dataset = datasets.load_dataset(hub_location(spec, data_dir), name, split=source.splits[split],
                                    revision=source.revision)
    where = f"hub:{source.path}/{name or ''}/{source.splits[split]}"
    records = [Record({key: [_hub_field(row, c) for c in column] if isinstance(column, list) else _hub_field(row, column)
                       for key, column in source.columns.items()}, f"{where}:{number}")
               for number, row in enumerate(dataset, start=1)]
    return Records(spec.name, split, language, records, source.label_map, where, getattr(dataset, "_fingerprint", None))


def _hub_field(record: dict, column: str) -> Any:
    """A Hub record's field; `a.b` reads field b of the nested record a (e.g. `choices.text`)."""
    for part in column.split("."):
        record = record[part]
    return record
