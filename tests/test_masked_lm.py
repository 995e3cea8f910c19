"""Masked LM: BERT's dynamic masking that never draws a piece outside the kept vocabulary, and a saved model
with the full vocabulary whose untouched rows are the pretrained ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from xstilts.config import TaskData, TrainConfig
from xstilts.embedded_model import ensure_default_model
from xstilts.errors import XstiltsError
from xstilts.features import Features, collate
from xstilts.model import WEIGHTS_FILE, HeadSpec, MultiHeadModel, load_encoder, load_trained
from xstilts.phases import Context, check_plan, train_node
from xstilts.task_types.masked_lm import IGNORED, SHARED_HEAD, Pieces, mask
from xstilts.tasks import load_registry
from xstilts.vocab import VocabTrim
from helpers import one_line_error

EMBEDDINGS = "encoder.embeddings.word_embeddings.weight"
LOW_RESOURCE_TEXT = [TaskData(task="text-xnli", languages=["sw", "ur"]), TaskData(task="text-indonli")]


def _features(ctx: Context, tasks: list[TaskData], seed: int = 0) -> Features:
    return Features.concatenate([ctx.rows(task, seed)[0] for task in tasks])


def test_masking_is_berts_and_replacements_stay_in_the_kept_vocabulary(tiny_model_dir, shared_data_dir):
    ctx = Context.create(str(tiny_model_dir), load_registry(), shared_data_dir, 64, "fp32")
    features = _features(ctx, [t.model_copy(update={"max_examples": 300}) for t in LOW_RESOURCE_TEXT])
    tokenizer = ctx.tokenizer
    trim = VocabTrim.from_features([features], len(tokenizer), tokenizer.all_special_ids)
    trimmed = trim.remap(features)
    pieces = Pieces.of(tokenizer, trim.full_to_trimmed)
    special = {int(trim.full_to_trimmed[i]) for i in tokenizer.all_special_ids}
    assert len(pieces.replacements) == len(trim.kept) - len(special)
    assert not special & set(pieces.replacements.tolist()) and pieces.replacements.max() < len(trim.kept)
    generator = torch.Generator().manual_seed(0)
    chosen = as_mask = changed = kept = total = 0
    for start in range(0, len(trimmed), 50):
        batch = collate(trimmed, np.arange(start, min(start + 50, len(trimmed))), int(trim.full_to_trimmed[1]))
        masked = mask(batch, pieces, generator)
        picked = masked["masked"]
        assert not picked[:, 0].any() and not (picked & ~batch["attention_mask"].bool()).any()
        labels = masked["labels"][masked["labels"] != IGNORED]
        assert torch.equal(labels, batch["input_ids"][picked])  # the originals, in order
        new = masked["input_ids"][picked]
        chosen += int(picked.sum())
        as_mask += int((new == pieces.mask_id).sum())
        replaced = new[(new != pieces.mask_id) & (new != labels)]
        changed += len(replaced)
        kept += int(torch.isin(replaced, pieces.replacements).sum())
        total += int(batch["attention_mask"].sum()) - 2 * len(batch["input_ids"])
        assert torch.equal(masked["input_ids"][~picked], batch["input_ids"][~picked])
    assert 0.13 < chosen / total < 0.17 and 0.76 < as_mask / chosen < 0.84 and 0.07 < changed / chosen < 0.13
    assert kept == changed  # every random replacement is a kept, non-special piece


def test_the_saved_model_has_the_full_vocabulary_with_untouched_rows_pretrained(tmp_path, tiny_model_dir,
                                                                                shared_data_dir):
    ctx = Context.create(str(tiny_model_dir), load_registry(), shared_data_dir, 64, "fp32")
    tasks = [TaskData(task="text-xnli", languages=["sw"], max_examples=64)]
    train = TrainConfig(max_steps=4, batch_size=16, lr=1e-2, freeze_embeddings=False, warmup_ratio=0.0)
    result = train_node(ctx, tmp_path / "mlm", tasks=tasks, train=train, seed=1)
    assert result["metrics"]["vocabulary_in_training"] < len(ctx.tokenizer) // 10
    saved, pretrained = load_file(str(tmp_path / "mlm" / WEIGHTS_FILE))[EMBEDDINGS], \
        load_encoder(str(tiny_model_dir)).get_input_embeddings().weight.detach()
    assert saved.shape == pretrained.shape
    seen = np.unique(np.concatenate([np.asarray(ids) for ids in ctx.rows(tasks[0], 1)[0].input_ids]))
    untouched = np.setdiff1d(np.arange(len(saved)), [*seen, *ctx.tokenizer.all_special_ids])
    assert torch.equal(saved[untouched], pretrained[untouched])
    assert not torch.allclose(saved[seen], pretrained[seen])  # the rows it trained did move (tied decoder)


def _masked_accuracy(model: MultiHeadModel, held_out: Features, pieces: Pieces, pad_id: int) -> tuple[int, int]:
    """(right, masked) over held-out sequences, masked by one fixed draw so that every model sees the same."""
    model.eval()
    generator, right, total = torch.Generator().manual_seed(7), 0, 0
    with torch.no_grad():
        for start in range(0, len(held_out), 32):
            rows = np.arange(start, min(start + 32, len(held_out)))
            batch = mask(collate(held_out, rows, pad_id), pieces, generator)
            labels = batch.pop("labels")
            labels = labels[labels != IGNORED]
            right += int((model(SHARED_HEAD, **batch).argmax(-1) == labels).sum())
            total += len(labels)
    return right, total


@pytest.mark.slow
@pytest.mark.usefixtures("single_thread")
def test_masked_piece_accuracy_on_held_out_text_rises_during_training(tmp_path, shared_data_dir):
    """The real embedded model, masked LM on Swahili, Urdu and Indonesian text (XNLI dev and IndoNLI train
    premises; both sources train one shared head), scored on held-out Swahili and Indonesian paragraphs (TyDiQA
    dev) with the fresh head, after 40 steps and after 40 more (the head carried). Measured: 0, 78 and 99 of
    2,137 masked pieces right (0%, 3.7%, 4.6%; lr 1e-4, batch 16, 64 pieces, vocabulary trimmed, one thread). The
    most frequent piece of that text, ",", is 3.1% of it: after 80 steps the head beats always guessing it."""
    ensure_default_model()
    ctx = Context.create("embedded", load_registry(), shared_data_dir, 64, "fp32")
    held_out = ctx.rows(TaskData(task="text-tydiqa-dev", languages=["sw", "id"], max_examples=300), 0)[0]
    pieces, pad = Pieces.of(ctx.tokenizer), ctx.tokenizer.pad_token_id
    text = [TaskData(task="text-xnli", languages=["sw", "ur"], max_examples=320),
            TaskData(task="text-indonli", max_examples=320)]
    train = TrainConfig(max_steps=40, batch_size=16, lr=1e-4, warmup_ratio=0.0)
    torch.manual_seed(1)
    fresh = MultiHeadModel(load_encoder(ctx.model), {SHARED_HEAD: HeadSpec("masked_lm")})
    counts = [_masked_accuracy(fresh, held_out, pieces, pad)]
    first = train_node(ctx, tmp_path / "first", tasks=text, train=train, seed=1)
    assert first["train_examples"] == {"text-xnli": 320, "text-indonli": 320}
    counts.append(_masked_accuracy(load_trained(ctx.model, tmp_path / "first"), held_out, pieces, pad))
    train_node(ctx, tmp_path / "second", tasks=text, train=train, seed=2, parent=tmp_path / "first",
               carry="encoder_and_head")
    counts.append(_masked_accuracy(load_trained(ctx.model, tmp_path / "second"), held_out, pieces, pad))
    (right_0, total), (right_40, _), (right_80, _) = counts
    assert total > 1500, counts
    assert right_0 < right_40 < right_80, counts
    assert right_80 - right_40 > 10 and right_80 / total > 0.035, counts  # beyond a few lucky pieces, and a constant


def test_masked_lm_is_trained_only_not_a_target_or_an_evaluation(shared_data_dir):
    registry = load_registry()
    with pytest.raises(XstiltsError) as excinfo:
        check_plan(registry, shared_data_dir, [TaskData(task="mnli")], "text-xnli", [])
    one_line_error(excinfo, "text-xnli", "not as the target")
    with pytest.raises(XstiltsError) as excinfo:
        check_plan(registry, shared_data_dir, [TaskData(task="mnli")], "mnli",
                   [TaskData(task="text-xnli", split="train", languages=["sw"])])
    one_line_error(excinfo, "text-xnli", "trained, not evaluated")
