"""Studies: cached graph of phases, resume after SIGKILL, adding an arm runs only new nodes, dry run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from safetensors.torch import load_file

from xstilts.graph import build_graph
from xstilts.report import write_report
from xstilts.study import run_study, study_status
from xstilts.study_spec import StudySpec, load_study
from xstilts.errors import XstiltsError
from helpers import INDONLI, SNLI, tiny_study




def _done_times(study_dir: Path) -> dict[str, float]:
    return {p.parent.name: p.stat().st_mtime_ns for p in (study_dir / "nodes").glob("*/DONE")}


def test_rerun_is_cached_and_new_arm_runs_only_new_nodes(tiny_model_dir, shared_data_dir, tmp_path, capsys):
    study_dir = tmp_path / "study"
    spec = StudySpec(**tiny_study(tiny_model_dir, shared_data_dir, [SNLI]))
    run_study(spec, study_dir)
    first = _done_times(study_dir)
    assert len(first) == len(build_graph(spec).nodes) == 5  # baseline target+eval, snli inter+target+eval
    results = pd.read_csv(study_dir / "results.csv")
    assert sorted(results.arm.unique()) == ["baseline", "snli"] and len(results) == 4
    assert (results.metric == "accuracy").all() and "accuracy" not in results.columns
    lines = [json.loads(line) for line in (study_dir / "results.jsonl").read_text().splitlines()]
    assert [list(line["scores"]) for line in lines] == [["accuracy"]] * 4
    assert [line["scores"]["accuracy"] for line in lines] == pytest.approx(results.score.tolist())
    capsys.readouterr()

    timings = json.loads((study_dir / "manifest.json").read_text())["timings_seconds"]
    assert set(timings["ran_by_phase_kind"]) == {"intermediate", "target", "eval"}
    assert timings["ran_by_phase_kind"] == timings["all_nodes_by_phase_kind"]
    assert sum(timings["ran_by_phase_kind"].values()) <= timings["this_invocation"]
    parts = timings["ran_by_part"]
    assert set(parts) == {"read_and_tokenize", "load_model", "compute"}
    # a process reads and tokenizes a split once (an earlier study in this process may have), and loading
    # the tiny model takes milliseconds: only computing is sure to take time here
    assert parts["compute"] > 0 and parts["read_and_tokenize"] >= 0 and parts["load_model"] >= 0
    assert sum(parts.values()) == pytest.approx(sum(timings["ran_by_phase_kind"].values()), abs=0.5)

    run_study(spec, study_dir)  # everything cached: nothing is trained again
    assert "5 cached, 0 to run" in capsys.readouterr().err
    assert _done_times(study_dir) == first

    bigger = StudySpec(**tiny_study(tiny_model_dir, shared_data_dir, [SNLI, INDONLI]))
    run_study(bigger, study_dir)
    err = capsys.readouterr().err
    assert "5 cached, 3 to run" in err
    after = _done_times(study_dir)
    assert {k: after[k] for k in first} == first  # old nodes untouched
    new = set(after) - set(first)
    assert len(new) == 3 and {name.split("-")[0] for name in new} == {"intermediate", "target", "eval"}
    results = pd.read_csv(study_dir / "results.csv")
    assert sorted(results.arm.unique()) == ["baseline", "indonli", "snli"]
    assert set(results.group) == {"baseline", "english", "low-resource"}
    assert (results[results.arm == "indonli"].arm_languages == "id").all()
    assert (results[results.arm == "indonli"].intermediate_examples == 64).all()

    # the report of this real (tiny) study agrees with the raw per-example predictions
    write_report(study_dir)
    summary = pd.read_csv(study_dir / "report" / "summary.csv")
    for _, row in results.iterrows():
        correct = pd.read_csv(study_dir / row.predictions)["correct"]
        cell = summary[(summary.arm == row.arm) & (summary.language == row.language)]
        assert len(cell) == 1 and cell.score.item() == pytest.approx(correct.mean(), abs=1e-12)
        assert row.score == pytest.approx(correct.mean(), abs=1e-12) and cell.metric.item() == "accuracy"
    assert (study_dir / "report" / "report.html").stat().st_size > 10_000
    assert results.parallel.all()  # xnli declares that its languages share items
    report = json.loads((study_dir / "report" / "report.json").read_text())
    primary = report["primary"]
    assert (primary["english_arms"], primary["low_resource_arms"], primary["evaluation"]) == (["snli"], ["indonli"],
                                                                                              "xnli/dev")
    change = {arm["arm"]: arm["change"] for arm in report["arms"]}
    assert primary["value"] == pytest.approx(change["snli"] - change["indonli"])
    assert primary["seeds"] == 1 and primary["p_value"] is None and not primary["significant"]  # one seed: untestable
    assert "cannot resolve anything" in (study_dir / "report" / "report.md").read_text()


def test_dry_run_lists_each_shared_node_once(tiny_model_dir, shared_data_dir, tmp_path, capsys):
    spec = tiny_study(tiny_model_dir, shared_data_dir, [SNLI, {**SNLI, "name": "snli-again"}])
    spec["evaluate"].append({"task": "americasnli", "split": "dev", "languages": ["aym"], "max_examples": 20})
    run_study(StudySpec(**spec), tmp_path / "study", dry_run=True)
    out = capsys.readouterr().out
    graph = build_graph(StudySpec(**spec))
    # two arms with identical intermediate training share the intermediate, target and eval nodes
    assert len(graph.nodes) == 2 + 2 + 1 + 2 and len(graph.uses) == 6
    for name in graph.nodes:
        assert out.count(f" {name}") - out.count(f"<- {name}") == 1
    shared = [line for line in out.splitlines() if "used by 2: snli/3, snli-again/3" in line]
    assert len(shared) == 4  # intermediate, target and its two eval nodes
    assert "7 nodes for 6 result cells; 0 cached, 7 to run" in out


def test_a_dry_run_of_a_slice_lists_only_the_slices_nodes(tiny_model_dir, shared_data_dir, tmp_path, capsys):
    spec = StudySpec(**{**tiny_study(tiny_model_dir, shared_data_dir, [SNLI]), "seeds": [3, 4]})
    graph = build_graph(spec)
    for seeds, arms, count, cells in [([3], None, 5, 2), ([4], ["baseline"], 2, 1)]:
        run_study(spec, tmp_path / "study", dry_run=True, seeds=seeds, arms=arms)
        out = capsys.readouterr().out
        chosen = graph.closure(graph.wanted(graph.cells(seeds, arms)))
        listed = {name for name in graph.nodes if f" {name}\n" in out or f" {name} <-" in out}
        assert listed == {node.name for node in chosen} and len(chosen) == count
        assert f"{count} nodes for {cells} result cells; 0 cached, {count} to run" in out
    assert not (tmp_path / "study").exists()  # a dry run writes nothing


def _wait_for(path_glob: str, root: Path, process: subprocess.Popen, timeout: float = 240) -> Path:
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = list(root.glob(path_glob))
        if found:
            return found[0]
        assert process.poll() is None, process.stderr.read() if process.stderr else "study process ended early"
        time.sleep(0.02)
    raise AssertionError(f"{path_glob} never appeared")


def test_sigkill_mid_training_then_resume_gives_identical_results(tiny_model_dir, shared_data_dir, tmp_path):
    spec = tiny_study(tiny_model_dir, shared_data_dir, [SNLI], max_steps=40, checkpoint_every=4, eval_every=8)
    spec_file = tmp_path / "study.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    command = [sys.executable, "-m", "xstilts.cli", "study", str(spec_file), "--output"]

    interrupted = tmp_path / "interrupted"
    process = subprocess.Popen(command + [str(interrupted)], stderr=subprocess.PIPE, text=True)
    checkpoint = _wait_for("nodes/target-*/checkpoint/training_state.pt", interrupted, process)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not list(interrupted.glob("nodes/*/DONE")), "the kill came too late to test resuming"
    resumed = subprocess.run(command + [str(interrupted)], capture_output=True, text=True, check=True)
    assert "resuming at step" in resumed.stderr

    # exact by construction: the resumed and the clean drivers run the same steps on the same shapes, through the
    # same kernels, as every process runs its phases on the same number of threads (conftest's XSTILTS_CPU_THREADS)
    clean = tmp_path / "clean"
    subprocess.run(command + [str(clean)], capture_output=True, text=True, check=True)
    ours, theirs = pd.read_csv(interrupted / "results.csv"), pd.read_csv(clean / "results.csv")
    pd.testing.assert_frame_equal(ours, theirs)
    node = checkpoint.parents[1].name
    a, b = load_file(str(interrupted / "nodes" / node / "model.safetensors")), load_file(str(clean / "nodes" / node / "model.safetensors"))
    assert all((a[k] == b[k]).all() for k in a)
    history = [pd.read_json(d / "nodes" / node / "result.json", typ="series")["metrics"]["history"] for d in (interrupted, clean)]
    assert history[0] == history[1]


def test_shipped_studies_load_and_bad_key_is_named(tmp_path):
    for path in Path(__file__).resolve().parents[1].glob("studies/*.yaml"):
        spec = load_study(path)
        assert spec.arms and len(build_graph(spec).nodes) > len(spec.arms)
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nseeds: [1]\ntarget: {task: {task: mnli}}\narms: [{name: a, group: english, tasks: [{task: snli}], capp: 3}]\n")
    with pytest.raises(XstiltsError, match=r"bad.yaml: unknown key 'arms.0.capp'"):
        load_study(bad)


@pytest.mark.parametrize(("primary", "message"), [
    ({"evaluation": "xnli/test"}, "primary.evaluation 'xnli/test' is not one of the evaluations"),
    ({"arms": ["snli", "qqp"]}, "primary.arms names unknown arms"),
    ({"arms": ["snli", "snli-2"]}, "needs at least one English and one low-resource arm"),
])
def test_primary_contrast_must_name_this_studys_evaluation_and_arms(tmp_path, primary, message):
    spec = tiny_study(tmp_path, tmp_path, [SNLI, {**SNLI, "name": "snli-2"}, INDONLI])
    with pytest.raises(ValueError, match=message):
        StudySpec(**spec, primary=primary)


def test_edited_task_or_replaced_data_file_changes_exactly_the_affected_nodes(tiny_model_dir, shared_data_dir,
                                                                              tmp_path):
    """A user copy of SNLI whose files live outside the data folder: editing its label map, or replacing its
    data file, re-keys the nodes of its arm (intermediate, target, evaluation) and nothing else."""
    train_file = tmp_path / "snli-train.json"
    shutil.copyfile(shared_data_dir / "glue" / "SNLI" / "train.json", train_file)
    builtin = Path(__file__).resolve().parents[1] / "src" / "xstilts" / "tasks" / "builtin" / "snli.yaml"
    original = {**yaml.safe_load(builtin.read_text()), "name": "my-snli"}
    original["local"]["files"] = {"train": str(train_file)}
    original["local"]["absolute_paths"] = True
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    task_file = tasks / "my-snli.yaml"
    task_file.write_text(yaml.safe_dump(original))
    arm = {"name": "my-snli", "group": "english", "tasks": [{"task": "my-snli"}], "cap": 64}
    spec = {**tiny_study(tiny_model_dir, shared_data_dir, [arm, INDONLI]), "task_dirs": [str(tasks)]}
    before = build_graph(StudySpec(**spec)).nodes
    mine = {name for name, node in before.items() if "my-snli" in node.label}
    assert len(mine) == 3

    def rekeyed() -> set[str]:
        return set(before) - set(build_graph(StudySpec(**spec)).nodes)

    edited = {**original, "local": {**original["local"], "label_map": {"x": "neutral"}}}
    task_file.write_text(yaml.safe_dump(edited))
    assert rekeyed() == mine
    task_file.write_text(yaml.safe_dump(original))
    assert rekeyed() == set()
    train_file.write_text(train_file.read_text().replace("a", "b", 1))
    assert rekeyed() == mine


def test_two_drivers_on_one_directory_compute_every_node_once(tiny_model_dir, shared_data_dir, tmp_path):
    """Two `xstilts study` processes started together on one output directory: each node is trained or
    scored by one of them (the other waits on its lock and reads the result), and both write the same table."""
    spec_file = tmp_path / "study.yaml"
    spec_file.write_text(yaml.safe_dump(tiny_study(tiny_model_dir, shared_data_dir, [SNLI])))
    command = [sys.executable, "-m", "xstilts.cli", "study", str(spec_file), "--output", str(tmp_path / "out")]
    drivers = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for _ in range(2)]
    logs = [driver.communicate(timeout=600)[0] for driver in drivers]
    assert [driver.returncode for driver in drivers] == [0, 0], logs
    both = "".join(logs)
    # every training phase evaluates on dev at its last step once; every evaluation scores 'en' once
    assert both.count("intermediate snli cap 64 seed 3: step 4 dev") == 1
    assert both.count("target mnli after baseline seed 3: step 6 dev") == 1
    assert both.count("target mnli after snli seed 3: step 6 dev") == 1
    assert both.count("eval xnli/dev en:") == 2
    # fresh processes: reading and tokenizing the data is part of what the nodes' timings record
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["timings_seconds"]["ran_by_part"][
        "read_and_tokenize"] > 0
    clean = tmp_path / "clean"  # exact by construction, as in the resume test above
    run_study(StudySpec(**tiny_study(tiny_model_dir, shared_data_dir, [SNLI])), clean)
    results = pd.read_csv(tmp_path / "out" / "results.csv")
    pd.testing.assert_frame_equal(results.drop(columns="predictions"),
                                  pd.read_csv(clean / "results.csv").drop(columns="predictions"))


def test_done_marker_without_a_readable_result_is_computed_again(tmp_path, capsys):
    from xstilts.phases import DONE_FILE, RESULT_FILE, discard_unreadable, is_done

    node = tmp_path / "nodes" / "eval-0123456789abcdef"
    node.mkdir(parents=True)
    (node / DONE_FILE).write_text("")
    (node / RESULT_FILE).write_text('{"kind": "ev')  # truncated
    (tmp_path / "graph.json").write_text(json.dumps({node.name: {"label": "eval x", "parents": []}}))
    assert not is_done(node) and (node / DONE_FILE).exists()  # reading changes nothing
    assert "todo     eval-0123456789abcdef" in study_status(tmp_path) and (node / DONE_FILE).exists()
    discard_unreadable(node)  # what a phase does before computing
    assert not (node / DONE_FILE).exists()
    assert f"xstilts: warning: {node}: DONE without a readable result.json" in capsys.readouterr().err
    (node / RESULT_FILE).write_text('{"kind": "eval"}')
    (node / DONE_FILE).write_text("")
    assert is_done(node)


def test_a_named_carried_head_must_be_a_task_of_every_arm(tmp_path):
    spec = tiny_study(tmp_path, tmp_path, [SNLI, INDONLI])
    spec["target"] = {**spec["target"], "carry": "encoder_and_head", "carry_head": "snli"}
    with pytest.raises(ValueError, match=r"target.carry_head 'snli' is not a task of the arms \['indonli'\]"):
        StudySpec(**spec)
    StudySpec(**{**spec, "arms": [SNLI]})


SIB = {"task": "sib200", "max_examples": 64}


def test_intermediate_models_are_scored_with_their_own_head(tiny_model_dir, shared_data_dir, tmp_path):
    spec = tiny_study(tiny_model_dir, shared_data_dir, [
        {"name": "sib-en", "group": "english", "tasks": [{**SIB, "languages": ["eng_Latn"]}]},
        {"name": "sib-sw", "group": "low-resource", "tasks": [{**SIB, "languages": ["swh_Latn"]}]},
        SNLI])
    spec["intermediate_evaluate"] = [{"task": "sib200", "split": "test", "languages": ["eng_Latn", "swh_Latn"],
                                      "max_examples": 20}]
    spec = StudySpec(**spec)
    graph = build_graph(spec)
    assert [(probe.arm, probe.seed) for probe in graph.probes] == [("sib-en", 3), ("sib-sw", 3)]  # not snli's
    for probe in graph.probes:
        node = graph.nodes[probe.eval]
        assert node.parents == (probe.intermediate,) and node.config.head == "sib200"
        assert graph.users(probe.eval) == [f"{probe.arm}/3"]
    study_dir = tmp_path / "study"
    run_study(spec, study_dir, arms=["sib-sw"])  # a slice computes its own arm's intermediate evaluation only
    scores = pd.read_csv(study_dir / "intermediate.csv")
    assert set(scores.arm) == {"sib-sw"} and sorted(scores.language) == ["eng_Latn", "swh_Latn"]
    run_study(spec, study_dir)
    scores = pd.read_csv(study_dir / "intermediate.csv")
    assert len(scores) == 4 and set(scores.arm) == {"sib-en", "sib-sw"} and (scores.n == 20).all()
    for _, row in scores.iterrows():
        predictions = pd.read_csv(study_dir / "nodes" / row.eval_node / "predictions" / f"{row.language}.csv")
        assert row.score == pytest.approx(predictions["correct"].mean(), abs=1e-12) and row.metric == "accuracy"
    assert set(pd.read_csv(study_dir / "results.csv").task) == {"xnli"}  # not in the primary results table
    write_report(study_dir)
    report = json.loads((study_dir / "report" / "report.json").read_text())
    arms = report["intermediate"]["sib200/test"]["arms"]
    assert arms["sib-sw"]["swh_Latn"] == pytest.approx(scores.set_index(["arm", "language"]).score["sib-sw", "swh_Latn"])
    assert "Intermediate models on their own task" in (study_dir / "report" / "report.md").read_text()


def test_intermediate_evaluation_of_a_task_no_arm_trains_is_refused(tmp_path):
    spec = tiny_study(tmp_path, tmp_path, [SNLI])
    spec["intermediate_evaluate"] = [{"task": "sib200", "split": "test"}]
    with pytest.raises(ValueError, match="'sib200' is not a task of any arm"):
        StudySpec(**spec)
