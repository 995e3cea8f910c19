"""Slices, exports and merges: a study computed in pieces on several machines is the study computed whole."""

from __future__ import annotations

import gzip
import json
import shutil
import threading
from pathlib import Path

import pandas as pd
import pytest
from filelock import FileLock

import xstilts.executors.local
from xstilts.cli import main
from xstilts.errors import XstiltsError
from xstilts.exchange import export_study, merge_exports
from xstilts.graph import build_graph, precision_graphs
from xstilts.precision import pick_device, resolve_precision
from xstilts.report import write_report
from xstilts.study import run_study
from xstilts.study_spec import StudySpec
from helpers import SNLI, one_line_error, tiny_study

pytestmark = pytest.mark.usefixtures("single_thread")

WEIGHT_SUFFIXES = {".safetensors", ".pt", ".bin", ".pth", ".ckpt"}


@pytest.fixture(scope="module")
def spec(tiny_model_dir, shared_data_dir) -> StudySpec:
    return StudySpec(**{**tiny_study(tiny_model_dir, shared_data_dir, [SNLI]), "seeds": [3, 4]})


@pytest.fixture(scope="module")
def whole(spec, tmp_path_factory) -> Path:
    """The two-seed study computed whole, in one folder."""
    study_dir = tmp_path_factory.mktemp("whole")
    run_study(spec, study_dir)
    return study_dir


@pytest.fixture(scope="module")
def slices(spec, tmp_path_factory) -> list[Path]:
    """Seed 3 and seed 4 computed in two separate folders and exported."""
    root = tmp_path_factory.mktemp("slices")
    exports = []
    for seed in spec.seeds:
        run_study(spec, root / f"seed{seed}", seeds=[seed])
        export_study(root / f"seed{seed}", root / f"export{seed}")
        exports.append(root / f"export{seed}")
    return exports


def _copy_tree(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def test_a_slice_computes_only_its_seed(spec, slices):
    seed3 = slices[0].parent / "seed3"
    results = pd.read_csv(seed3 / "results.csv")
    assert set(results.seed) == {3} and set(results.arm) == {"baseline", "snli"}
    graph = build_graph(spec)
    computed = {path.parent.name for path in (seed3 / "nodes").glob("*/DONE")}
    seed4 = {name for use in graph.uses if use.seed == 4 for name in (use.intermediate, use.target, use.eval) if name}
    assert computed and not computed & seed4 and len(computed) == 5


def test_slices_exported_and_merged_equal_the_study_computed_whole(spec, whole, slices, tmp_path, capsys):
    for export in slices:
        files = [path for path in export.rglob("*") if path.is_file()]
        assert not [path for path in files if path.suffix in WEIGHT_SUFFIXES]  # an export holds no weights
        assert any(path.name.endswith(".csv.gz") for path in files)
    merged = tmp_path / "merged"
    merge_exports(merged, slices)
    assert (merged / "results.csv").read_text() == (whole / "results.csv").read_text()
    computed_on = json.loads((merged / "manifest.json").read_text())["computed_on"]
    assert set(computed_on) == {"3", "4"}
    assert computed_on["3"][0]["precision"] == resolve_precision("auto", pick_device())

    # finished evaluations whose trained ancestors stayed on other machines are not computed again
    capsys.readouterr()
    run_study(spec, merged)
    assert "0 to run" in capsys.readouterr().err
    assert not list((merged / "nodes").glob("*/model.safetensors"))

    # merging the same exports again takes nothing in and changes nothing
    before = (merged / "results.csv").read_text()
    assert "0 nodes taken in, 10 already there" in merge_exports(merged, slices)
    assert (merged / "results.csv").read_text() == before

    # the report reads an export directly (compressed predictions) and agrees with the whole study's
    export_study(merged, tmp_path / "all")
    write_report(tmp_path / "all")
    write_report(whole)
    assert (pd.read_csv(tmp_path / "all" / "report" / "summary.csv")
            .equals(pd.read_csv(whole / "report" / "summary.csv")))


def test_a_missing_parent_is_trained_again_only_when_an_unfinished_node_needs_it(spec, slices, tmp_path, capsys):
    merged = tmp_path / "merged"
    merge_exports(merged, slices[:1])
    graph = build_graph(spec)
    use = next(use for use in graph.uses if use.seed == 3 and use.arm == "snli")
    evaluation = merged / "nodes" / use.eval
    for path in [evaluation / "DONE", *evaluation.glob("predictions/*")]:
        path.unlink()
    capsys.readouterr()
    run_study(spec, merged, seeds=[3])
    # the evaluation, its target and the target's intermediate parent (both imported without weights)
    assert "3 to run" in capsys.readouterr().err
    assert (merged / "nodes" / use.target / "model.safetensors").exists()
    assert (merged / "nodes" / use.intermediate / "model.safetensors").exists()
    baseline = next(use for use in graph.uses if use.seed == 3 and use.arm == "baseline")
    assert not (merged / "nodes" / baseline.target / "model.safetensors").exists()  # nothing needed it


def test_two_different_copies_of_one_node_are_refused(slices, tmp_path):
    forged = _copy_tree(slices[0], tmp_path / "forged")
    predictions = next(forged.glob("nodes/eval-*/predictions/en.csv.gz"))
    table = pd.read_csv(predictions)
    table.loc[0, "correct"] = 1 - table.loc[0, "correct"]
    predictions.write_bytes(gzip.compress(table.to_csv(index=False).encode()))
    with pytest.raises(XstiltsError) as excinfo:
        merge_exports(tmp_path / "merged", [slices[0], forged])
    one_line_error(excinfo, str(predictions.parents[1]), "differs from the copy in", str(slices[0]))
    assert not (tmp_path / "merged" / "nodes").exists()  # checked before anything is written


def test_a_seed_computed_at_two_precisions_or_on_two_device_kinds_is_refused(spec, slices, tmp_path, monkeypatch):
    local = resolve_precision("auto", pick_device())
    other = "fp32" if local == "bf16" else "bf16"
    monkeypatch.setattr(xstilts.executors.local, "precision_here", lambda precision: other)  # another machine
    run_study(spec, tmp_path / "other", seeds=[3], arms=["snli"])  # bf16 autocast runs (emulated) on any CPU
    monkeypatch.undo()
    export_study(tmp_path / "other", tmp_path / "other-export")
    baseline_only = tmp_path / "baseline"
    run_study(spec, baseline_only, seeds=[3], arms=["baseline"])
    export_study(baseline_only, tmp_path / "baseline-export")
    with pytest.raises(XstiltsError) as excinfo:
        merge_exports(tmp_path / "merged", [tmp_path / "baseline-export", tmp_path / "other-export"])
    one_line_error(excinfo, "seed 3 was computed at", other, local, "like with like")

    gpu = _copy_tree(slices[0], tmp_path / "gpu")
    snli_nodes = [name for name, info in json.loads((gpu / "export.json").read_text())["nodes"].items()
                  if "snli" in info["label"]]
    for name in snli_nodes:
        result_file = gpu / "nodes" / name / "result.json"
        result = json.loads(result_file.read_text())
        result["machine"]["device"] = "NVIDIA H200"
        result_file.write_text(json.dumps(result))
    with pytest.raises(XstiltsError) as excinfo:
        merge_exports(tmp_path / "merged-gpu", [tmp_path / "baseline-export", gpu])
    one_line_error(excinfo, "seed 3 was computed", "NVIDIA H200", "cpu")


def test_an_export_whose_config_does_not_hash_to_its_name_is_refused(slices, tmp_path):
    edited = _copy_tree(slices[0], tmp_path / "edited")
    manifest = json.loads((edited / "export.json").read_text())
    name = next(iter(manifest["nodes"]))
    manifest["nodes"][name]["config"]["seed"] = 99
    (edited / "export.json").write_text(json.dumps(manifest))
    with pytest.raises(XstiltsError) as excinfo:
        merge_exports(tmp_path / "merged", [edited])
    one_line_error(excinfo, name, "hashes to")


def test_unknown_slice_names_are_one_line_errors(spec, tmp_path):
    with pytest.raises(XstiltsError) as excinfo:
        run_study(spec, tmp_path / "x", seeds=[7])
    one_line_error(excinfo, "--seeds 7 is not a seed of this study", "3, 4")
    with pytest.raises(XstiltsError) as excinfo:
        run_study(spec, tmp_path / "x", arms=["snl"])
    one_line_error(excinfo, "--arms 'snl'", "did you mean 'snli'")


def test_an_export_listing_more_seeds_adds_them(slices, tmp_path):
    """A study continued with more seeds elsewhere (its spec lists them) merges into one listing them all."""
    fewer = _copy_tree(slices[0], tmp_path / "fewer")
    study = json.loads((fewer / "study.json").read_text())
    (fewer / "study.json").write_text(json.dumps({**study, "seeds": [3]}))
    merged = tmp_path / "merged"
    merge_exports(merged, [fewer])
    assert json.loads((merged / "study.json").read_text())["seeds"] == [3]
    merge_exports(merged, [slices[1]])
    assert json.loads((merged / "study.json").read_text())["seeds"] == [3, 4]
    assert set(pd.read_csv(merged / "results.csv").seed) == {3, 4}


def test_a_refused_merge_writes_nothing_even_when_refused_late(spec, slices, tmp_path):
    """Checks that once ran after the first node was written: a seed the study folder has begun at another
    precision, and a result that results.csv cannot be written from."""
    other = "fp32" if resolve_precision("auto", pick_device()) == "bf16" else "bf16"
    graph = precision_graphs(spec)[other]
    begun = next(use.target for use in graph.uses if use.seed == 3)
    merged = tmp_path / "merged"
    (merged / "nodes" / begun).mkdir(parents=True)  # seed 3 begun here at the other precision (a checkpoint, say)
    with pytest.raises(XstiltsError) as excinfo:
        merge_exports(merged, slices[:1])
    one_line_error(excinfo, str(slices[0]), "seed 3", f"{merged} has nodes of it at {other}")
    assert [path.name for path in (merged / "nodes").iterdir()] == [begun] and not list(merged.glob("*.json"))

    hollow = _copy_tree(slices[0], tmp_path / "hollow")
    result_file = next(hollow.glob("nodes/eval-*/result.json"))
    result = json.loads(result_file.read_text())
    del result["languages"]
    result_file.write_text(json.dumps(result))
    with pytest.raises(XstiltsError) as excinfo:
        merge_exports(tmp_path / "merged-hollow", [hollow])
    one_line_error(excinfo, "cannot be written", "'languages'", str(hollow))
    assert not (tmp_path / "merged-hollow").exists()


def test_a_merge_waits_for_the_lock_of_a_node_being_computed(slices, tmp_path):
    merged = tmp_path / "merged"
    name = json.loads((slices[0] / "export.json").read_text())["nodes"].popitem()[0]
    lock = FileLock(merged / "nodes" / f"{name}.lock")
    (merged / "nodes").mkdir(parents=True)
    with lock:
        merging = threading.Thread(target=merge_exports, args=(merged, slices[:1]))
        merging.start()
        merging.join(timeout=5)
        assert merging.is_alive() and not (merged / "nodes" / name / "DONE").exists()
    merging.join()
    assert (merged / "nodes" / name / "DONE").exists()


def test_copies_whose_data_files_lie_at_other_paths_are_the_same_node(slices, tmp_path):
    moved = _copy_tree(slices[0], tmp_path / "moved")
    for result_file in moved.glob("nodes/*/result.json"):
        result = json.loads(result_file.read_text())
        result["data"] = [{**entry, "source": f"/elsewhere/{Path(entry['source']).name}"} for entry in result["data"]]
        result_file.write_text(json.dumps(result))
    assert "5 nodes taken in, 0 already there" in merge_exports(tmp_path / "merged", [slices[0], moved])


def test_a_new_merged_study_records_this_machines_data_folder_not_the_exports(slices, shared_data_dir, tmp_path,
                                                                              monkeypatch):
    moved = _copy_tree(slices[0], tmp_path / "moved")
    study = json.loads((moved / "study.json").read_text())
    (moved / "study.json").write_text(json.dumps({**study, "data_dir": "/elsewhere/data"}))  # the exporting machine's
    assert main(["merge", str(tmp_path / "merged"), str(moved), "--data-dir", str(shared_data_dir)]) == 0
    assert json.loads((tmp_path / "merged" / "study.json").read_text())["data_dir"] == str(shared_data_dir.resolve())
    monkeypatch.setenv("XSTILTS_DATA_DIR", str(shared_data_dir))
    merge_exports(tmp_path / "plain", [moved])
    assert json.loads((tmp_path / "plain" / "study.json").read_text())["data_dir"] is None


def _damage(export: Path, how: str) -> None:
    """Damage an export folder one way."""
    node = next(export.glob("nodes/eval-*"))
    if how == "no study.json":
        (export / "study.json").unlink()
    elif how == "garbage study.json":
        (export / "study.json").write_text("{not json")
    elif how == "export.json of []":
        (export / "export.json").write_text("[]")
    elif how == "result.json of []":
        (node / "result.json").write_text("[]")
    elif how == "result.json without its scores":
        (node / "result.json").write_text(json.dumps({**json.loads((node / "result.json").read_text()), "languages": None}))
    elif how == "truncated predictions":
        packed = next(node.glob("predictions/*.gz"))
        packed.write_bytes(packed.read_bytes()[:40])
    elif how == "no folder":
        shutil.rmtree(export)


@pytest.mark.parametrize("how", ["no study.json", "garbage study.json", "export.json of []", "result.json of []",
                                 "result.json without its scores", "truncated predictions", "no folder"])
def test_a_damaged_export_is_one_line_and_nothing_is_written(slices, tmp_path, capsys, how):
    damaged = _copy_tree(slices[0], tmp_path / "damaged")
    _damage(damaged, how)
    capsys.readouterr()
    assert main(["merge", str(tmp_path / "merged"), str(slices[1]), str(damaged)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("xstilts: error: ") and err.count("\n") == 1, err
    assert not (tmp_path / "merged" / "nodes").exists()


def test_an_export_output_holding_other_files_or_a_file_is_refused(whole, slices, tmp_path, capsys):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    (tmp_path / "file").write_text("mine")
    for output, message in [(tmp_path / "notes", "holds files and is not an export"),
                            (tmp_path / "file", "--output names a file"),
                            (slices[0], "holds an export already")]:
        capsys.readouterr()
        assert main(["export", str(whole), "--output", str(output)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{output}: {message}" in err, err
    assert [path.name for path in (tmp_path / "notes").iterdir()] == ["keep.txt"]


def test_a_node_imported_without_weights_is_trained_again_only_on_its_kind_of_device(spec, slices, tmp_path,
                                                                                     monkeypatch):
    """At the seed's own precision (its key holds it), and never on another kind of device than the seed's."""
    local = resolve_precision("auto", pick_device())
    other = "fp32" if local == "bf16" else "bf16"
    monkeypatch.setattr(xstilts.executors.local, "precision_here", lambda precision: other)  # another machine
    run_study(spec, tmp_path / "other", seeds=[3], arms=["snli"])
    monkeypatch.undo()
    export_study(tmp_path / "other", tmp_path / "other-export")
    gpu = _copy_tree(tmp_path / "other-export", tmp_path / "gpu-export")
    for result_file in gpu.glob("nodes/*/result.json"):
        result = json.loads(result_file.read_text())
        result_file.write_text(json.dumps({**result, "machine": {**result["machine"], "device": "NVIDIA H200"}}))
    for export, merged in [(tmp_path / "other-export", tmp_path / "merged"), (gpu, tmp_path / "merged-gpu")]:
        merge_exports(merged, [export])
        next(merged.glob("nodes/eval-*/DONE")).unlink()
    run_study(spec, tmp_path / "merged", seeds=[3], arms=["snli"])
    trained = [json.loads(path.read_text()) for path in (tmp_path / "merged").glob("nodes/*/result.json")]
    assert {result.get("precision") for result in trained if result["kind"] == "train"} == {other}
    with pytest.raises(XstiltsError) as excinfo:
        run_study(spec, tmp_path / "merged-gpu", seeds=[3], arms=["snli"])
    one_line_error(excinfo, "imported without weights from a NVIDIA H200 machine", f"here on {pick_device().type}",
                   "seed 3")
    assert not list((tmp_path / "merged-gpu").glob("nodes/*/model.safetensors"))


def test_another_study_takes_only_the_nodes_it_shares_and_computes_the_rest(spec, slices, tmp_path, capsys):
    """`merge --study`: a study with the same target and evaluation (here another arm) takes the baseline nodes
    from an export of the first study, passes over the rest, and then computes only its own arm."""
    other = StudySpec(**{**spec.model_dump(), "name": "tiny-other",
                         "arms": [{**SNLI, "name": "snli-small", "cap": 32}]})
    study_yaml = tmp_path / "other.yaml"
    study_yaml.write_text(json.dumps(other.model_dump()))  # JSON is YAML
    study_dir = tmp_path / "other"
    assert main(["merge", str(study_dir), str(slices[0]), "--study", str(study_yaml)]) == 0
    assert "2 nodes taken in, 0 already there, 3 not of this study passed over" in capsys.readouterr().out
    graph = build_graph(other)
    baseline = {name for use in graph.uses if use.arm == "baseline" and use.seed == 3 for name in (use.target, use.eval)}
    assert {path.name for path in (study_dir / "nodes").iterdir() if not path.name.endswith(".lock")} == baseline
    run_study(other, study_dir, seeds=[3])
    assert "2 cached, 3 to run" in capsys.readouterr().err  # the arm's intermediate, target and evaluation
    assert set(pd.read_csv(study_dir / "results.csv").arm) == {"baseline", "snli-small"}
    with pytest.raises(XstiltsError, match="differs from the one being merged into in arms"):
        merge_exports(study_dir, [slices[1]], study=StudySpec(**{**other.model_dump(), "arms": [SNLI]}))
