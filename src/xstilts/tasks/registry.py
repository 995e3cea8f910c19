"""Find task specs: the built-in YAML files plus any user folders, by task name."""

from __future__ import annotations

import difflib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pydantic import ValidationError

from xstilts.errors import XstiltsError
from xstilts.tasks.spec import TaskSpec

BUILTIN_DIR = Path(__file__).parent / "builtin"


def validation_message(where: Path | str, error: ValidationError) -> str:
    """One line naming the file and the offending key of a pydantic validation error; an unknown key
    (often a misspelling) is named first, with the missing key it may stand for."""
    errors = error.errors()
    unknown = [e for e in errors if e["type"] == "extra_forbidden"]
    first = unknown[0] if unknown else errors[0]
    key = ".".join(str(part) for part in first["loc"]) or "(top level)"
    if unknown:
        missing = [str(e["loc"][-1]) for e in errors if e["type"] == "missing" and e["loc"][:-1] == first["loc"][:-1]]
        close = difflib.get_close_matches(str(first["loc"][-1]), missing, n=1)
        return f"{where}: unknown key {key!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
    return f"{where}: key {key!r}: {first['msg']}"


def load_yaml(path: Path) -> dict:
    """Parse a YAML mapping; errors name the file."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise XstiltsError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise XstiltsError(f"{path}: is a directory, expected a YAML file") from None
    except UnicodeDecodeError as error:
        raise XstiltsError(f"{path}: not UTF-8 text (byte {error.start}: {error.reason})") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise XstiltsError(f"{path}{line}: invalid YAML ({getattr(error, 'problem', error)})") from None
    if not isinstance(data, dict):
        raise XstiltsError(f"{path}: expected a YAML mapping at the top level")
    return data


def load_task_file(path: Path) -> TaskSpec:
    """Read and validate one task YAML file."""
    data = load_yaml(path)
    try:
        spec = TaskSpec(**data)
    except ValidationError as error:
        raise XstiltsError(validation_message(path, error)) from None
    spec._folder = path.parent.resolve()
    return spec


@dataclass
class TaskRegistry:
    """Task specs by name; later folders override earlier ones (user tasks override built-ins). Files that
    could not be read are kept as errors: they hide no valid task, and an unknown name lists them."""

    tasks: dict[str, TaskSpec]
    broken: dict[Path, str] = field(default_factory=dict)  # task file -> its one-line error

    def get(self, name: str) -> TaskSpec:
        """The spec of a task; an unknown name is an error suggesting the closest known one."""
        if name in self.tasks:
            return self.tasks[name]
        stem = next((error for path, error in self.broken.items() if path.stem == name), None)
        if stem is not None:
            raise XstiltsError(stem)
        close = difflib.get_close_matches(name, self.tasks, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        unread = f"; {len(self.broken)} task file(s) could not be read: {', '.join(map(str, self.broken))}" \
            if self.broken else ""
        raise XstiltsError(f"unknown task {name!r}{hint}; known tasks: {', '.join(sorted(self.tasks))}{unread}")


def load_registry(extra_dirs: list[Path] | None = None) -> TaskRegistry:
    """Built-in tasks, then `$XSTILTS_TASK_DIRS` (os.pathsep-separated), then `extra_dirs`; `.yaml` and `.yml`
    files. An unreadable user task file is reported on stderr and skipped (a broken built-in is an error)."""
    folders = [BUILTIN_DIR]
    folders += [Path(p) for p in os.environ.get("XSTILTS_TASK_DIRS", "").split(os.pathsep) if p]
    folders += [Path(os.path.expandvars(str(folder))).expanduser() for folder in extra_dirs or []]
    registry = TaskRegistry({})
    defined_in: dict[str, Path] = {}
    for folder in folders:
        if not folder.is_dir():
            raise XstiltsError(f"{folder}: task folder not found")
        for path in sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]):
            try:
                spec = load_task_file(path)
            except XstiltsError as error:
                if folder == BUILTIN_DIR:
                    raise
                registry.broken[path] = str(error)
                print(f"xstilts: warning: skipped task file {error}", file=sys.stderr)
                continue
            if spec.name in defined_in and not spec.override:
                raise XstiltsError(f"{path}: task {spec.name!r} is already defined in {defined_in[spec.name]}; set "
                                   "`override: true` to replace it, or rename it")
            registry.tasks[spec.name], defined_in[spec.name] = spec, path
    for name, spec in list(registry.tasks.items()):
        if spec.extend is not None:
            try:
                registry.tasks[name] = spec.extending(registry.get(spec.extend))
            except (XstiltsError, ValueError) as error:
                raise XstiltsError(f"{defined_in[name]}: key 'extend': {error}") from None
    return registry
