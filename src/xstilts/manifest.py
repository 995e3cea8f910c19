"""Provenance of a run: code version, library versions, data checksums."""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

from xstilts.errors import XstiltsError

_JSON_KINDS = {dict: "an object", list: "an array", str: "a string", int: "a number", float: "a number",
               bool: "true or false", type(None): "null"}
LIBRARIES = ("xstilts", "torch", "transformers", "tokenizers", "safetensors", "datasets", "numpy", "pydantic")


def code_version() -> dict:
    """The git commit (and whether the tree had uncommitted changes) of the xstilts source, if in a checkout."""
    source = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=source, capture_output=True, text=True, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=source,
                                    capture_output=True, text=True, check=True).stdout.strip())
        return {"git_commit": commit, "dirty": dirty}
    except (OSError, subprocess.CalledProcessError):
        return {"git_commit": None, "dirty": None}


def library_versions() -> dict[str, str | None]:
    """Installed versions of the libraries a result depends on."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def cpu_model() -> str:
    """The CPU's model name as /proc/cpuinfo gives it (the processor string elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine(device_kind: str) -> dict:
    """What computed a node: device kind ('cpu', or the GPU's name), CPU model and cores, platform, library
    versions and code version. A seed's nodes must share the device kind and precision (`xstilts merge`)."""
    return {"device": device_kind, "cpu": cpu_model(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
            "libraries": library_versions(), "code": code_version()}


def environment() -> dict:
    """Code version, libraries, host facts and the command line."""
    return {"code": code_version(), "libraries": library_versions(), "platform": platform.platform(),
            "cpu_count": os.cpu_count(), "argv": sys.argv}


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@functools.lru_cache(maxsize=4096)
def _remembered_sha256(path: Path, modified_ns: int, size: int) -> str:
    return file_sha256(path)


def remembered_file_sha256(path: Path) -> str:
    """`file_sha256`, computed once per process for a file's path, size and modification time."""
    stat = path.stat()
    return _remembered_sha256(path.resolve(), stat.st_mtime_ns, stat.st_size)


def folder_sha256(folder: Path, recursive: bool = False) -> str:
    """SHA-256 over (name relative to `folder`, SHA-256) of its files, hidden ones (and hidden folders) aside:
    its top level, or every level when `recursive`. The same files at another path give the same digest."""
    found = (path.relative_to(folder) for path in (folder.rglob("*") if recursive else folder.iterdir()))
    files = sorted((name for name in found if (folder / name).is_file()
                    and not any(part.startswith(".") for part in name.parts)), key=Path.as_posix)
    digest = hashlib.sha256()
    for name in files:
        digest.update(f"{name.as_posix()}\0{remembered_file_sha256(folder / name)}\n".encode())
    return digest.hexdigest()


def write_text_atomically(path: Path, text: str) -> None:
    """Write a file so that readers see the old or the new content, never part of it (a temp file of this
    process, then rename): safe with several processes writing the same path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_json(path: Path, data: object) -> None:
    """Write JSON atomically."""
    write_text_atomically(path, json.dumps(data, indent=1, ensure_ascii=False, default=str))


def read_json(path: Path, fix: str, expected: type = dict) -> Any:
    """A JSON file xstilts wrote, checked to hold an `expected` (an object by default); a missing, damaged or
    wrong-shaped file is one line naming it, what is wrong and `fix` (what to do)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        problem = "missing"
    except (OSError, UnicodeDecodeError) as error:
        problem = f"unreadable ({getattr(error, 'strerror', None) or getattr(error, 'reason', error)})"
    except ValueError as error:
        problem = f"not JSON ({str(error).splitlines()[0]})"
    else:
        if isinstance(data, expected):
            return data
        problem = f"holds {_JSON_KINDS.get(type(data), 'JSON')}, not {_JSON_KINDS.get(expected, 'JSON')}"
    raise XstiltsError(f"{path}: {problem}; {fix}")
