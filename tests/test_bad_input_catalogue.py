"""The catalogue of bad input and damaged state (docs/bad-input.md): each case is one line naming the file,
what is wrong and what to do (exit status 2, no traceback), or the correct behaviour; and a real command
writes nothing outside its output, cache and data folders."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from xstilts.cli import main
from xstilts.config import TaskData, TrainConfig, parse_config
from xstilts.distributed import Ranks
from xstilts.errors import XstiltsError
from xstilts.model import HEADS_FILE, SETTINGS_FILE, WEIGHTS_FILE, HeadSpec, MultiHeadModel, load_encoder
from xstilts.phases import DONE_FILE, RESULT_FILE, Context, is_done, read_result
from xstilts.pipeline import run
from xstilts.task_types.classification import TYPE as CLASSIFICATION
from xstilts.tasks.hub import hub_location
from xstilts.tasks.registry import load_registry, load_task_file
from xstilts.training import (AVERAGE_FILE, CHECKPOINT_DIR, STATE_FILE, TrainTask, load_training_state,
                              rank_rng_states, restore_rng, train_phase)
from helpers import one_line_error, tiny_run

pytestmark = pytest.mark.usefixtures("single_thread")

NLI = ("entailment", "neutral", "contradiction")


def _fails(argv: list[str], capsys, *parts: str) -> str:
    """Run the CLI: exit status 2 and one line on stderr (no traceback) holding every part."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("xstilts: error: ") and "Traceback" not in err, err
    for part in parts:
        assert part in err, (part, err)
    return err


@pytest.fixture(scope="module")
def saved_model(tiny_model_dir, tmp_path_factory) -> Path:
    """A real saved model folder (heads.json, model.safetensors, xstilts_model.json) with an NLI head, untrained."""
    folder = tmp_path_factory.mktemp("saved") / "model"
    MultiHeadModel(load_encoder(str(tiny_model_dir)), {"mnli": HeadSpec("classification", NLI)}).save(folder)
    return folder


def _evaluate_model(model: Path, output: Path, tiny_model_dir: Path, data_dir: Path) -> list[str]:
    return ["evaluate", str(model), "--task", "xnli", "--split", "dev", "--languages", "en", "--max-examples", "4",
            "--output", str(output), "--model", str(tiny_model_dir), "--data-dir", str(data_dir)]


# --- a. a model folder under `xstilts evaluate MODEL_DIR` ---------------------------------------------------------

@pytest.mark.parametrize(("damage", "file", "message"), [
    (lambda m: (m / HEADS_FILE).write_text("{not json"), HEADS_FILE, "not JSON"),
    (lambda m: (m / HEADS_FILE).write_text("[1, 2]"), HEADS_FILE, "holds an array, not an object"),
    (lambda m: (m / HEADS_FILE).write_text("{}"), HEADS_FILE, "no heads"),
    (lambda m: (m / HEADS_FILE).write_text('{"mnli": {"type": "classification"}}'), HEADS_FILE,
     "head 'mnli' is not a task type and a list of labels"),
    (lambda m: (m / HEADS_FILE).write_text('{"mnli": {"type": "regression", "labels": []}}'), HEADS_FILE,
     "head 'mnli' is not a task type"),
    (lambda m: (m / HEADS_FILE).write_text('{"mnli": {"type": "classification", "labels": []}}'), HEADS_FILE,
     "the classification head 'mnli' has no labels"),
    (lambda m: (m / HEADS_FILE).write_text(json.dumps({"nli": {"type": "classification", "labels": NLI}})),
     WEIGHTS_FILE, "the weights do not match the model and its heads.json"),
    (lambda m: (m / WEIGHTS_FILE).write_bytes((m / WEIGHTS_FILE).read_bytes()[:4000]), WEIGHTS_FILE,
     "unreadable weights"),
    (lambda m: (m / WEIGHTS_FILE).write_bytes(os.urandom(3000)), WEIGHTS_FILE, "unreadable weights"),
    (lambda m: (m / SETTINGS_FILE).write_text("\x00garbage"), SETTINGS_FILE,
     "not a JSON object with the model's pooling"),
], ids=["heads-not-json", "heads-array", "heads-empty", "heads-no-labels-key", "heads-unknown-type",
        "heads-empty-labels", "heads-of-another-model", "weights-truncated", "weights-random", "settings-garbage"])
def test_a_damaged_model_folder_is_one_line(damage, file, message, saved_model, tmp_path, tiny_model_dir,
                                            shared_data_dir, capsys):
    model = shutil.copytree(saved_model, tmp_path / "model")
    damage(model)
    _fails(_evaluate_model(model, tmp_path / "out", tiny_model_dir, shared_data_dir), capsys,
           str(model / file), message, "re-run the phase that saved it")
    assert not (tmp_path / "out").exists()


# --- b. a damaged checkpoint on resume --------------------------------------------------------------------------

TRAIN = TrainConfig(max_steps=3, batch_size=16, checkpoint_every=2, eval_every=1, average_from=0.0)


@pytest.fixture(scope="module")
def phase(tiny_model_dir, shared_data_dir):
    """Train a tiny phase (3 steps, a checkpoint with averaged weights at step 2) into a folder."""
    ctx = Context.create(str(tiny_model_dir), load_registry(), shared_data_dir, 32, "fp32")
    features, _ = ctx.rows(TaskData(task="mnli", split="dev", max_examples=32), 1)

    def run(out: Path) -> dict:
        model = MultiHeadModel(load_encoder(ctx.model), {"mnli": HeadSpec("classification", NLI)})
        return train_phase(model, [TrainTask("mnli", CLASSIFICATION, features)], TRAIN, out, seed=1,
                           pad_id=ctx.tokenizer.pad_token_id, precision="fp32", device=torch.device("cpu"))
    return run


@pytest.fixture(scope="module")
def checkpoint(phase, tmp_path_factory) -> Path:
    """A phase folder whose checkpoint (step 2) is genuine."""
    out = tmp_path_factory.mktemp("phase")
    phase(out)
    assert (out / CHECKPOINT_DIR / AVERAGE_FILE).exists()
    return out


def _state(checkpoint: Path) -> dict:
    return load_training_state(checkpoint / CHECKPOINT_DIR / STATE_FILE)


@pytest.mark.parametrize(("damage", "file", "message"), [
    (lambda s, c: torch.save([1, 2], c / STATE_FILE), STATE_FILE, "not a training state (no fingerprint, optimizer"),
    (lambda s, c: torch.save({}, c / STATE_FILE), STATE_FILE, "not a training state (no fingerprint"),
    (lambda s, c: torch.save({k: v for k, v in s.items() if k != "optimizer"}, c / STATE_FILE), STATE_FILE,
     "not a training state (no optimizer)"),
    (lambda s, c: torch.save({k: v for k, v in s.items() if k != "rng"}, c / STATE_FILE), STATE_FILE,
     "not a training state (no rng)"),
    (lambda s, c: torch.save({**s, "optimizer": {"state": {}}}, c / STATE_FILE), STATE_FILE,
     "a damaged training state"),
    (lambda s, c: torch.save({**s, "rng": [torch.zeros(3, dtype=torch.uint8)]}, c / STATE_FILE), STATE_FILE,
     "a damaged training state"),
    (lambda s, c: torch.save({**s, "state": [1]}, c / STATE_FILE), STATE_FILE, "a damaged training state"),
    (lambda s, c: (c / AVERAGE_FILE).write_bytes((c / AVERAGE_FILE).read_bytes()[:3000]), AVERAGE_FILE,
     "unreadable averaged weights"),
], ids=["list", "empty", "no-optimizer", "no-rng", "optimizer-wrong", "rng-wrong", "state-wrong", "average-truncated"])
def test_a_wrongly_shaped_training_state_is_one_line(damage, file, message, checkpoint, phase, tmp_path):
    out = tmp_path / "phase"
    shutil.copytree(checkpoint / CHECKPOINT_DIR, out / CHECKPOINT_DIR)
    damage(_state(checkpoint), out / CHECKPOINT_DIR)
    with pytest.raises(XstiltsError) as excinfo:
        phase(out)
    one_line_error(excinfo, str(out / CHECKPOINT_DIR / file), message,
                   f"delete {out / CHECKPOINT_DIR} to start this phase over")


# --- g. each rank resumes with its own random state ------------------------------------------------------------------

def test_each_rank_saves_and_restores_its_own_random_state(tmp_path, monkeypatch):
    """Two ranks simulated: their states are gathered (rank 0 saves the list), and each restores its own."""
    with torch.random.fork_rng(devices=[]):  # the test's draws leave this process's random state as it was
        _two_ranks(tmp_path, monkeypatch)


def _two_ranks(tmp_path: Path, monkeypatch) -> None:
    """The body of the test above: ranks 0 and 1 drew from seeds 100 and 101."""
    states = []
    for rank in range(2):
        torch.manual_seed(100 + rank)
        states.append(torch.get_rng_state())
    expected = []
    for state in states:
        torch.set_rng_state(state)
        expected.append(torch.rand(4))
    monkeypatch.setattr(torch.distributed, "all_gather_object", lambda found, value: found.__setitem__(
        slice(None), [state.clone() for state in states]))
    cpu = torch.device("cpu")
    gathered = rank_rng_states(Ranks(0, 2), cpu)
    assert list(gathered) == ["rng"]  # no device generator on a CPU
    assert [torch.equal(a, b) for a, b in zip(gathered["rng"], states)] == [True, True]
    path = tmp_path / STATE_FILE
    torch.save(gathered, path)
    saved = load_training_state(path)
    for rank in (1, 0):
        torch.manual_seed(7)  # whatever this process drew since
        restore_rng(saved, Ranks(rank, 2), path, cpu)
        assert torch.equal(torch.rand(4), expected[rank])
    alone = rank_rng_states(Ranks(), cpu)["rng"]  # one process: a list of one
    assert len(alone) == 1 and torch.equal(alone[0], torch.get_rng_state())
    restore_rng({"rng": states[1]}, Ranks(), path, cpu)  # a checkpoint from before the list: one process only
    assert torch.equal(torch.rand(4), expected[1])
    for wrong in (states[0], saved["rng"][:1], "rng"):
        with pytest.raises(XstiltsError) as excinfo:
            restore_rng({"rng": wrong}, Ranks(1, 2), path, cpu)
        one_line_error(excinfo, str(path), "holds no random state for each of 2 process(es)", "delete")


def test_a_gpu_checkpoint_holds_and_restores_the_devices_random_state(tmp_path, monkeypatch):
    """On a GPU, dropout draws from the device's generator: its state is saved beside the CPU's and restored
    to the same device; a CPU checkpoint resumed on a GPU leaves the device's generator alone. (No GPU here:
    torch.cuda's state calls are replaced by a generator of this process standing in for the device's.)"""
    gpu, standing_in = torch.device("cuda", 0), torch.Generator().manual_seed(11)
    calls = []
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: calls.append(("get", device)) or
                        standing_in.get_state())
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: calls.append(("set", device)) or
                        standing_in.set_state(state))
    with torch.random.fork_rng(devices=[]):
        saved = rank_rng_states(Ranks(), gpu)
        path = tmp_path / STATE_FILE
        torch.save(saved, path)
        expected = torch.rand(3, generator=standing_in)
        standing_in.manual_seed(99)  # the device drew other numbers since
        restore_rng(load_training_state(path), Ranks(), path, gpu)
        assert torch.equal(torch.rand(3, generator=standing_in), expected)
        assert calls == [("get", gpu), ("set", gpu)]
        restore_rng({"rng": saved["rng"]}, Ranks(), path, gpu)  # made on a CPU: the device's state untouched
        assert calls == [("get", gpu), ("set", gpu)]
        with pytest.raises(XstiltsError) as excinfo:
            restore_rng({**saved, "cuda_rng": "damaged"}, Ranks(), path, gpu)
        one_line_error(excinfo, str(path), "holds no random state for each of 1 process(es)")


# --- c. a study's and a run's own files ------------------------------------------------------------------------------

@pytest.mark.parametrize(("content", "message"), [
    ("{study", "not JSON"), ("[]", "holds an array, not an object"), ("{}", "key 'name': Field required")])
def test_a_damaged_study_json_is_one_line(content, message, tmp_path, capsys):
    (tmp_path / "study.json").write_text(content)
    _fails(["evaluate", str(tmp_path), "--task", "xnli"], capsys, str(tmp_path / "study.json"), message,
           "run `xstilts study STUDY.yaml --output")


@pytest.mark.parametrize(("content", "message"), [
    ("\x89PNG", "not JSON"), ('"nodes"', "holds a string, not an object"),
    ('{"../../elsewhere": {"label": "x"}}', "'../../elsewhere' cannot name a file or folder"),
    ('{"eval-0123456789abcdef": 3}', "node eval-0123456789abcdef: no label")])
def test_a_damaged_graph_json_is_one_line(content, message, tmp_path, capsys):
    (tmp_path / "graph.json").write_text(content)
    _fails(["status", str(tmp_path)], capsys, str(tmp_path / "graph.json"), message,
           "run `xstilts study STUDY.yaml --output")


@pytest.mark.parametrize("content", ["{}", "[]", '{"seconds": 3}'])
def test_a_result_that_is_no_result_counts_as_not_done(content, tmp_path, capsys):
    node = tmp_path / "nodes" / "eval-0123456789abcdef"
    node.mkdir(parents=True)
    (node / DONE_FILE).write_text("")
    (node / RESULT_FILE).write_text(content)
    (tmp_path / "graph.json").write_text(json.dumps({node.name: {"label": "eval x", "parents": []}}))
    assert not is_done(node)
    assert main(["status", str(tmp_path)]) == 0
    assert "todo     eval-0123456789abcdef" in capsys.readouterr().out and (node / DONE_FILE).exists()
    with pytest.raises(XstiltsError) as excinfo:
        read_result(node)
    one_line_error(excinfo, str(node / RESULT_FILE), f"delete {node} to compute this phase again")


def test_a_garbage_metrics_json_is_rewritten_not_read(tmp_path, tiny_model_dir, shared_data_dir, capsys):
    """A run's metrics.json is written from its phases' results and never read: `xstilts evaluate RUN_DIR` over
    a garbage one scores the added evaluation and writes the file anew, with every evaluation."""
    config = tiny_run(tiny_model_dir, shared_data_dir, eval_examples=4)
    output = tmp_path / "run"
    run(parse_config(config, "test"), output)
    (output / "metrics.json").write_text("\x00garbage")
    assert main(["evaluate", str(output), "--task", "americasnli", "--split", "dev", "--languages", "aym",
                 "--max-examples", "4"]) == 0
    evaluation = json.loads((output / "metrics.json").read_text())["evaluation"]
    assert evaluation["xnli"]["dev"]["n"] == {"en": 4} and evaluation["americasnli"]["dev"]["n"] == {"aym": 4}
    capsys.readouterr()


# --- d, e, f. task files ---------------------------------------------------------------------------------------------

LOCAL = {"format": "tsv", "files": {"test": "xnli/test-{language}.tsv"},
         "columns": {"text_a": "premise", "text_b": "hypothesis", "label": "label"}}
TASK = {"name": "my-nli", "labels": list(NLI), "languages": ["en"], "local": LOCAL}
HUB = {"path": "facebook/xnli", "name": "{language}", "splits": {"test": "test"},
       "columns": {"text_a": "premise", "text_b": "hypothesis", "label": "label"}}


def _task_file(folder: Path, **changes) -> Path:
    path = folder / "task.yaml"
    path.write_text(yaml.safe_dump({**TASK, **changes}, allow_unicode=True))
    return path


@pytest.mark.parametrize(("changes", "key", "message"), [
    ({"name": "my/nli"}, "name", "cannot name a file or folder"),
    ({"name": ".."}, "name", "cannot name a file or folder"),
    ({"name": "/tmp/nli"}, "name", "cannot name a file or folder"),
    ({"name": "my\x00nli"}, "name", "cannot name a file or folder"),
    ({"name": "my\x1bnli"}, "name", "cannot name a file or folder"),
    ({"name": "mnli.v2"}, "name", "a task's name names its head, which cannot hold a '.'"),
    ({"languages": ["en", "../sw"]}, "languages.1", "cannot name a file or folder"),
    ({"languages": ["/etc"]}, "languages.0", "cannot name a file or folder"),
    ({"languages": ["s\tw"]}, "languages.0", "cannot name a file or folder"),
], ids=["slash", "dotdot", "absolute", "nul", "escape", "dot", "lang-dotdot", "lang-absolute", "lang-tab"])
def test_task_names_and_languages_stay_one_file_name(changes, key, message, tmp_path):
    path = _task_file(tmp_path, **changes)
    with pytest.raises(XstiltsError) as excinfo:
        load_task_file(path)
    one_line_error(excinfo, str(path), f"key {key!r}", message)


@pytest.mark.parametrize(("hub", "message"), [
    ({"path": "../outside"}, "is not a Hub identifier (owner/name or name)"),
    ({"path": "owner/name/deeper"}, "is not a Hub identifier"),
    ({"path": "./in/../../out"}, "is not a Hub identifier"),
    ({"path": "/srv/datasets/xnli"}, "is an absolute folder; set `absolute_paths: true` under `hub:`"),
    ({"path": "~/datasets/xnli"}, "is an absolute folder"),
])
def test_a_hub_path_is_a_hub_identifier_or_an_allowed_folder(hub, message, tmp_path):
    path = _task_file(tmp_path, local=None, hub={**HUB, **hub})
    with pytest.raises(XstiltsError) as excinfo:
        load_task_file(path)
    one_line_error(excinfo, str(path), "key 'hub'", message)


def test_a_hub_folder_is_read_only_where_allowed(tmp_path, monkeypatch):
    """`./FOLDER` is inside the data folder; an absolute folder with `absolute_paths: true`; a Hub identifier that
    is also a folder here (which `datasets` would read instead) is refused."""
    data = tmp_path / "data"
    (data / "xnli-saved").mkdir(parents=True)
    spec = load_task_file(_task_file(tmp_path, local=None, hub={**HUB, "path": "./xnli-saved"}))
    assert hub_location(spec, data) == str(data / "xnli-saved")
    with pytest.raises(XstiltsError) as excinfo:
        hub_location(spec, tmp_path / "elsewhere")
    one_line_error(excinfo, "xnli-saved: folder not found (hub.path of task 'my-nli')")
    with pytest.raises(XstiltsError) as excinfo:
        hub_location(spec, None)
    one_line_error(excinfo, "is inside the data folder: set --data-dir")
    spec = load_task_file(_task_file(tmp_path, local=None, hub={**HUB, "path": str(data), "absolute_paths": True}))
    assert hub_location(spec, None) == str(data)
    spec = load_task_file(_task_file(tmp_path, local=None, hub=HUB))
    assert hub_location(spec, None) == "facebook/xnli"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "facebook" / "xnli").mkdir(parents=True)
    with pytest.raises(XstiltsError) as excinfo:
        hub_location(spec, None)
    one_line_error(excinfo, "hub.path 'facebook/xnli' is also a folder or file in", "run xstilts from another folder")


@pytest.mark.parametrize(("changes", "where", "placeholder"), [
    ({"local": {**LOCAL, "files": {"test": "xnli/test-{lang}.tsv"}}}, "files.test", "{lang}"),
    ({"local": {**LOCAL, "files": {"test": "xnli/test-{}.tsv"}}}, "files.test", "{}"),
    ({"local": {**LOCAL, "columns": {"text_a": 0, "text_b": 1}, "header": False,
                "labels_from": {"file": "xnli/test-{lang}.tsv", "column": 2}}}, "labels_from.file", "{lang}"),
    ({"local": {"format": "text", "files": {"test": "t/{language}.txt"}, "aligned_files": {"test": "t/{0}.txt"},
                "columns": {"text_a": 0, "text_b": 1}}, "type": "retrieval", "labels": []},
     "aligned_files.test", "{0}"),
    ({"local": None, "hub": {**HUB, "name": "xnli.{language_code}"}}, "name", "{language_code}"),
], ids=["files-lang", "files-empty", "labels-from", "aligned-files", "hub-name"])
def test_an_unknown_placeholder_fails_when_the_task_is_loaded(changes, where, placeholder, tmp_path):
    path = _task_file(tmp_path, **changes)
    with pytest.raises(XstiltsError) as excinfo:
        load_task_file(path)
    one_line_error(excinfo, str(path), f"{where}: unknown placeholder {placeholder}", "the only one is {language}")


# --- nothing written outside the output, cache and data folders -----------------------------------------------------

def _listing(root: Path, depth: int, skip: set[str]) -> dict[str, tuple[int, int]]:
    """Every entry under `root` down to `depth` levels, with its modification time and size; `skip`: names of
    folders not entered (caches, the output)."""
    found = {}
    for folder, folders, files in os.walk(root):
        level = len(Path(folder).relative_to(root).parts)
        folders[:] = [] if level >= depth else [name for name in folders if name not in skip]
        for name in [*folders, *files]:
            stat = (Path(folder) / name).lstat()  # a link as itself (pytest's `...current` links)
            found[str(Path(folder) / name)] = (stat.st_mtime_ns, stat.st_size)
    return found


def test_an_evaluation_writes_only_into_its_output(saved_model, tmp_path, tiny_model_dir, shared_data_dir,
                                                   monkeypatch, capsys):
    """`xstilts evaluate MODEL_DIR --output DIR` run from an empty folder with an empty $HOME: the folder stays
    empty, $HOME gains at most its cache, and nothing appears or changes in the repository or the tests'
    temporary folders (the model's included) but DIR."""
    import xstilts.evaluate  # noqa: F401  (imported before the listing: its bytecode cache is not the command's)

    repo = Path(__file__).resolve().parents[1]
    cwd, home, output = tmp_path / "cwd", tmp_path / "home", tmp_path / "out"
    cwd.mkdir()
    home.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("HOME", str(home))
    # not entered: code caches, and the default output folders, which runs beside the tests may be writing
    not_entered = {".git", ".venv", "__pycache__", ".pytest_cache", "studies-out", "runs"}

    def state() -> tuple[set[str], dict[str, tuple[int, int]]]:
        return set(_listing(repo, 3, not_entered)), _listing(tmp_path.parent, 8, {output.name, ".cache"})

    before = state()
    assert main(_evaluate_model(saved_model, output, tiny_model_dir, shared_data_dir)) == 0
    after = state()
    assert after[0] == before[0]  # no new file in the repository
    changed = {path for path in after[1].keys() | before[1].keys() if after[1].get(path) != before[1].get(path)}
    assert changed <= {str(tmp_path), str(home), str(home / ".cache")}  # `out` made in tmp_path; the cache
    assert list(cwd.iterdir()) == []
    assert json.loads((output / RESULT_FILE).read_text())["languages"]["en"]["n"] == 4
    capsys.readouterr()
