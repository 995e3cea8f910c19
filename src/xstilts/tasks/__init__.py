"""Tasks declared as data: specs, a registry of YAML files, and readers for local and Hub sources."""

from xstilts.tasks.registry import TaskRegistry, load_registry
from xstilts.tasks.spec import Example, TaskSpec

__all__ = ["Example", "TaskRegistry", "TaskSpec", "load_registry"]
