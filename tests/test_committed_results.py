"""The results committed under `results/` stay results of the committed studies: a change to node keys, task
files or configs that would orphan them (a study that would compute them again) fails here first."""

from __future__ import annotations

from pathlib import Path

import pytest

from xstilts.cli import main

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("export", "study", "nodes"), [
    ("results/lowres-vs-english-quick", "studies/lowres-vs-english-quick.yaml", 85),
    ("results/lowres-vs-english-matched-pilot", "studies/lowres-vs-english-matched-pilot.yaml", 66),
])
def test_a_committed_export_is_the_whole_of_its_study(export, study, nodes, tmp_path, shared_data_dir, capsys):
    """Merged into an empty folder, the export leaves nothing of its study to compute, and its report says
    what the committed report says."""
    folder = tmp_path / "study"
    data_dir = ["--data-dir", str(shared_data_dir)]
    assert main(["merge", str(folder), str(REPO / export), "--study", str(REPO / study), *data_dir]) == 0
    assert f"{nodes} nodes taken in" in capsys.readouterr().out
    assert main(["study", str(REPO / study), "--output", str(folder), "--dry-run", *data_dir]) == 0
    assert f"{nodes} cached, 0 to run" in capsys.readouterr().out
    committed = REPO / export / "report" / "report.md"
    if committed.is_file():
        assert main(["report", str(folder)]) == 0
        assert (folder / "report" / "report.md").read_text().split("\n## ")[1] == \
            committed.read_text().split("\n## ")[1]  # the primary question, word for word
