"""`xstilts tasks`: every task a study can name, with its type, metric, languages, splits and sources."""

from __future__ import annotations

from pathlib import Path

from xstilts.errors import XstiltsError
from xstilts.task_types import task_kind
from xstilts.tasks.readers import check_available
from xstilts.tasks.registry import TaskRegistry


def _sources(registry: TaskRegistry, name: str, data_dir: Path | None) -> str:
    spec = registry.get(name)
    parts = []
    if spec.local is not None:
        if data_dir is None:
            parts.append("local files (no data folder set)")
        else:
            missing = 0
            for split in spec.local.files:
                for language in spec.languages:
                    try:
                        check_available(spec, split, language, data_dir, "local")
                    except XstiltsError:
                        missing += 1
            parts.append("local" + (f" ({missing} file(s) missing)" if missing else ""))
    if spec.hub is not None:
        parts.append(f"hub:{spec.hub.path}")
    return ", ".join(parts)


def describe_tasks(registry: TaskRegistry, data_dir: Path | None) -> str:
    """One Markdown table row per task, by name; unreadable task files listed after it."""
    lines = ["| task | type | metric | languages | splits | source |", "|---|---|---|---|---|---|"]
    for name in sorted(registry.tasks):
        spec = registry.get(name)
        languages = " ".join(spec.languages)
        if len(spec.languages) > 8:
            languages = f"{len(spec.languages)}: " + " ".join(spec.languages[:6]) + " ..."
        lines.append(f"| {name} | {spec.type} | {task_kind(spec).metrics[0]} | {languages} | "
                     f"{' '.join(spec.splits)} | {_sources(registry, name, data_dir)} |")
    lines += [f"unreadable task file: {error}" for error in registry.broken.values()]
    return "\n".join(lines)
