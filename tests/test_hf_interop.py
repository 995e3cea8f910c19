"""Hugging Face checkpoints both ways, on the embedded model and real rows: `xstilts export-model` writes folders
that the transformers Auto classes load and that compute what xstilts computes; `xstilts evaluate` scores a model
trained by the transformers Trainer as `Trainer.predict` scores it; labels that do not map stop in one line."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import (AutoModel, AutoModelForQuestionAnswering, AutoModelForSequenceClassification,
                          AutoModelForTokenClassification, AutoTokenizer, BertConfig)

from xstilts import __version__
from xstilts.cli import main
from xstilts.config import EvalData
from xstilts.embedded_model import ensure_default_model
from xstilts.errors import XstiltsError
from xstilts.evaluation import predict
from xstilts.features import collate
from xstilts.hf_card import model_card, provenance
from xstilts.hf_interop import label_order, load_exported, load_imported
from xstilts.model import HeadSpec, MultiHeadModel, load_encoder
from xstilts.phases import EVAL_SUBSAMPLE_SEED, Context
from xstilts.task_types import read_split, task_type
from xstilts.tasks.registry import load_registry
from helpers import one_line_error

pytestmark = pytest.mark.usefixtures("single_thread")

XNLI = ("entailment", "neutral", "contradiction")
TRAINER_ORDER = ("contradiction", "entailment", "neutral")  # not the task's order: xstilts maps labels by name


@pytest.fixture(scope="module")
def base() -> str:
    return str(ensure_default_model())


@pytest.fixture(scope="module")
def tokenizer(base):
    return AutoTokenizer.from_pretrained(base)


@pytest.fixture(scope="module")
def cls_model(tmp_path_factory, base):
    """An xstilts model of the embedded encoder with CLS pooling and three fresh heads (XNLI classification,
    XQuAD span QA, PAN-X tagging), saved as the training phase saves it; the folder and the model."""
    torch.manual_seed(0)
    heads = {"xnli": HeadSpec("classification", XNLI), "xquad": HeadSpec("span_qa"),
             "panx": HeadSpec("token_classification", tuple(load_registry().get("panx").labels))}
    model = MultiHeadModel(load_encoder(base), heads, pooling="cls").eval()
    root = tmp_path_factory.mktemp("hf-interop")
    model.save(root / "model")
    yield root / "model", model
    shutil.rmtree(root, ignore_errors=True)  # 470 MB of weights


@pytest.fixture(autouse=True)
def _drop_weights(tmp_path):
    """Each test's exports (470 MB each) go when it ends."""
    yield
    shutil.rmtree(tmp_path, ignore_errors=True)


def _batch(task: str, split: str, count: int, tokenizer, data_dir) -> dict[str, torch.Tensor]:
    """The first `count` English examples of a task's split, featurized and padded as xstilts does it."""
    spec = load_registry().get(task)
    examples = read_split(spec, split, "en", data_dir).examples[:count]
    features = task_type(spec.type).featurize(examples, tokenizer, spec.max_length or 128, spec, "en")
    batch = collate(features, np.arange(len(features)), tokenizer.pad_token_id)
    batch.pop("labels")
    return batch


def _scored_rows(tokenizer, data_dir, count: int):
    """The features of the XNLI English test items `xstilts evaluate --max-examples count` scores (its fixed
    subsample), tokenized by `tokenizer`."""
    ctx = Context("scored", load_registry(), data_dir, 128, "fp32", torch.device("cpu"), tokenizer)
    return ctx.rows(EvalData(task="xnli", split="test", languages=["en"], max_examples=count), EVAL_SUBSAMPLE_SEED)[0]


def _export(folder, output, *options: str) -> int:
    return main(["export-model", str(folder), "--output", str(output), *options])


def test_an_exported_encoder_loads_with_automodel_and_gives_xstilts_hidden_states(tmp_path, cls_model, tokenizer,
                                                                                   shared_data_dir):
    """A mean-pooled classification head has no transformers class: the encoder is exported for `AutoModel`,
    the head beside it for `load_exported`; both compute what xstilts computes."""
    _, model = cls_model
    mean = MultiHeadModel(model.encoder, {"mnli": HeadSpec("classification", XNLI)}, pooling="mean").eval()
    mean.save(tmp_path / "mean")
    assert _export(tmp_path / "mean", tmp_path / "export") == 0
    out = tmp_path / "export"
    assert json.loads((out / "config.json").read_text())["architectures"] == ["BertModel"]
    batch = _batch("xnli", "test", 16, tokenizer, shared_data_dir)
    mask = batch["attention_mask"].bool()
    with torch.inference_mode():
        ours = model.encoder(**batch).last_hidden_state
        theirs = AutoModel.from_pretrained(out).eval()(**batch).last_hidden_state
        torch.testing.assert_close(theirs[mask], ours[mask], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(load_exported(out)("mnli", **batch), mean("mnli", **batch), rtol=1e-5, atol=1e-6)
    texts = ["The cat sat on the mat.", "Le chat est assis sur le tapis."]
    assert AutoTokenizer.from_pretrained(out)(texts)["input_ids"] == tokenizer(texts)["input_ids"]
    card = (out / "README.md").read_text()
    assert "mean pooling" in card and "No transformers class computes this head exactly" in card


def test_a_cls_classification_export_predicts_as_xstilts_on_xnli(tmp_path, cls_model, tokenizer, shared_data_dir,
                                                                   capsys, monkeypatch):
    folder, model = cls_model
    out = tmp_path / "xnli"
    for options, message in (([], "the model has 3 heads (xnli, xquad, panx); pick one with --head"),
                             (["--head", "xnl"], "no head 'xnl' (did you mean 'xnli'?)")):
        capsys.readouterr()
        assert _export(folder, out, *options) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err and not out.exists()
    assert _export(folder, out, "--head", "xnli") == 0
    hf = AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert hf.config.architectures == ["BertForSequenceClassification"] and hf.config.id2label == dict(enumerate(XNLI))
    batch = _batch("xnli", "test", 64, tokenizer, shared_data_dir)
    with torch.inference_mode():
        ours, theirs = model("xnli", **batch), hf(**batch).logits
    assert torch.equal(theirs.argmax(-1), ours.argmax(-1)) and len(set(ours.argmax(-1).tolist())) > 1
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-5)
    card = (out / "README.md").read_text()
    assert f"xstilts {__version__}" in card
    marker = json.loads((out / "xstilts_export.json").read_text())
    assert len(marker["weights_sha256"]) == 64 and marker["weights_sha256"] in card
    assert "head `xnli` (classification, labels entailment, neutral, contradiction, cls pooling)" in card
    # the same export again keeps it; another export into that folder is refused
    capsys.readouterr()
    assert _export(folder, out, "--head", "xnli") == 0 and "already holds this export" in capsys.readouterr().out
    assert _export(folder, out, "--head", "panx") == 2
    assert "exists and is not an empty folder" in capsys.readouterr().err
    # xstilts evaluate scores the export as it scores the model folder it came from (`predict` with its head)
    monkeypatch.setattr("xstilts.phases.resolve_precision", lambda precision, device: "fp32")
    assert main(["evaluate", str(out), "--task", "xnli", "--languages", "en", "--max-examples", "32",
                 "--output", str(tmp_path / "scored"), "--data-dir", str(shared_data_dir)]) == 0
    features = _scored_rows(tokenizer, shared_data_dir, 32)
    expected = predict(model, "xnli", features, tokenizer.pad_token_id, "fp32", torch.device("cpu"))
    assert list(pd.read_csv(tmp_path / "scored" / "predictions" / "en.csv").prediction) == [XNLI[i] for i in expected]


@pytest.mark.parametrize(("task", "split", "auto"), [("xquad", "test", AutoModelForQuestionAnswering),
                                                     ("panx", "dev", AutoModelForTokenClassification)])
def test_qa_and_tagging_exports_load_with_their_auto_class_and_give_xstilts_logits(tmp_path, cls_model, tokenizer,
                                                                                   shared_data_dir, task, split, auto):
    folder, model = cls_model
    assert _export(folder, tmp_path / task, "--head", task) == 0
    hf = auto.from_pretrained(tmp_path / task).eval()
    batch = _batch(task, split, 8, tokenizer, shared_data_dir)
    mask = batch["attention_mask"].bool()
    with torch.inference_mode():
        ours, output = model(task, **batch), hf(**batch)
    theirs = torch.stack((output.start_logits, output.end_logits), -1) if task == "xquad" else output.logits
    torch.testing.assert_close(theirs[mask], ours[mask], rtol=1e-4, atol=1e-5)
    if task == "panx":
        assert hf.config.id2label == dict(enumerate(model.specs["panx"].labels))


def test_a_trainer_model_is_scored_by_xstilts_evaluate_as_trainer_predict_scores_it(tmp_path, base, tokenizer,
                                                                                   shared_data_dir, monkeypatch):
    """A BertForSequenceClassification trained 2 steps by the plain transformers Trainer, its labels in another
    order than the task's; xstilts evaluate scores the 64 XNLI items of its fixed subsample."""
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    spec = load_registry().get("xnli")
    model = AutoModelForSequenceClassification.from_pretrained(
        base, id2label=dict(enumerate(TRAINER_ORDER)), label2id={label: i for i, label in enumerate(TRAINER_ORDER)})
    model.bert.embeddings.word_embeddings.weight.requires_grad_(False)  # cheap steps: no optimizer state for it
    train = [{**tokenizer(e.text_a, e.text_b, truncation=True, max_length=128),
              "labels": TRAINER_ORDER.index(XNLI[e.label])}
             for e in read_split(spec, "dev", "en", shared_data_dir).examples[:16]]
    args = TrainingArguments(output_dir=str(tmp_path / "trainer"), max_steps=2, per_device_train_batch_size=8,
                             learning_rate=1e-4, report_to="none", save_strategy="no", use_cpu=True, seed=0,
                             disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=train, data_collator=DataCollatorWithPadding(tokenizer))
    trainer.train()
    saved = tmp_path / "hf"
    trainer.save_model(str(saved))
    tokenizer.save_pretrained(str(saved))
    monkeypatch.setattr("xstilts.phases.resolve_precision", lambda precision, device: "fp32")  # as Trainer.predict
    features = _scored_rows(tokenizer, shared_data_dir, 64)  # the tokenizer saved with the model
    rows = [{"input_ids": ids, "labels": TRAINER_ORDER.index(XNLI[gold])}
            for ids, gold in zip(features.input_ids, features.labels)]
    predicted = trainer.predict(rows)
    guesses = predicted.predictions.argmax(-1)
    accuracy = float((guesses == predicted.label_ids).mean())
    out = tmp_path / "scored"
    assert main(["evaluate", str(saved), "--task", "xnli", "--languages", "en", "--max-examples", "64",
                 "--output", str(out), "--data-dir", str(shared_data_dir)]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["head"] == "BertForSequenceClassification" and result["languages"]["en"]["n"] == 64
    assert result["languages"]["en"]["score"] == accuracy
    assert list(pd.read_csv(out / "predictions" / "en.csv").prediction) == [TRAINER_ORDER[i] for i in guesses]
    # a checkpoint saved in bf16 loads as fp32 and scores within bf16 rounding
    trainer.model.to(torch.bfloat16).save_pretrained(str(tmp_path / "bf16"))
    imported = load_imported(tmp_path / "bf16", spec)
    batch = collate(features, np.arange(16), tokenizer.pad_token_id)
    batch.pop("labels")
    with torch.inference_mode():
        ours = imported("BertForSequenceClassification", **batch)
    assert next(imported.parameters()).dtype == torch.float32
    expected = torch.from_numpy(predicted.predictions[:16])[:, [TRAINER_ORDER.index(label) for label in XNLI]]
    torch.testing.assert_close(ours, expected, rtol=0.05, atol=0.05)


@pytest.mark.parametrize(("architecture", "labels", "message"), [
    ("BertForSequenceClassification", ["entailment", "neutral", "other"],
     "do not map onto the task's: missing contradiction; not the task's: other"),
    ("BertForSequenceClassification", ["LABEL_0", "LABEL_1"],
     "2 generic labels (LABEL_0...) cannot stand for the task's 3 (entailment, neutral, contradiction)"),
    ("BertForQuestionAnswering", ["LABEL_0", "LABEL_1"],
     "its head BertForQuestionAnswering is span_qa; task 'xnli' is classification"),
    ("BertModel", ["LABEL_0", "LABEL_1"], "a BertModel has no head xstilts scores"),
])
def test_a_head_or_label_set_that_does_not_map_is_exit_2_and_one_line(tmp_path, capsys, shared_data_dir,
                                                                      architecture, labels, message):
    """Checked from config.json alone, before any weights or rows are read."""
    hf = tmp_path / "hf"
    BertConfig(vocab_size=8, hidden_size=4, num_hidden_layers=1, num_attention_heads=1, intermediate_size=4,
               architectures=[architecture], id2label=dict(enumerate(labels))).save_pretrained(hf)
    assert main(["evaluate", str(hf), "--task", "xnli", "--languages", "en", "--max-examples", "8",
                 "--output", str(tmp_path / "out"), "--data-dir", str(shared_data_dir)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


@pytest.mark.parametrize(("names", "order"), [
    (["contradiction", "entailment", "neutral"], [1, 2, 0]),
    (["ENTAILMENT", "NEUTRAL", "CONTRADICTION"], [0, 1, 2]),
    (["LABEL_0", "LABEL_1", "LABEL_2"], [0, 1, 2]),  # as many generic names as labels: the task's order, warned
])
def test_labels_map_by_name_or_generic_names_by_position(names, order, capsys):
    assert label_order(names, list(XNLI), f"model {names[0]}") == order
    assert ("generic labels LABEL_0..LABEL_2" in capsys.readouterr().err) == (names[0] == "LABEL_0")


def test_the_model_card_names_the_study_arm_seed_tasks_data_files_and_metrics(tmp_path, cls_model):
    """A study node's provenance: its label and chain (graph.json), its arm (results.csv), each phase's tasks,
    data files with SHA-256 and training metrics (result.json), and its evaluations; a name in graph.json that
    is not one folder name never becomes a path."""
    _, model = cls_model
    study, nodes = tmp_path / "study", tmp_path / "study" / "nodes"
    graph = {"intermediate-a": {"label": "intermediate snli cap 2000 seed 1", "parents": []},
             "target-b": {"label": "target mnli after snli seed 1", "parents": ["intermediate-a"]},
             "eval-c": {"label": "eval xnli/test of snli seed 1", "parents": ["target-b"]}}

    def data(task: str, split: str) -> dict:
        return {"task": task, "split": split, "language": "en", "source": f"/data/{task}-{split}.json",
                "sha256": f"{task}-sha", "examples": 20}

    results = {
        "intermediate-a": {"kind": "train", "tasks": [{"task": "snli"}], "seed": 1, "precision": "bf16",
                           "data": [data("snli", "train")], "metrics": {"steps": 63, "best_dev": 0.52, "best_step": 63},
                           "machine": {"libraries": {"xstilts": "0.1.0"}, "code": {"git_commit": "abc123"}}},
        "target-b": {"kind": "train", "tasks": [{"task": "mnli"}], "seed": 1, "precision": "bf16",
                     "data": [data("mnli", "train")], "metrics": {"steps": 282, "best_dev": 0.656, "best_step": 282}},
        "eval-c": {"kind": "eval", "task": "xnli", "split": "test", "metric": "accuracy", "average": 0.6,
                   "languages": {"en": {"metric": "accuracy", "score": 0.6, "scores": {"accuracy": 0.6}, "n": 20}},
                   "data": [data("xnli", "test")]}}
    for name, result in results.items():
        (nodes / name).mkdir(parents=True)
        (nodes / name / "result.json").write_text(json.dumps(result))
    (study / "study.json").write_text(json.dumps({"name": "pilot", "model": "embedded"}))
    (study / "graph.json").write_text(json.dumps(graph))
    (study / "results.csv").write_text("arm,group,seed,task,language,score,eval_node,target_node,intermediate_node\n"
                                       "snli,english,1,xnli,en,0.6,eval-c,target-b,intermediate-a\n")
    facts = provenance(nodes / "target-b")
    assert facts["model"] == "embedded"
    card = model_card(facts, model, "xnli", "BertForSequenceClassification", True,
                      {"source": str(nodes / "target-b"), "weights_sha256": "ff00", "base_model": "embedded"})
    for part in ("# pilot: xnli", "Study `pilot`, node `target-b`: target mnli after snli seed 1.",
                 "Arm snli (english), seed 1.", "`intermediate-a` trained on snli, seed 1, bf16: 63 steps",
                 "(xstilts 0.1.0, commit abc123)", "`target-b` trained on mnli, seed 1, bf16: 282 steps",
                 "| mnli | train | en | 20 | /data/mnli-train.json | `mnli-sha` |", "`xnli-sha`",
                 "| accuracy | 60.0 | 60.0 |", f"Exported by xstilts {__version__}",
                 "pipeline_tag: text-classification",
                 "AutoModelForSequenceClassification.from_pretrained"):
        assert part in card, part
    graph["target-b"]["parents"] = ["../../outside"]
    (study / "graph.json").write_text(json.dumps(graph))
    with pytest.raises(XstiltsError) as excinfo:
        provenance(nodes / "target-b")
    one_line_error(excinfo, str(study / "graph.json"), "'../../outside' cannot name a file or folder")
