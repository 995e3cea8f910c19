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
     "xstilts.averaging", "xstilts.qa_metrics", "xstilts.embedded_model", "xstilts.model_identity",
     "xstilts.tracking", "xstilts.summaries",
     "xstilts.report.statistics",
     "xstilts.report.render"],
    ["xstilts.tasks"],  # 1: task specs, the registry, readers that return records
    ["xstilts.task_types"],  # 2: what a type does with records: examples, features, heads, metrics
    ["xstilts.config", "xstilts.study_spec"],  # 3: run and study configuration
    ["xstilts.model", "xstilts.evaluation", "xstilts.training", "xstilts.vocab", "xstilts.report",
     "xstilts.hf_interop", "xstilts.hf_card"],  # 4: models (Hugging Face folders both ways), training, reports
    ["xstilts.phases"],  # 5: a phase as a skip/resume/start unit
    ["xstilts.graph", "xstilts.executors"],  # 6: the study graph and where its nodes run
    ["xstilts.study", "xstilts.pipeline", "xstilts.exchange", "xstilts.evaluate",
     "xstilts.xtreme_predictions"],  # 7: orchestration, and reading what it wrote
    ["xstilts.plan"],  # 8: planning from a finished pilot (its graph and its report)
    ["xstilts.cli"],  # 9
]


def floor(module: str) -> int:
    matches = [(len(prefix), index) for index, names in enumerate(FLOORS) for prefix in names
               if module == prefix or (prefix != "xstilts" and module.startswith(prefix + "."))]
    assert matches, f"{module} is on no floor: add it to FLOORS"
    return max(matches)[1]


def is_module(name: str) -> bool:
    """Whether a dotted xstilts name is a module or package of the source tree (not a name inside one)."""
    path = PACKAGE.joinpath(*name.split(".")[1:])
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def module_imports(source: str) -> list[tuple[str, int]]:
    """(imported xstilts module, line) for every import in a module's source, lazy ones included;
    `from xstilts.a import b` imports the module xstilts.a.b where b is one, else xstilts.a."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "xstilts":
            targets = [f"{node.module}.{alias.name}" if is_module(f"{node.module}.{alias.name}") else node.module
                       for alias in node.names]
            found += [(target, node.lineno) for target in dict.fromkeys(targets)]
        elif isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names if alias.name.split(".")[0] == "xstilts"]
    return found


def imports() -> list[tuple[str, str, int]]:
    """(module, imported xstilts module, line) for every import in the package, lazy ones included."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found += [(module, target, line) for target, line in module_imports(path.read_text(encoding="utf-8"))]
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


def test_the_check_sees_a_module_imported_through_its_package():
    assert module_imports("from xstilts import cli, errors\n") == [("xstilts.cli", 1), ("xstilts.errors", 1)]
    assert module_imports("from xstilts.report import statistics, write_report\n") == [
        ("xstilts.report.statistics", 1), ("xstilts.report", 1)]
    assert module_imports("from xstilts.graph import Node\n") == [("xstilts.graph", 1)]
    assert floor("xstilts.cli") > floor("xstilts.tasks.readers")  # so `from xstilts import cli` below it is seen
