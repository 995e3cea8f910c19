"""The package's imports point down its floors: a module imports modules of its own floor or lower ones."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "xstilts"

# Lowest first. A module is placed by its dotted name (the longest listed prefix wins); the package's own
# __init__ is the bottom floor.
FLOORS = [
    # 0: foundations that know nothing of tasks
    ["xstilts", "xstilts.errors", "xstilts.names", "xstilts.features", "xstilts.pooling", "xstilts.precision",
     "xstilts.cpu", "xstilts.distributed", "xstilts.memory", "xstilts.manifest", "xstilts.attention",
     "xstilts.averaging", "xstilts.qa_metrics", "xstilts.embedded_model", "xstilts.report.statistics",
     "xstilts.report.render"],
    ["xstilts.tasks"],  # 1: task specs, the registry, readers that return records
    ["xstilts.task_types"],  # 2: what a type does with records: examples, features, heads, metrics
    ["xstilts.config", "xstilts.study_spec"],  # 3: run and study configuration
    ["xstilts.model", "xstilts.evaluation", "xstilts.training", "xstilts.vocab", "xstilts.report"],  # 4
    ["xstilts.phases"],  # 5: a phase as a skip/resume/start unit
    ["xstilts.graph", "xstilts.executors"],  # 6: the study graph and where its nodes run
    ["xstilts.study", "xstilts.pipeline", "xstilts.exchange", "xstilts.evaluate"],  # 7: orchestration
    ["xstilts.plan"],  # 8: planning from a finished pilot (its graph and its report)
    ["xstilts.cli"],  # 9
]


def floor(module: str) -> int:
    matches = [(len(prefix), index) for index, names in enumerate(FLOORS) for prefix in names
               if module == prefix or (prefix != "xstilts" and module.startswith(prefix + "."))]
    assert matches, f"{module} is on no floor: add it to FLOORS"
    return max(matches)[1]


def imports() -> list[tuple[str, str, int]]:
    """(module, imported xstilts module, line) for every import in the package, lazy ones included."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("xstilts"):
                found.append((module, node.module, node.lineno))
            elif isinstance(node, ast.Import):
                found += [(module, alias.name, node.lineno) for alias in node.names if alias.name.startswith("xstilts")]
    return found


def test_every_import_points_to_the_same_floor_or_below():
    upward = [f"{module}:{line} imports {target} (floor {floor(target)} > {floor(module)})"
              for module, target, line in imports() if floor(target) > floor(module)]
    assert not upward, "\n".join(upward)


def test_tasks_import_nothing_above_them():
    above = [f"{module}:{line} imports {target}" for module, target, line in imports()
             if module.startswith("xstilts.tasks") and not (target.startswith("xstilts.tasks") or floor(target) == 0)]
    assert not above, "\n".join(above)


def test_the_check_sees_an_upward_import():
    assert floor("xstilts.task_types.classification") > floor("xstilts.tasks.readers")
    assert ("xstilts.task_types", "xstilts.tasks.readers") in {(m, t) for m, t, _ in imports()}
