"""Names that become paths (study, run, arm, evaluation languages) are refused with one line when they could
leave their folder; nothing is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from xstilts.cli import main
from helpers import SNLI, tiny_study

BAD_NAMES = ["../escaped", "/abs/escaped", "a/b", "..", "nul\x00byte", "tab\tname", "-option", ""]


def _files(root: Path) -> set[Path]:
    return {path.relative_to(root) for path in root.rglob("*")}


@pytest.mark.parametrize("bad", BAD_NAMES)
@pytest.mark.parametrize("where", ["study name", "arm name", "evaluation language", "run name"])
def test_a_name_that_could_leave_its_folder_is_one_line_and_writes_nothing(
        tmp_path, monkeypatch, capsys, tiny_model_dir, shared_data_dir, bad, where):
    monkeypatch.chdir(tmp_path)
    if where == "run name":
        spec = {"name": bad, "model": str(tiny_model_dir), "target": {"task": {"task": "mnli"}},
                "evaluate": [{"task": "xnli"}]}
        key, command = "name", "run"
    else:
        spec = tiny_study(tiny_model_dir, shared_data_dir, [{**SNLI, "name": bad} if where == "arm name" else SNLI])
        if where == "study name":
            spec["name"] = bad
        elif where == "evaluation language":
            spec["evaluate"][0]["languages"] = ["en", bad]
        key = {"study name": "name", "arm name": "arms.0.name", "evaluation language": "evaluate.0.languages.1"}[where]
        command = "study"
    (tmp_path / "spec.yaml").write_text(json.dumps(spec))
    before = _files(tmp_path.parent)
    assert main([command, str(tmp_path / "spec.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"key {key!r}" in err and "cannot name a file or folder" in err, err
    assert _files(tmp_path.parent) == before
