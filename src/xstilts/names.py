"""Names that become path components (a study's, a run's, a task's, an arm's, a language's) are checked where
they are read, so that no name can place a file outside its folder."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator


def path_component(name: str) -> str:
    """`name` when it is safe as one file or folder name: not empty, not '.' or '..', no '/' or '\\', no
    NUL or other control character, not starting with '-' (it would read as an option)."""
    if name in {"", ".", ".."} or "/" in name or "\\" in name or name.startswith("-") \
            or any(ord(char) < 32 or ord(char) == 127 for char in name):
        raise ValueError(f"{name!r} cannot name a file or folder (no '/', '\\\\', '..', leading '-' or control "
                         "characters)")
    return name


PathName = Annotated[str, AfterValidator(path_component)]


def task_name(name: str) -> str:
    """A task's name: a path component (`path_component`) without '.', since it also names the task's head,
    a PyTorch module, whose name cannot hold one."""
    path_component(name)
    if "." in name:
        raise ValueError(f"{name!r}: a task's name names its head, which cannot hold a '.'; use '-' or '_'")
    return name


TaskName = Annotated[str, AfterValidator(task_name)]
