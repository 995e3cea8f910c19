"""Tracking (`log:`): TensorBoard event files of a real tiny run hold each phase's curve and dev scores, a
resumed phase reads as one series, a missing backend is one line before training, logging is in no node key,
and the report draws the learning curves the nodes record."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml
from matplotlib.image import imread
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from xstilts.cli import main
from xstilts.config import parse_config
from xstilts.errors import XstiltsError
from xstilts.graph import build_graph
from xstilts.pipeline import run
from xstilts.report import write_report
from xstilts.report.learning_curves import curve_file
from xstilts.study_spec import StudySpec
from xstilts.tracking import CURVE_TAGS, LOG_DIR, PhaseLog
from helpers import SNLI, one_line_error, tiny_study
from test_report import ARMS, make_study

pytestmark = pytest.mark.usefixtures("single_thread")


def _task(root: Path) -> tuple[Path, Path]:
    """A two-label task whose label is one keyword: a task folder and a data folder."""
    tasks, data = root / "tasks", root / "data"
    tasks.mkdir()
    data.mkdir()
    (tasks / "keyword.yaml").write_text(
        "name: keyword\nlabels: [negative, positive]\n"
        "local: {format: tsv, files: {train: train.tsv, dev: dev.tsv}, columns: {text_a: text, label: label}}\n")
    rows = [f"the {['terrible', 'excellent'][i % 2]} house number {i}\t{['negative', 'positive'][i % 2]}"
            for i in range(24)]
    for split in ("train", "dev"):
        (data / f"{split}.tsv").write_text("text\tlabel\n" + "\n".join(rows) + "\n")
    return tasks, data


def _config(model: Path, root: Path, log: str = "none") -> dict:
    tasks, data = _task(root)
    return {"model": str(model), "data_dir": str(data), "task_dirs": [str(tasks)], "precision": "fp32",
            "max_length": 32, "seed": 3, "log": log,
            "intermediate": {"tasks": [{"task": "keyword"}], "train": {"max_steps": 4, "batch_size": 8, "eval_every": 2}},
            "target": {"task": {"task": "keyword"}, "train": {"max_steps": 6, "batch_size": 8, "eval_every": 3}},
            "evaluate": [{"task": "keyword", "split": "dev"}]}


def _scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series in a TensorBoard log folder, read with TensorBoard's own reader."""
    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(event.step, event.value) for event in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_tensorboard_holds_each_phases_curve_and_dev_scores(tmp_path, tiny_model_dir):
    output = tmp_path / "run"
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(_config(tiny_model_dir, tmp_path)))
    assert main(["run", str(path), "--output", str(output), "--log", "tensorboard"]) == 0
    folders = {event.parent for event in tmp_path.rglob("events.out.tfevents.*")}  # in the phases' folders only
    assert folders == {(output / phase / LOG_DIR).resolve() for phase in ("intermediate", "target")}
    for phase, steps, evaluated in (("intermediate", 4, [2, 4]), ("target", 6, [3, 6])):
        metrics = json.loads((output / phase / "result.json").read_text())["metrics"]
        curve, history = metrics["curve"], metrics["history"]
        assert [point["step"] for point in curve] == list(range(1, steps + 1))
        assert [h["step"] for h in history] == evaluated
        scalars = _scalars(output / phase / LOG_DIR)
        assert set(scalars) == {*CURVE_TAGS.values(), "dev/score", "dev/keyword"}
        for key, tag in CURVE_TAGS.items():
            assert [step for step, _ in scalars[tag]] == [point["step"] for point in curve]
            assert [value for _, value in scalars[tag]] == pytest.approx([point[key] for point in curve], rel=1e-6)
        for tag, key in (("dev/score", "score"), ("dev/keyword", "dev")):
            values = [h[key]["keyword"] if key == "dev" else h[key] for h in history]
            assert [step for step, _ in scalars[tag]] == evaluated
            assert [value for _, value in scalars[tag]] == pytest.approx(values, rel=1e-6)
        rates = [value for _, value in scalars["train/learning_rate"]]
        assert rates[-1] < max(rates)  # warmup, then linear decay
    assert main(["run", str(path), "--output", str(output)]) == 0  # logging is no part of the run's identity


def test_a_resumed_phase_reads_as_one_series(tmp_path):
    """The interrupted phase wrote steps 1-3; resumed from its checkpoint at step 2, it writes 3-4 again."""
    point = lambda step, loss: {"step": step, "loss": loss, "lr": 0.1, "examples_per_second": 1.0,  # noqa: E731
                                "tokens_per_second": 2.0}
    with PhaseLog("tensorboard", tmp_path, "target") as log:
        log.begin(0, [], [])
        for step in (1, 2, 3):
            log.curve(point(step, 10.0 + step))
    with PhaseLog("tensorboard", tmp_path, "target") as log:
        log.begin(2, [point(1, 11.0), point(2, 12.0)], [{"step": 2, "dev": {"t": 0.5}, "score": 0.5, "loss": 12.0}])
        for step in (3, 4):
            log.curve(point(step, 20.0 + step))
    scalars = _scalars(tmp_path)
    assert scalars["train/loss"] == [(1, 11.0), (2, 12.0), (3, 23.0), (4, 24.0)]
    assert scalars["dev/t"] == [(2, 0.5)]


def test_a_missing_backend_is_one_line_before_training(tmp_path, tiny_model_dir, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    config = _config(tiny_model_dir, tmp_path, "wandb")
    with pytest.raises(XstiltsError) as excinfo:
        run(parse_config(config, "test"), tmp_path / "run")
    one_line_error(excinfo, "wandb", "pip install 'xstilts[wandb]'")
    assert not (tmp_path / "run").exists()
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({**config, "log": "none"}))
    assert main(["run", str(path), "--output", str(tmp_path / "run"), "--log", "wandb"]) == 2
    assert "pip install 'xstilts[wandb]'" in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_logging_is_in_no_node_key(tiny_model_dir, shared_data_dir):
    spec = tiny_study(tiny_model_dir, shared_data_dir, [SNLI])
    keys = {log: list(build_graph(StudySpec(**spec, log=log)).nodes) for log in ("none", "tensorboard", "wandb")}
    assert keys["none"] == keys["tensorboard"] == keys["wandb"]


def test_the_report_draws_each_phase_kinds_learning_curves(tmp_path):
    study = make_study(tmp_path / "study", arms=ARMS[:3], seeds=[1, 2])
    for arm, *_ in ARMS[:3]:
        for seed in (1, 2):
            nodes = {"target": f"target-{arm}-{seed}", "intermediate": f"inter-{arm}-{seed}"}
            for phase, node in nodes.items():
                if phase == "intermediate" and arm == "baseline":
                    continue
                curve = [{"step": step, "loss": 1.0 / step + seed / 10, "lr": 1e-5} for step in range(1, 11)]
                (study / "nodes" / node).mkdir(parents=True, exist_ok=True)
                (study / "nodes" / node / "result.json").write_text(json.dumps(
                    {"kind": "train", "metrics": {"curve": curve, "history": curve[-1:]}}))
    report = write_report(study)
    markdown = report.read_text()
    for phase in ("intermediate", "target"):
        image = imread(report.parent / curve_file(phase))
        assert image.shape[0] > 300 and image.shape[1] > 500
        assert f"]({curve_file(phase)})" in markdown
    assert (report.parent / "report.html").read_text().count("data:image/png;base64") == markdown.count("![")
