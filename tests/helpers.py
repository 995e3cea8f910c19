"""Assertions shared by several test modules."""

import pytest


def one_line_error(excinfo: pytest.ExceptionInfo, *parts: str) -> str:
    """The error's message, checked to be one line containing every part."""
    message = str(excinfo.value)
    assert "\n" not in message, message
    for part in parts:
        assert part in message, (part, message)
    return message
