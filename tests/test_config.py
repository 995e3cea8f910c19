"""Run configs: the shipped YAML files load; bad keys and values are one-line errors naming file and key;
the CLI turns user errors into one `xstilts: error: ...` line on stderr and exit status 2."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from xstilts.cli import main
from xstilts.config import RunConfig, load_config
from xstilts.errors import XstiltsError
from xstilts.study_spec import load_study
from helpers import one_line_error

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
CONFIGS = sorted(CONFIG_DIR.glob("*.yaml"))

MINIMAL = {"target": {"task": {"task": "mnli"}}, "evaluate": [{"task": "xnli"}]}


def _write_config(tmp_path: Path, data: dict | str, name: str = "run.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def _cli_error(capsys, *parts: str) -> str:
    """The one line the CLI printed to stderr, checked to be an `xstilts: error:` line containing the parts."""
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("xstilts: error: "), lines[0]
    for part in parts:
        assert part in lines[0], (part, lines[0])
    assert captured.out == ""
    return lines[0]


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_load(path):
    config = load_config(path)
    assert isinstance(config, RunConfig)
    assert config.name == path.stem
    assert config.model == "embedded"
    if config.name == "tydiqa-en":  # extractive QA: TyDiQA English -> XQuAD and TyDiQA dev
        assert config.target.task.task == "tydiqa" and config.target.task.languages == ["en"]
        assert [(e.task, e.split) for e in config.evaluate] == [("xquad", "test"), ("tydiqa", "dev")]
    elif config.name in {"panx-en", "udpos-en"}:  # token tagging, the benchmark's English train -> English set
        task = config.name.removesuffix("-en")
        assert config.target.task.task == task and config.target.task.languages == ["en"]
        assert [(e.task, e.languages) for e in config.evaluate] == [(task, ["en"])]
    else:
        assert config.target.task.task == "mnli"
        assert [e.task for e in config.evaluate] == ["xnli"] and config.evaluate[0].split == "test"
    if config.intermediate is not None:
        assert config.target.carry == "encoder"
    # every task named in a shipped config exists
    from xstilts.tasks import load_registry

    registry = load_registry([Path(p) for p in config.task_dirs])
    tasks = [config.target.task.task] + [e.task for e in config.evaluate]
    tasks += [t.task for t in config.intermediate.tasks] if config.intermediate else []
    for task in tasks:
        registry.get(task)


def test_shipped_configs_exist():
    assert {p.name for p in CONFIGS} >= {"xnli-baseline.yaml", "xnli-indonli.yaml"}


def test_defaults():
    config = RunConfig(**MINIMAL)
    assert config.target.carry == "encoder" and config.intermediate is None
    assert config.evaluate[0].split == "test" and config.target.task.split == "train"
    assert config.target.train.lr == 5e-5 and config.target.train.select_best


def test_round_trip_through_yaml(tmp_path):
    """A run directory's config.yaml (model_dump) loads back to the same config."""
    config = load_config(CONFIG_DIR / "xnli-indonli.yaml")
    path = _write_config(tmp_path, config.model_dump())
    assert load_config(path) == config


@pytest.mark.parametrize(("data", "key"), [
    ({**MINIMAL, "seeed": 1}, "seeed"),
    ({**MINIMAL, "target": {"task": {"task": "mnli"}, "train": {"lerning_rate": 1e-4}}}, "target.train.lerning_rate"),
    ({**MINIMAL, "evaluate": [{"task": "xnli", "langauges": ["en"]}]}, "evaluate.0.langauges"),
    ({**MINIMAL, "intermediate": {"tasks": [{"task": "indonli"}], "sampler": "uniform"}}, "intermediate.sampler"),
    # a misspelled *required* key must be named too, not only reported as the correct key missing
    ({"targte": MINIMAL["target"], "evaluate": MINIMAL["evaluate"]}, "targte"),
], ids=["seeed", "lerning_rate", "langauges", "sampler", "targte"])
def test_unknown_key_is_named(tmp_path, data, key):
    path = _write_config(tmp_path, data)
    with pytest.raises(XstiltsError) as excinfo:
        load_config(path)
    one_line_error(excinfo, str(path), f"unknown key {key!r}")


@pytest.mark.parametrize(("data", "parts"), [
    ({**MINIMAL, "target": {"task": {"task": "mnli"}, "train": {"lr": -1}}}, ["'target.train.lr'", "greater than 0"]),
    ({**MINIMAL, "evaluate": [{"task": "xnli", "split": "tset"}]}, ["'evaluate.0.split'"]),
    ({**MINIMAL, "evaluate": []}, ["'evaluate'"]),
    ({**MINIMAL, "max_length": 4}, ["'max_length'"]),
    ({**MINIMAL, "precision": "fp16"}, ["'precision'"]),
    ({**MINIMAL, "target": {"task": {"task": "mnli"}, "carry": "encoder_and_head"}}, ["needs an intermediate phase"]),
    ({**MINIMAL, "target": {"task": {"task": "mnli"}, "carry_head": "snli"}}, ["set carry: encoder_and_head"]),
    ({**MINIMAL, "intermediate": {"tasks": [{"task": "snli"}]},
      "target": {"task": {"task": "mnli"}, "carry": "encoder_and_head", "carry_head": "qqp"}},
     ["carry_head 'qqp' is not an intermediate task (snli)"]),
    ({**MINIMAL, "intermediate": {"tasks": []}}, ["'intermediate.tasks'"]),
    ({**MINIMAL, "target": {"task": {"task": "mnli", "max_examples": 0}}}, ["'target.task.max_examples'"]),
])
def test_invalid_value_is_named(tmp_path, data, parts):
    path = _write_config(tmp_path, data)
    with pytest.raises(XstiltsError) as excinfo:
        load_config(path)
    one_line_error(excinfo, str(path), *parts)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(XstiltsError) as excinfo:
        load_config(tmp_path / "nope.yaml")
    one_line_error(excinfo, str(tmp_path / "nope.yaml"), "not found")
    path = _write_config(tmp_path, "target: {task: {task: mnli}\nevaluate: [\n")
    with pytest.raises(XstiltsError) as excinfo:
        load_config(path)
    one_line_error(excinfo, str(path), "invalid YAML")
    path = _write_config(tmp_path, "- just\n- a list\n")
    with pytest.raises(XstiltsError) as excinfo:
        load_config(path)
    one_line_error(excinfo, str(path), "mapping")

    with pytest.raises(XstiltsError) as excinfo:
        load_config(tmp_path)
    one_line_error(excinfo, str(tmp_path), "is a directory, expected a YAML file")
    path = _write_config(tmp_path, "x")
    path.write_bytes(b"name: caf\xe9\n")  # Latin-1, not UTF-8
    with pytest.raises(XstiltsError) as excinfo:
        load_config(path)
    one_line_error(excinfo, str(path), "not UTF-8 text (byte 9")


@pytest.mark.parametrize(("change", "message"), [
    ({"seeds": [1, 1]}, "seeds must be distinct"),
    ({"arms": []}, "at least one arm besides the baseline"),
])
def test_a_study_that_could_not_compare_anything_is_refused_before_it_runs(tmp_path, change, message):
    study = {"name": "s", "seeds": [1, 2], "target": {"task": {"task": "mnli"}},
             "arms": [{"name": "snli", "group": "english", "tasks": [{"task": "snli"}]}], **change}
    path = _write_config(tmp_path, study)
    with pytest.raises(XstiltsError) as excinfo:
        load_study(path)
    one_line_error(excinfo, str(path), message)


# --- the command line ---------------------------------------------------------------------------------------


def test_cli_bad_config_key(tmp_path, capsys):
    path = _write_config(tmp_path, {**MINIMAL, "target": {"task": {"task": "mnli"}, "train": {"lerning_rate": 1}}})
    assert main(["run", str(path), "--output", str(tmp_path / "out")]) == 2
    _cli_error(capsys, str(path), "'target.train.lerning_rate'")
    assert not (tmp_path / "out").exists()  # nothing is written for an invalid config


def test_cli_misspelled_required_key(tmp_path, capsys):
    path = _write_config(tmp_path, {"targte": MINIMAL["target"], "evaluate": MINIMAL["evaluate"]})
    assert main(["run", str(path), "--output", str(tmp_path / "out")]) == 2
    _cli_error(capsys, str(path), "'targte'")


def test_cli_missing_config_file(tmp_path, capsys):
    assert main(["run", str(tmp_path / "nope.yaml"), "--output", str(tmp_path / "out")]) == 2
    _cli_error(capsys, str(tmp_path / "nope.yaml"))


def test_cli_bad_argument_exits_2(tmp_path, capsys):
    """argparse's own errors (usage line + error line) also exit with status 2."""
    path = _write_config(tmp_path, MINIMAL)
    with pytest.raises(SystemExit) as excinfo:
        main(["run", str(path), "--seed", "one"])
    assert excinfo.value.code == 2
    assert "invalid int value: 'one'" in capsys.readouterr().err


@pytest.mark.parametrize(("where", "name", "suggestion"), [
    ("target", "mnlli", "mnli"), ("evaluate", "xnl", "xnli"), ("intermediate", "indonlii", "indonli")])
def test_cli_unknown_task(tmp_path, capsys, shared_data_dir, where, name, suggestion):
    data = {**MINIMAL, "data_dir": str(shared_data_dir)}
    if where == "target":
        data["target"] = {"task": {"task": name}}
    elif where == "evaluate":
        data["evaluate"] = [{"task": name}]
    else:
        data["intermediate"] = {"tasks": [{"task": name}]}
    path = _write_config(tmp_path, data)
    assert main(["run", str(path), "--output", str(tmp_path / "out")]) == 2
    _cli_error(capsys, f"unknown task {name!r}", f"did you mean {suggestion!r}")


def test_cli_missing_data_file(tmp_path, capsys, tiny_model_dir):
    data_dir = tmp_path / "empty-data"
    data_dir.mkdir()
    path = _write_config(tmp_path, {**MINIMAL, "precision": "fp32", "max_length": 32})
    code = main(["run", str(path), "--output", str(tmp_path / "out"), "--data-dir", str(data_dir),
                 "--model", str(tiny_model_dir), "--seed", "5"])
    assert code == 2
    _cli_error(capsys, str(data_dir / "glue" / "MNLI" / "train.json"), "not found", "'mnli'")
    # the failed check left nothing behind that would refuse the corrected rerun
    assert not (tmp_path / "out").exists()


def test_cli_missing_data_folder(tmp_path, capsys):
    path = _write_config(tmp_path, {**MINIMAL, "data_dir": str(tmp_path / "no-such-folder")})
    assert main(["run", str(path), "--output", str(tmp_path / "out")]) == 2
    _cli_error(capsys, str(tmp_path / "no-such-folder"), "data folder not found")


def test_cli_missing_task_folder(tmp_path, capsys):
    path = _write_config(tmp_path, {**MINIMAL, "task_dirs": [str(tmp_path / "no-tasks")]})
    assert main(["run", str(path), "--output", str(tmp_path / "out")]) == 2
    _cli_error(capsys, str(tmp_path / "no-tasks"), "task folder not found")


def test_cli_missing_evaluation_file_fails_before_training(tmp_path, capsys, tiny_model_dir):
    """A missing evaluation file is reported up front, not after the (possibly hours-long) training phases."""
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "toy.yaml").write_text(
        "name: toy\nlabels: [a, b]\nlocal: {format: tsv, files: {train: train.tsv, test: test.tsv},"
        " columns: {text_a: text, label: label}}\n", encoding="utf-8")
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "train.tsv").write_text("text\tlabel\n" + "".join(f"x{i}\t{'ab'[i % 2]}\n" for i in range(8)))
    path = _write_config(tmp_path, {
        "model": str(tiny_model_dir), "data_dir": str(data_dir), "task_dirs": [str(tasks)], "precision": "fp32",
        "max_length": 16, "target": {"task": {"task": "toy"}, "train": {"max_steps": 1, "batch_size": 4}},
        "evaluate": [{"task": "toy", "split": "test"}]})
    assert main(["run", str(path), "--output", str(tmp_path / "out")]) == 2
    _cli_error(capsys, str(data_dir / "test.tsv"), "not found")
    assert not (tmp_path / "out" / "target" / "DONE").exists(), "trained before checking the evaluation data"


def test_cli_bad_workers_and_output_file(tmp_path, capsys):
    study = Path(__file__).resolve().parents[1] / "studies" / "lowres-vs-english-pilot.yaml"
    with pytest.raises(SystemExit) as exit_info:
        main(["study", str(study), "--workers", "-1"])
    assert exit_info.value.code == 2
    assert "--workers: expected a positive integer, got '-1'" in capsys.readouterr().err
    output = tmp_path / "a-file"
    output.write_text("")
    assert main(["study", str(study), "--output", str(output)]) == 2
    _cli_error(capsys, str(output), "--output names a file")


@pytest.mark.parametrize("model", ["missing-dir", "garbage-dir", "empty-dir", "bad hub name!"])
def test_a_model_that_cannot_load_is_one_line_before_training(tmp_path, shared_data_dir, model):
    from xstilts.phases import Context
    from xstilts.tasks import load_registry

    path = tmp_path / model if model.endswith("-dir") else model
    if model in ("garbage-dir", "empty-dir"):
        path.mkdir()
    if model == "garbage-dir":
        (path / "config.json").write_text("{not json")
    with pytest.raises(XstiltsError) as excinfo:
        Context.create(str(path), load_registry(), shared_data_dir, 128, "fp32")
    one_line_error(excinfo, str(path), "cannot load this model")


def test_damaged_model_weights_are_one_line(tmp_path, tiny_model_dir):
    import shutil

    from xstilts.model import load_encoder

    damaged = tmp_path / "model"
    shutil.copytree(tiny_model_dir, damaged)
    weights = damaged / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(XstiltsError) as excinfo:
        load_encoder(str(damaged))
    one_line_error(excinfo, str(damaged), "the model's weights cannot be loaded", "delete its cache folder")


def test_max_length_beyond_the_model_is_refused(tiny_model_dir, shared_data_dir):
    from xstilts.phases import Context
    from xstilts.tasks import load_registry

    with pytest.raises(XstiltsError) as excinfo:
        Context.create(str(tiny_model_dir), load_registry(), shared_data_dir, 100_000, "fp32")
    one_line_error(excinfo, "max_length 100000 exceeds what", "(512 pieces)")


def test_cli_os_errors_are_one_line(tmp_path, capsys, shared_data_dir):
    """An output folder that cannot be created (here: under a file) is one line, not a traceback."""
    study = Path(__file__).resolve().parents[1] / "studies" / "lowres-vs-english-pilot.yaml"
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["study", str(study), "--data-dir", str(shared_data_dir), "--output", str(blocker / "out")]) == 2
    _cli_error(capsys, str(blocker / "out"), "Not a directory")


@pytest.mark.parametrize(("error", "text"), [
    (OSError(28, "No space left on device"), "No space left on device"),  # a full disk
    (PermissionError(13, "Permission denied"), "Permission denied"),  # a read-only output folder
])
def test_cli_full_disk_and_read_only_output_are_one_line(tmp_path, capsys, monkeypatch, error, text):
    """As root, permissions cannot be staged and a disk cannot be filled safely: the write that fails raises
    what the OS would, with the file it was writing."""
    import xstilts.study

    study = Path(__file__).resolve().parents[1] / "studies" / "lowres-vs-english-pilot.yaml"
    target = tmp_path / "out" / "study.json"
    error.filename = str(target)

    def failing_write(path, data):
        raise error

    monkeypatch.setattr(xstilts.study, "write_json", failing_write)
    monkeypatch.setattr(xstilts.study, "check_plan", lambda *args: None)
    assert main(["study", str(study), "--output", str(tmp_path / "out")]) == 2
    _cli_error(capsys, str(target), text)
