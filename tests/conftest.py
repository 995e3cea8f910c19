"""Shared pytest fixtures."""

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The shared data directory: ``$XSTILTS_DATA_DIR``, else ``<repo>/../shared/data``."""
    env = os.environ.get("XSTILTS_DATA_DIR")
    return Path(env) if env else (Path(__file__).resolve().parents[1] / ".." / "shared" / "data").resolve()
