"""Training with a tiny random BERT (real XLM-R tokenizer) on small slices of the real data: learning,
determinism, exact resume after SIGKILL, vocabulary trimming and what the target phase carries over."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from xstilts.attention import CPU_TRAINING_ATTENTION, training_attention
from xstilts.cli import main
from xstilts.config import TaskData, TrainConfig, parse_config
from xstilts.errors import XstiltsError
from xstilts.evaluation import predict
from xstilts.features import collate
from xstilts.model import HEADS_FILE, WEIGHTS_FILE, HeadSpec, MultiHeadModel, load_checkpoint, load_encoder, load_trained
from xstilts.phases import SPILLED_EMBEDDINGS_FILE, Context, _carried_heads, train_node
from xstilts import memory
from xstilts.memory import training_memory_bytes
from xstilts.pipeline import run
from xstilts.tasks import load_registry
from xstilts.task_types import read_split
from xstilts.precision import autocast
from xstilts.task_types.classification import TYPE as CLASSIFICATION
from xstilts.training import TrainTask, load_training_state, train_phase
from xstilts.vocab import VocabTrim
from helpers import (BF16_ROUNDOFF, FP32_ROUNDOFF, assert_relative_error, assert_same_gradients, learning_run,
                     one_line_error, training_pass)

pytestmark = pytest.mark.usefixtures("single_thread")

NLI = ["entailment", "neutral", "contradiction"]
NLI_HEAD = HeadSpec("classification", tuple(NLI))
EMBEDDINGS = "encoder.embeddings.word_embeddings.weight"


@pytest.fixture(scope="module")
def ctx(tiny_model_dir, shared_data_dir) -> Context:
    """One context (tokenized splits cached) over the built-in tasks and the shared data."""
    return Context.create(str(tiny_model_dir), load_registry(), shared_data_dir, 64, "fp32")


def _weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(str(directory / WEIGHTS_FILE))


def _assert_same_weights(a: Path, b: Path) -> None:
    left, right = _weights(a), _weights(b)
    assert left.keys() == right.keys()
    for key in left:
        assert torch.equal(left[key], right[key]), key


def _history(result: dict) -> list[tuple]:
    return [(h["step"], h["dev"], h["score"], h["loss"]) for h in result["metrics"]["history"]]


# --- learning -----------------------------------------------------------------------------------------------

FILLER = "the a house river walks quickly under green old table window runs city small bright cold music book".split()


def _keyword_rows(n: int, seed: int) -> str:
    """The label is given by one keyword at a random position among random filler words."""
    rng = random.Random(seed)
    lines = ["text\tlabel"]
    for i in range(n):
        label = i % 2
        words = rng.choices(FILLER, k=rng.randint(4, 10))
        words.insert(rng.randint(0, len(words)), ["terrible", "excellent"][label])
        lines.append(" ".join(words) + "\t" + ["negative", "positive"][label])
    return "\n".join(lines) + "\n"


def _keyword_task(root: Path) -> tuple[Path, Path]:
    tasks, data = root / "tasks", root / "data"
    tasks.mkdir(parents=True)
    data.mkdir()
    (tasks / "keyword.yaml").write_text(
        "name: keyword\nlabels: [negative, positive]\n"
        "local: {format: tsv, files: {train: train.tsv, dev: dev.tsv}, columns: {text_a: text, label: label}}\n")
    (data / "train.tsv").write_text(_keyword_rows(128, 1))
    (data / "dev.tsv").write_text(_keyword_rows(64, 2))
    return tasks, data


def _dev_loss(model: MultiHeadModel, tokenizer, spec, examples) -> float:
    features = CLASSIFICATION.featurize(examples, tokenizer, 64, spec, "en")
    batch = collate(features, np.arange(len(features)), tokenizer.pad_token_id)
    labels = batch.pop("labels")
    model.eval()
    with torch.no_grad():
        return float(torch.nn.functional.cross_entropy(model("keyword", **batch), labels))


def test_learns_a_keyword_task_from_a_user_task_folder(tmp_path, tiny_model_dir):
    tasks, data = _keyword_task(tmp_path)
    config = parse_config(learning_run(tiny_model_dir, data, tasks, "keyword"), "test")
    metrics = run(config, tmp_path / "run")
    history = metrics["target"]["metrics"]["history"]
    assert [h["step"] for h in history] == list(range(4, 41, 4))
    assert history[0]["score"] <= 0.8  # not solved from the start
    assert history[-1]["score"] >= 0.95  # chance is 0.5
    assert history[-1]["loss"] < history[0]["loss"] - 0.2  # training loss (EMA) goes down
    assert metrics["evaluation"]["keyword"]["dev"]["en"] >= 0.95
    # the dev loss of the trained model is far below that of the untrained one (~ln 2)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    spec = load_registry([tasks]).get("keyword")
    dev = read_split(spec, "dev", "en", data).examples
    torch.manual_seed(0)
    untrained = MultiHeadModel(load_encoder(str(tiny_model_dir)), {"keyword": HeadSpec("classification", tuple(spec.labels))})
    before = _dev_loss(untrained, tokenizer, spec, dev)
    after = _dev_loss(load_trained(str(tiny_model_dir), tmp_path / "run" / "target"), tokenizer, spec, dev)
    assert before > 0.6 and after < 0.5 * before, (before, after)


# --- determinism ----------------------------------------------------------------------------------------------


def _mnli_config(model: Path, data_dir: Path, seed: int, **train) -> dict:
    return {
        "model": str(model), "data_dir": str(data_dir.resolve()), "precision": "fp32", "max_length": 64, "seed": seed,
        "target": {"task": {"task": "mnli", "max_examples": 96},
                   "train": {"max_steps": 6, "lr": 1e-3, "batch_size": 16, "eval_every": 2, **train}},
        "evaluate": [{"task": "xnli", "split": "dev", "languages": ["en", "sw"], "max_examples": 50}],
    }


@pytest.mark.numeric
def test_same_seed_same_result_other_seed_differs(tmp_path, tiny_model_dir, shared_data_dir):
    """Exact by construction: one process, the same shapes, kernels and thread count (conftest pins it)."""
    results = {}
    for name, seed in [("a", 7), ("b", 7), ("c", 8)]:
        results[name] = run(parse_config(_mnli_config(tiny_model_dir, shared_data_dir, seed), "test"), tmp_path / name)
    a, b, c = results["a"], results["b"], results["c"]
    _assert_same_weights(tmp_path / "a" / "target", tmp_path / "b" / "target")
    assert _history(a["target"]) == _history(b["target"])
    assert a["evaluation"] == b["evaluation"]
    for lang in ("en", "sw"):
        path = Path("eval-xnli-dev") / "predictions" / f"{lang}.csv"
        assert (tmp_path / "a" / path).read_text() == (tmp_path / "b" / path).read_text()
    # another seed: another subsample, batch order and initialisation
    weights_a, weights_c = _weights(tmp_path / "a" / "target"), _weights(tmp_path / "c" / "target")
    assert not torch.equal(weights_a["heads.mnli.out_proj.weight"], weights_c["heads.mnli.out_proj.weight"])
    assert not torch.equal(weights_a["encoder.encoder.layer.0.attention.self.query.weight"],
                           weights_c["encoder.encoder.layer.0.attention.self.query.weight"])
    assert _history(a["target"]) != _history(c["target"])


# --- resume after SIGKILL -----------------------------------------------------------------------------------


@pytest.mark.numeric
def test_resume_after_sigkill_is_exact(tmp_path, tiny_model_dir, shared_data_dir, capsys):
    # eval_every 1 on the 1,000 MNLI dev rows makes each step slow enough to be killed mid-phase; the
    # trimmed trainable vocabulary and the running checkpoint average must both survive the kill
    config = _mnli_config(tiny_model_dir, shared_data_dir, 11, checkpoint_every=2, eval_every=1,
                          freeze_embeddings=False, average_from=0.3)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))

    # 1. interrupted: SIGKILL as soon as the target phase has a checkpoint. Exact by construction: the resumed
    # steps see the same batches, weights, optimizer and random states, through the same kernels, as the child
    # and this process run their phases on the same number of threads (XSTILTS_CPU_THREADS, set by conftest)
    interrupted = tmp_path / "interrupted"
    with open(tmp_path / "killed.log", "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "xstilts.cli", "run", str(path), "--output", str(interrupted)],
                                   cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 240
        while process.poll() is None and time.monotonic() < deadline:
            # the run's target phase is a node under nodes/; the `target` link appears when the run finishes
            states = list(interrupted.glob("nodes/target-*/checkpoint/training_state.pt"))
            if states:
                process.send_signal(signal.SIGKILL)
                state = states[0]
                break
            time.sleep(0.005)
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, (tmp_path / "killed.log").read_text()[-2000:]
    assert not (state.parents[1] / "DONE").exists() and not (interrupted / "target").exists()
    saved_step = torch.load(state, weights_only=False)["state"]["step"]
    assert saved_step in (2, 4)

    # 2. the same command again resumes from the checkpoint and finishes
    capsys.readouterr()
    assert main(["run", str(path), "--output", str(interrupted)]) == 0
    err = capsys.readouterr().err
    assert f"target: resuming at step {saved_step}/6" in err, err
    assert (interrupted / "target" / "DONE").exists()
    assert not (interrupted / "target" / "checkpoint").exists()

    # 3. an uninterrupted run with the same seed
    assert main(["run", str(path), "--output", str(tmp_path / "straight")]) == 0
    resumed = json.loads((interrupted / "target" / "result.json").read_text())
    straight = json.loads((tmp_path / "straight" / "target" / "result.json").read_text())
    assert [h["step"] for h in straight["metrics"]["history"]] == [1, 2, 3, 4, 5, 6]
    assert _history(resumed) == _history(straight)
    assert straight["metrics"]["selected"] == "average of 5"  # steps 2..6
    for key in ("steps", "best_step", "best_dev", "train_examples", "vocabulary_in_training", "average_dev", "selected"):
        assert resumed["metrics"][key] == straight["metrics"][key], key
    _assert_same_weights(interrupted / "target", tmp_path / "straight" / "target")
    assert (json.loads((interrupted / "metrics.json").read_text())["evaluation"]
            == json.loads((tmp_path / "straight" / "metrics.json").read_text())["evaluation"])


def test_checkpoint_from_other_settings_is_refused(tmp_path, ctx, capsys):
    features, _ = ctx.rows(TaskData(task="mnli", max_examples=32), 1)
    tasks = [TrainTask("mnli", CLASSIFICATION, features)]
    train = TrainConfig(max_steps=3, batch_size=16, checkpoint_every=2, lr=1e-3)

    def phase(config: TrainConfig) -> dict:
        torch.manual_seed(1)
        model = MultiHeadModel(load_encoder(ctx.model), {"mnli": NLI_HEAD})
        return train_phase(model, tasks, config, tmp_path, seed=1, pad_id=ctx.tokenizer.pad_token_id,
                           precision="fp32", device=torch.device("cpu"))

    assert phase(train)["steps"] == 3
    # train_phase leaves its last checkpoint (step 2) for the caller to remove
    assert load_training_state(tmp_path / "checkpoint" / "training_state.pt")["state"]["step"] == 2
    for other in (train.model_copy(update={"lr": 2e-3}), train.model_copy(update={"max_steps": 4})):
        with pytest.raises(XstiltsError) as excinfo:
            phase(other)
        message = str(excinfo.value)
        assert "\n" not in message and str(tmp_path / "checkpoint") in message and "other settings" in message
    # with the same settings it resumes
    capsys.readouterr()
    assert phase(train)["steps"] == 3
    assert "resuming at step 2/3" in capsys.readouterr().err


class _RunsCode:
    """Unpickling this calls os.system: what a crafted checkpoint from someone else could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_crafted_or_damaged_training_state_is_refused(tmp_path, ctx):
    features, _ = ctx.rows(TaskData(task="mnli", max_examples=32), 1)
    train = TrainConfig(max_steps=3, batch_size=16, checkpoint_every=2)

    def phase() -> dict:
        model = MultiHeadModel(load_encoder(ctx.model), {"mnli": NLI_HEAD})
        return train_phase(model, [TrainTask("mnli", CLASSIFICATION, features)], train, tmp_path, seed=1,
                           pad_id=ctx.tokenizer.pad_token_id, precision="fp32", device=torch.device("cpu"))

    phase()
    state = tmp_path / "checkpoint" / "training_state.pt"
    genuine = state.read_bytes()
    marker = tmp_path / "code-ran"
    torch.save({"state": _RunsCode(marker)}, state)
    with pytest.raises(XstiltsError, match=r"training_state.pt: refused: the file holds objects that would run code"):
        phase()
    assert not marker.exists()
    state.write_bytes(genuine[: len(genuine) // 2])
    with pytest.raises(XstiltsError, match=r"training_state.pt: unreadable checkpoint .*; delete .*checkpoint to start"):
        phase()
    state.write_bytes(genuine)
    weights = tmp_path / "checkpoint" / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:500])
    with pytest.raises(XstiltsError, match=r"unreadable checkpoint weights .*; delete .*checkpoint to start"):
        phase()


def test_non_finite_numbers_stop_before_training(tmp_path, ctx):
    with pytest.raises(XstiltsError, match=r"test: key 'target.train.lr': Input should be a finite number"):
        parse_config({"target": {"task": {"task": "mnli"}, "train": {"lr": float("inf")}},
                      "evaluate": [{"task": "xnli"}]}, "test")
    features, _ = ctx.rows(TaskData(task="mnli", max_examples=64), 1)
    model = MultiHeadModel(load_encoder(ctx.model), {"mnli": NLI_HEAD})
    with pytest.raises(XstiltsError, match=r"the loss is nan at step \d+ \(lr 1e\+30\); stopped before the weights"):
        train_phase(model, [TrainTask("mnli", CLASSIFICATION, features)], TrainConfig(max_steps=20, batch_size=8, lr=1e30,
                                                                      max_grad_norm=None), tmp_path, seed=1,
                    pad_id=ctx.tokenizer.pad_token_id, precision="fp32", device=torch.device("cpu"))
    assert not (tmp_path / "best").exists()  # nothing was saved from the diverged run


# --- vocabulary trimming ------------------------------------------------------------------------------------


@pytest.mark.numeric
def test_vocabulary_trimming_is_equivalent(tmp_path, ctx, tiny_model_dir):
    """Exact by construction: both runs do the same operations on the same values (row lookups, the same matmul
    shapes, row-local embedding gradients, element-wise AdamW); only the embedding matrix's row count differs."""
    tasks = [TaskData(task="mnli", max_examples=64)]
    # no clipping: its global norm sums the whole matrix in an order that depends on the row count, and a
    # last-bit difference in the clipped gradients can become an lr-sized AdamW step (see the padding test)
    train = TrainConfig(max_steps=4, batch_size=16, eval_every=2, lr=1e-3, select_best=False, freeze_embeddings=False,
                        max_grad_norm=None)
    trimmed = train_node(ctx, tmp_path / "trim", tasks=tasks, train=train, seed=5)
    full = train_node(dataclasses.replace(ctx, trim_vocab=False), tmp_path / "full", tasks=tasks, train=train, seed=5)
    assert "vocabulary_in_training" not in full["metrics"]

    assert [h["step"] for h in trimmed["metrics"]["history"]] == [2, 4]
    assert _history(trimmed) == _history(full)

    # which rows were trained: every piece of the train and dev rows, plus the special tokens
    train_rows, _ = ctx.rows(tasks[0], 5)
    dev_rows, _ = ctx.rows(tasks[0].model_copy(update={"max_examples": None}), 5, split="dev")
    trim = VocabTrim.from_features([train_rows, dev_rows], 250037, ctx.tokenizer.all_special_ids)
    assert trimmed["metrics"]["vocabulary_in_training"] == len(trim.kept)
    assert sorted(p.name for p in (tmp_path / "trim").iterdir()) == sorted(p.name for p in (tmp_path / "full").iterdir())
    assert 1000 < len(trim.kept) < 20000
    kept = torch.zeros(250037, dtype=torch.bool)
    kept[torch.from_numpy(trim.kept)] = True

    base = load_file(str(tiny_model_dir / "model.safetensors"))["embeddings.word_embeddings.weight"]
    w_trim, w_full = _weights(tmp_path / "trim"), _weights(tmp_path / "full")
    assert w_trim[EMBEDDINGS].shape == w_full[EMBEDDINGS].shape == base.shape == (250037, 32)
    # untouched rows are exactly the base model's; trained rows moved
    assert torch.equal(w_trim[EMBEDDINGS][~kept], base[~kept])
    changed = (w_trim[EMBEDDINGS] != base).any(dim=1)
    assert not changed[~kept].any()
    assert changed[kept].float().mean() > 0.99
    # the rows both runs train are equal, and so is every other parameter
    assert torch.equal(w_trim[EMBEDDINGS][kept], w_full[EMBEDDINGS][kept])
    for key in w_trim:
        if key != EMBEDDINGS:
            assert torch.equal(w_trim[key], w_full[key]), key
    # without trimming, AdamW's decoupled weight decay shrinks the unused rows (and only shrinks them)
    ratio = w_full[EMBEDDINGS][~kept] / base[~kept]
    assert ratio.max() <= 1.0 and ratio.min() > 0.99


def test_frozen_embeddings_stay_exactly_as_pretrained(tmp_path, ctx, tiny_model_dir):
    tasks = [TaskData(task="mnli", max_examples=64)]
    train = TrainConfig(max_steps=3, batch_size=16, lr=1e-3, freeze_embeddings=True)
    result = train_node(ctx, tmp_path / "frozen", tasks=tasks, train=train, seed=5)
    # trimmed all the same (the full matrix waits on disk while the phase trains), then put back whole
    assert 1000 < result["metrics"]["vocabulary_in_training"] < 20000
    assert not (tmp_path / "frozen" / SPILLED_EMBEDDINGS_FILE).exists()
    base = load_file(str(tiny_model_dir / "model.safetensors"))
    trained = _weights(tmp_path / "frozen")
    assert torch.equal(trained[EMBEDDINGS], base["embeddings.word_embeddings.weight"])
    # everything else trains, position embeddings included
    for key in ("embeddings.position_embeddings.weight", "encoder.layer.0.attention.self.query.weight"):
        assert not torch.equal(trained[f"encoder.{key}"], base[key]), key


# --- checkpoint averaging -----------------------------------------------------------------------------------


def test_checkpoint_average_is_the_mean_of_the_snapshots(tmp_path, ctx):
    features, _ = ctx.rows(TaskData(task="mnli", max_examples=48), 1)
    dev, _ = ctx.rows(TaskData(task="mnli", max_examples=32), 0, split="dev")
    tasks = [TrainTask("mnli", CLASSIFICATION, features, dev)]

    def phase(out: Path, **settings) -> tuple[dict, dict[str, torch.Tensor]]:
        torch.manual_seed(1)
        model = MultiHeadModel(load_encoder(ctx.model), {"mnli": NLI_HEAD})
        config = TrainConfig(max_steps=4, batch_size=16, lr=1e-3, eval_every=2, checkpoint_every=2, **settings)
        metrics = train_phase(model, tasks, config, out, seed=1, pad_id=ctx.tokenizer.pad_token_id,
                              precision="fp32", device=torch.device("cpu"))
        return metrics, {k: v.detach().clone() for k, v in model.state_dict().items()}

    plain, last = phase(tmp_path / "plain", select_best=False)
    at_step_2 = _weights(tmp_path / "plain" / "checkpoint")  # the checkpoint a phase leaves behind: step 2
    averaged, mean = phase(tmp_path / "averaged", average_from=0.5)  # snapshots at steps 2 and 4
    assert plain["selected"] == "last" and averaged["selected"] == "average of 2"
    assert _history({"metrics": plain}) == _history({"metrics": averaged})  # averaging does not touch the training itself
    for key, value in mean.items():  # exact: the average's own arithmetic, a sum of the two snapshots halved
        assert torch.equal(value, (at_step_2[key] + last[key]) / 2), key
    assert not torch.equal(mean["heads.mnli.out_proj.weight"], last["heads.mnli.out_proj.weight"])
    # its dev accuracy is measured and reported
    model = MultiHeadModel(load_encoder(ctx.model), {"mnli": NLI_HEAD})
    model.load_state_dict(mean)
    expected = float((predict(model, "mnli", dev, ctx.tokenizer.pad_token_id, "fp32", torch.device("cpu")) == dev.labels).mean())
    assert averaged["average_dev"] == expected


# --- what the target phase carries over ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def intermediate_dirs(ctx, tmp_path_factory) -> dict[str, Path]:
    """Intermediate phases on SNLI (same labels as MNLI) and on QQP (other labels)."""
    root = tmp_path_factory.mktemp("intermediate")
    train = TrainConfig(max_steps=3, batch_size=16, lr=1e-3, eval_every=3)
    for task in ("snli", "qqp"):
        train_node(ctx, root / task, tasks=[TaskData(task=task, max_examples=48)], train=train, seed=2)
    return {"snli": root / "snli", "qqp": root / "qqp"}


def _untrained_target(ctx, out: Path, parent: Path, carry: str) -> dict[str, torch.Tensor]:
    """The target model as it starts: one step with a vanishing learning rate leaves the weights as they were."""
    train = TrainConfig(max_steps=1, batch_size=8, lr=1e-30, warmup_ratio=0.0, weight_decay=0.0)
    train_node(ctx, out, tasks=[TaskData(task="mnli", max_examples=8)], train=train, seed=2, parent=parent,
               carry=carry)
    return _weights(out)


def _head(weights: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    prefix = f"heads.{name}."
    return {key[len(prefix):]: value for key, value in weights.items() if key.startswith(prefix)}


def _encoder(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: value for key, value in weights.items() if key.startswith("encoder.")}


def _close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    assert a.keys() == b.keys() and a
    return all(torch.allclose(a[k], b[k], rtol=0, atol=1e-12) for k in a)


def test_carry_encoder_and_head(ctx, tmp_path, intermediate_dirs):
    parent = intermediate_dirs["snli"]
    assert json.loads((parent / HEADS_FILE).read_text()) == {"snli": {"type": "classification", "labels": NLI}}
    assert _carried_heads(parent, {"mnli": NLI_HEAD}) == {"mnli": "snli"}
    inter = _weights(parent)
    # the loader copies the intermediate head under the target's name, exactly
    loaded = load_checkpoint(ctx.model, parent, {"mnli": NLI_HEAD}, {"mnli": "snli"})
    assert loaded.labels == {"mnli": NLI}
    state = {k: v.detach() for k, v in loaded.state_dict().items()}
    for key, value in _head(inter, "snli").items():
        assert torch.equal(state[f"heads.mnli.{key}"], value), key
    for key, value in _encoder(inter).items():
        assert torch.equal(state[key], value), key
    # and the target phase starts from it
    target = _untrained_target(ctx, tmp_path / "target", parent, "encoder_and_head")
    assert set(_head(target, "mnli")) and not _head(target, "snli")
    assert _close(_head(target, "mnli"), _head(inter, "snli"))
    assert _close(_encoder(target), _encoder(inter))


def test_carry_encoder_gives_a_fresh_head(ctx, tmp_path, intermediate_dirs):
    parent = intermediate_dirs["snli"]
    inter = _weights(parent)
    loaded = load_checkpoint(ctx.model, parent, {"mnli": NLI_HEAD}, {})
    state = {k: v.detach() for k, v in loaded.state_dict().items()}
    for key, value in _encoder(inter).items():
        assert torch.equal(state[key], value), key
    fresh = {key[len("heads.mnli."):]: value for key, value in state.items() if key.startswith("heads.mnli.")}
    assert not any(torch.equal(fresh[key], value) for key, value in _head(inter, "snli").items())
    target = _untrained_target(ctx, tmp_path / "target", parent, "encoder")
    assert _close(_encoder(target), _encoder(inter))
    assert not _close(_head(target, "mnli"), _head(inter, "snli"))
    # a fresh head is initialised like any new head, from the run's seed
    torch.manual_seed(2)
    expected = MultiHeadModel(load_encoder(ctx.model), {"mnli": NLI_HEAD}).heads["mnli"].state_dict()
    assert _close(_head(target, "mnli"), dict(expected))


def test_carry_with_other_labels_is_an_error(ctx, tmp_path, intermediate_dirs):
    train = TrainConfig(max_steps=1, batch_size=8)
    with pytest.raises(XstiltsError) as excinfo:
        train_node(ctx, tmp_path / "target", tasks=[TaskData(task="mnli", max_examples=8)], train=train, seed=2,
                   parent=intermediate_dirs["qqp"], carry="encoder_and_head")
    message = str(excinfo.value)
    assert "\n" not in message and "encoder_and_head" in message and "'mnli'" in message, message
    assert not (tmp_path / "target" / "DONE").exists()
    # carrying only the encoder from the QQP phase is fine
    _untrained_target(ctx, tmp_path / "encoder-only", intermediate_dirs["qqp"], "encoder")


def test_carry_with_two_matching_heads_is_an_error(ctx, tmp_path):
    parent = tmp_path / "two-heads"
    train = TrainConfig(max_steps=2, batch_size=8, eval_every=2)
    train_node(ctx, parent, tasks=[TaskData(task="snli", max_examples=16), TaskData(task="rte", max_examples=16),
                                   TaskData(task="mnli", split="dev", max_examples=16)], train=train, seed=2)
    assert set(json.loads((parent / HEADS_FILE).read_text())) == {"snli", "rte", "mnli"}
    # the parent's head of the same name and labels is the one carried; without one, two matches are an error
    assert _carried_heads(parent, {"mnli": NLI_HEAD}) == {"mnli": "mnli"}
    with pytest.raises(XstiltsError) as excinfo:
        _carried_heads(parent, {"anli": NLI_HEAD})
    assert "'snli'" in str(excinfo.value) and "'mnli'" in str(excinfo.value)
    # naming the head to carry settles it; a name of a head with other labels, or of no head, is one line
    assert _carried_heads(parent, {"mnli": NLI_HEAD}, "snli") == {"mnli": "snli"}
    with pytest.raises(XstiltsError) as excinfo:
        _carried_heads(parent, {"mnli": NLI_HEAD}, "rte")
    one_line_error(excinfo, "carry_head 'rte'", "found a classification head with labels ['entailment', "
                                                "'not_entailment']")
    with pytest.raises(XstiltsError) as excinfo:
        _carried_heads(parent, {"mnli": NLI_HEAD}, "qqp")
    one_line_error(excinfo, "carry_head 'qqp'", "found none")


# --- run-directory bookkeeping ------------------------------------------------------------------------------


def _quick_config(model: Path, data_dir: Path, evaluate: list[dict], seed: int = 13, max_steps: int = 1) -> dict:
    return {"model": str(model), "data_dir": str(data_dir.resolve()), "precision": "fp32", "max_length": 32, "seed": seed,
            "target": {"task": {"task": "mnli", "split": "dev", "max_examples": 16},
                       "train": {"max_steps": max_steps, "batch_size": 8}},
            "evaluate": evaluate}


def _evaluations(tree) -> list[dict]:
    """Every evaluation result (a mapping with 'split' and 'average') in metrics['evaluation'], however keyed."""
    if isinstance(tree, dict):
        if "split" in tree and "average" in tree:
            return [tree]
        return [found for value in tree.values() for found in _evaluations(value)]
    return []


def test_dev_and_test_of_one_task_are_both_reported(tmp_path, tiny_model_dir, shared_data_dir):
    evaluate = [{"task": "xnli", "split": "dev", "languages": ["en"], "max_examples": 10},
                {"task": "xnli", "split": "test", "languages": ["en"], "max_examples": 10}]
    metrics = run(parse_config(_quick_config(tiny_model_dir, shared_data_dir, evaluate), "test"), tmp_path / "run")
    on_disk = json.loads((tmp_path / "run" / "metrics.json").read_text())["evaluation"]
    for tree in (metrics["evaluation"], on_disk):
        assert sorted(e["split"] for e in _evaluations(tree)) == ["dev", "test"], tree


def test_same_task_and_split_with_other_languages_is_not_silently_reused(tmp_path, tiny_model_dir, shared_data_dir):
    evaluate = [{"task": "xnli", "split": "test", "languages": ["en"], "max_examples": 10},
                {"task": "xnli", "split": "test", "languages": ["sw"], "max_examples": 10}]
    try:
        metrics = run(parse_config(_quick_config(tiny_model_dir, shared_data_dir, evaluate), "test"), tmp_path / "run")
    except XstiltsError as error:  # rejecting the duplicate is fine too
        assert "\n" not in str(error) and "xnli" in str(error)
        return
    languages = sorted(lang for e in _evaluations(metrics["evaluation"]) for lang in e["n"])
    assert languages == ["en", "sw"], metrics["evaluation"]


def test_rerun_with_another_config_does_not_mix_results(tmp_path, tiny_model_dir, shared_data_dir):
    """The run directory's config.yaml and manifest must describe the results next to them."""
    evaluate = [{"task": "xnli", "split": "dev", "languages": ["en"], "max_examples": 10}]
    output = tmp_path / "run"
    run(parse_config(_quick_config(tiny_model_dir, shared_data_dir, evaluate, seed=13, max_steps=1), "a"), output)
    changed = parse_config(_quick_config(tiny_model_dir, shared_data_dir, evaluate, seed=99, max_steps=3), "b")
    try:
        metrics = run(changed, output)
    except XstiltsError as error:  # refusing to reuse the directory is fine
        assert "\n" not in str(error) and str(output) in str(error)
        assert yaml.safe_load((output / "config.yaml").read_text())["seed"] == 13
        return
    assert metrics["target"]["seed"] == 99 and metrics["target"]["metrics"]["steps"] == 3
    assert yaml.safe_load((output / "config.yaml").read_text())["seed"] == 99


# --- attention, activation checkpointing, padding and memory -------------------------------------------------


def test_dropout_settings(tiny_model_dir):
    assert TrainConfig().attention_dropout == 0.0
    encoder = load_encoder(str(tiny_model_dir), dropout=0.2, attention_dropout=0.0)
    assert (encoder.config.hidden_dropout_prob, encoder.config.attention_probs_dropout_prob) == (0.2, 0.0)
    kept = load_encoder(str(tiny_model_dir), attention_dropout=None)
    assert (kept.config.hidden_dropout_prob, kept.config.attention_probs_dropout_prob) == (0.1, 0.1)  # the model's own


def _padded_batch() -> dict[str, torch.Tensor]:
    ids = torch.randint(5, 1000, (3, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    mask[2, 3:] = 0
    return {"input_ids": ids.masked_fill(mask == 0, 1), "attention_mask": mask}


# The two kernels sum in other orders and, under bf16 autocast, round at other points. fp32: sums of at most
# 64 terms (intermediate size), each off by at most 64 · 2^-24 ≈ 3.8e-6 relative to its terms, a few in a row
# through two layers: 1e-5 (measured: 4e-8 on outputs, 2.7e-7 on gradients). bf16 (u = 2^-8): the CPU version
# rounds the scaled queries, the scores and the probabilities to bf16 where SDPA keeps fp32, 3 roundings of at
# most u each per layer, 6 over the two layers; 8u allows for their growth through the layers (measured: 4e-5
# on outputs, 7.3e-3 on gradients; the CPU version's mask ignored: 0.43 on gradients).
ATTENTION_TOLERANCE = {"fp32": 1e-5, "bf16": 8 * BF16_ROUNDOFF}


@pytest.mark.numeric
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cpu_training_attention_computes_what_sdpa_computes(tiny_model_dir, precision):
    """Same outputs and gradients as PyTorch's SDPA on a padded batch, to the rounding of either precision."""
    batch = _padded_batch()
    results = {}
    for name in ("sdpa", CPU_TRAINING_ATTENTION):
        encoder = load_encoder(str(tiny_model_dir), dropout=0.0, attention_dropout=0.0).train()
        encoder.set_attn_implementation(name)
        with autocast(precision, torch.device("cpu")):
            hidden = encoder(**batch).last_hidden_state
        real = hidden[batch["attention_mask"].bool()].float()
        # along a fixed random direction: LayerNorm fixes each row's sum of squares, whose gradients are zero
        (real * torch.randn(real.shape, generator=torch.Generator().manual_seed(1))).sum().backward()
        results[name] = real.detach(), encoder.encoder.layer[0].attention.self.query.weight.grad
    (out_a, grad_a), (out_b, grad_b) = results.values()
    assert float(grad_a.abs().max()) > 1e-3  # a gradient, not rounding noise
    assert_relative_error(out_b, out_a, ATTENTION_TOLERANCE[precision], "outputs")
    assert_relative_error(grad_b, grad_a, ATTENTION_TOLERANCE[precision], "query gradient")


def test_training_switches_attention_and_checkpointing_on_and_back(tmp_path, ctx):
    assert training_attention("auto", torch.device("cpu")) == CPU_TRAINING_ATTENTION
    assert training_attention("auto", torch.device("cuda")) is None  # the model's own (SDPA) on GPUs
    assert training_attention("model", torch.device("cpu")) is None
    assert training_attention("eager", torch.device("cpu")) == "eager"
    features, _ = ctx.rows(TaskData(task="mnli", max_examples=16), 1)
    model = MultiHeadModel(load_encoder(ctx.model), {"mnli": NLI_HEAD})
    seen = []
    original = model.encoder.forward

    def spy(*args, **kwargs):
        seen.append((model.encoder.config._attn_implementation, model.encoder.is_activation_checkpointing))
        return original(*args, **kwargs)

    model.encoder.forward = spy
    train_phase(model, [TrainTask("mnli", CLASSIFICATION, features)], TrainConfig(max_steps=2, batch_size=8), tmp_path, seed=1,
                pad_id=1, precision="fp32", device=torch.device("cpu"))
    assert seen == [(CPU_TRAINING_ATTENTION, False)] * 2  # plenty of memory for this model: no checkpointing
    seen.clear()
    train_phase(model, [TrainTask("mnli", CLASSIFICATION, features)], TrainConfig(max_steps=2, batch_size=8, activation_checkpointing=True),
                tmp_path / "checkpointed", seed=1, pad_id=1, precision="fp32", device=torch.device("cpu"))
    assert seen == [(CPU_TRAINING_ATTENTION, True)] * 2
    assert (model.encoder.config._attn_implementation, model.encoder.is_activation_checkpointing) == ("sdpa", False)


def test_activation_checkpointing_only_when_memory_requires_it(ctx, monkeypatch):
    encoder = load_encoder(ctx.model)
    estimate = training_memory_bytes(encoder, 32, 128, 4)
    doubled = training_memory_bytes(encoder, 64, 128, 4)
    weights = training_memory_bytes(encoder, 0, 128, 4)
    assert weights > 0 and doubled - weights == pytest.approx(2 * (estimate - weights))  # activations scale with batch
    monkeypatch.setattr(memory, "available_memory_bytes", lambda: int(4 * estimate))
    assert not memory.needs_activation_checkpointing(encoder, 32, 128, 4)
    monkeypatch.setattr(memory, "available_memory_bytes", lambda: int(1.5 * estimate))
    assert memory.needs_activation_checkpointing(encoder, 32, 128, 4)
    monkeypatch.setattr(memory, "available_memory_bytes", lambda: None)
    assert memory.needs_activation_checkpointing(encoder, 32, 128, 4)


@pytest.mark.numeric
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_activation_checkpointing_leaves_training_unchanged(tmp_path, ctx, precision):
    """Recomputing each layer's activations in the backward pass (dropout masks included) trains the same model
    as keeping them, bit for bit: exact by construction, as the recomputation runs the same kernels on the same
    shapes and inputs under the same autocast and dropout random state."""
    kept = TrainConfig(max_steps=3, batch_size=16, lr=1e-3, eval_every=3, select_best=False, dropout=0.1,
                       activation_checkpointing=False)
    variants = {"kept": kept, "recomputed": kept.model_copy(update={"activation_checkpointing": True})}
    results = {name: train_node(dataclasses.replace(ctx, precision=precision), tmp_path / name,
                                tasks=[TaskData(task="mnli", max_examples=48)], train=config, seed=2)
               for name, config in variants.items()}
    assert _history(results["kept"]) == _history(results["recomputed"])
    _assert_same_weights(tmp_path / "kept", tmp_path / "recomputed")
    base = load_file(str(Path(ctx.model) / "model.safetensors"))
    assert not torch.equal(_weights(tmp_path / "kept")["encoder.encoder.layer.0.attention.self.query.weight"],
                           base["encoder.layer.0.attention.self.query.weight"])  # it did train


# Padding changes the shapes, hence the kernels' blocking and the order of floating-point sums, so the two
# passes agree to rounding, not bit for bit. The longest sums of one pass are the gradients' sums over the
# batch's tokens, n <= 16 x 64 = 1024 terms, whose rounding error is at most n·u (u the unit roundoff) of the
# magnitudes summed, κ times the sum's (κ = Σ|terms| / |Σ terms|, its condition: measured up to 33 over a
# batch's examples). fp32: n·u·κ = 1024 · 2^-24 · 100 ≈ 6.1e-3 (measured: 1.4e-7; the attention mask
# ignored: 0.16 on gradients). bf16 autocast rounds the same values to bf16 in both passes and accumulates in
# fp32, so they differ only where an fp32 difference flips a bf16 rounding, by one bf16 ulp (2u = 2^-7) of
# that value; 4u allows two such flips on a path (measured: 4e-8; the mask ignored: 0.16 on gradients).
# Trained weights are not compared: AdamW's first step is lr·g/(|g| + eps), about lr·sign(g), so a gradient
# entry within rounding noise of zero can step lr the other way, as large a difference as unmasked padding.
PADDING_TOLERANCE = {"fp32": 1024 * FP32_ROUNDOFF * 100, "bf16": 4 * BF16_ROUNDOFF}


@pytest.mark.numeric
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_padding_to_a_multiple_leaves_loss_logits_and_gradients_unchanged(ctx, precision):
    """Padded positions are masked out: one training pass (dropout off: its masks are drawn per padded shape) on
    a batch padded to a multiple of 16 gives the loss, logits and gradients of the batch padded to its longest
    row, to rounding: the gradients are what the optimizer is given."""
    features, _ = ctx.rows(TaskData(task="mnli", max_examples=48), 2)
    rows, pad = np.arange(16), ctx.tokenizer.pad_token_id
    widths = [collate(features, rows, pad, multiple)["input_ids"].shape[1] for multiple in (1, 16)]
    assert widths[1] > widths[0] > features.lengths[rows].min()  # padded both ways, differently
    torch.manual_seed(2)
    model = MultiHeadModel(load_encoder(ctx.model, dropout=0.0, attention_dropout=0.0), {"mnli": NLI_HEAD})
    (loss, logits, gradients), (loss_16, logits_16, gradients_16) = (
        training_pass(model, features, rows, pad, precision, multiple) for multiple in (1, 16))
    tolerance = PADDING_TOLERANCE[precision]
    assert loss_16 == pytest.approx(loss, rel=tolerance)
    assert_relative_error(logits_16, logits, tolerance, "logits")
    assert_same_gradients(gradients_16, gradients, tolerance)


def test_collate_rounds_the_width_up_to_a_multiple(ctx):
    features, _ = ctx.rows(TaskData(task="mnli", max_examples=8), 1)
    longest = int(features.lengths.max())
    batch = collate(features, np.arange(8), 1, multiple=16)
    assert batch["input_ids"].shape == (8, longest + (-longest % 16))
    assert batch["attention_mask"].sum(1).tolist() == features.lengths.tolist()
    assert (batch["input_ids"][batch["attention_mask"] == 0] == 1).all()


FRAGMENTATION = """
import sys, torch
from pathlib import Path
from xstilts.memory import release_free_heap

def resident_mb():
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096 / 2**20

torch.ones(5 * 2**20)  # allocating and freeing a 20 MiB block is what makes glibc raise its mmap threshold
before = resident_mb()
blocks = [torch.ones(2**20) for _ in range(17)]  # 17 blocks of 4 MiB from the heap, touched
grown = resident_mb() - before
del blocks[:16]  # the last one stays, so this is not just the top of the heap shrinking
freed = resident_mb() - before
if sys.argv[1] == "release":
    assert release_free_heap()
print(grown, freed, resident_mb() - before)
"""


def test_free_heap_is_returned_to_the_os():
    def resident_growth(setting: str) -> list[float]:
        output = subprocess.run([sys.executable, "-c", FRAGMENTATION, setting], capture_output=True, text=True,
                                check=True).stdout
        return [float(x) for x in output.split()]

    grown, freed, kept = resident_growth("keep")
    assert grown > 60 and freed > 60 and kept > 60  # glibc's default: 64 MiB freed, still resident
    grown, freed, kept = resident_growth("release")
    assert grown > 60 and freed > 60 and kept < 12  # after release: only the block still in use


def test_a_bad_byte_in_an_evaluation_file_stops_the_run_before_training(tmp_path, tiny_model_dir, shared_data_dir):
    """A user XNLI language whose test file has a bad byte: the run stops before its target phase, and the
    corrected config then runs in the same directory."""
    folder = tmp_path / "tasks"
    bad = tmp_path / "xnli-my.tsv"
    good = (shared_data_dir / "xnli" / "test-en.tsv").read_bytes().splitlines(keepends=True)[:20]
    bad.write_bytes(b"".join(good[:7]) + b"\xff\xfe broken\tline\tneutral\n" + b"".join(good[7:]))
    folder.mkdir()
    (folder / "xnli-my.yaml").write_text(yaml.safe_dump({
        "name": "xnli-my", "labels": NLI, "languages": ["my"],
        "local": {"format": "tsv", "header": False, "files": {"test": str(bad)}, "absolute_paths": True,
                  "columns": {"text_a": 0, "text_b": 1, "label": 2}}}))
    config = {**_quick_config(tiny_model_dir, shared_data_dir, [{"task": "xnli-my"}]), "task_dirs": [str(folder)]}
    output = tmp_path / "run"
    with pytest.raises(XstiltsError) as excinfo:
        run(parse_config(config, "test"), output)
    assert str(excinfo.value) == f"{bad}:8: not UTF-8 text (byte b'\\xff' at column 1)"
    assert not output.exists()  # no phase started, and nothing blocks the corrected rerun
    bad.write_bytes(b"".join(good))
    run(parse_config(config, "test"), output)
    assert (output / "target" / "DONE").exists()


def test_a_task_extending_xnli_adds_a_language_to_the_same_table(tmp_path, tiny_model_dir, shared_data_dir):
    """xnli plus a machine-translated language (labels from the English test file): one evaluation, one
    table, the built-in languages read from xnli's files and the new one from the user's."""
    english = (shared_data_dir / "xnli" / "test-en.tsv").read_text(encoding="utf-8").splitlines()
    translated = tmp_path / "mt" / "test-my.tsv"
    translated.parent.mkdir()
    translated.write_text("".join("\t".join(line.split("\t")[:2][::-1]) + "\n" for line in english))
    folder = tmp_path / "tasks"
    folder.mkdir()
    (folder / "xnli-plus.yaml").write_text(yaml.safe_dump({
        "name": "xnli-plus", "extend": "xnli", "labels": NLI, "languages": ["my"], "parallel": True,
        "local": {"format": "tsv", "header": False, "files": {"test": str(translated)}, "absolute_paths": True,
                  "columns": {"text_a": 0, "text_b": 1},
                  "labels_from": {"file": str(shared_data_dir.resolve() / "xnli" / "test-en.tsv"), "column": 2}}}))
    registry = load_registry([folder])
    spec = registry.get("xnli-plus")
    assert spec.languages == [*registry.get("xnli").languages, "my"] and spec.splits == ["dev", "test"]
    evaluate = [{"task": "xnli-plus", "split": "test", "languages": ["en", "sw", "my"], "max_examples": 10}]
    config = {**_quick_config(tiny_model_dir, shared_data_dir, evaluate), "task_dirs": [str(folder)]}
    metrics = run(parse_config(config, "test"), tmp_path / "run")
    table = metrics["evaluation"]["xnli-plus"]["test"]
    assert table["n"] == {"en": 10, "sw": 10, "my": 10}
    assert table["average"] == pytest.approx(np.mean([table[language] for language in ("en", "sw", "my")]))
    with pytest.raises(XstiltsError) as excinfo:
        (folder / "bad.yaml").write_text(yaml.safe_dump({"name": "bad", "extend": "xnli", "labels": ["a", "b"],
                                                         "languages": ["xx"], "local": {
                                                             "format": "tsv", "files": {"test": "x.tsv"},
                                                             "columns": {"text_a": 0, "label": 1}}}))
        load_registry([folder])
    assert "bad.yaml: key 'extend': extends 'xnli', whose labels are" in str(excinfo.value)
