"""Masked LM: BERT's dynamic masking that never draws a piece outside the kept vocabulary, and a saved model
with the full vocabulary whose untouched rows are the pretrained ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from xstilts.config import TaskData, TrainConfig
from xstilts.errors import XstiltsError
from xstilts.features import Features, collate
from xstilts.model import WEIGHTS_FILE, load_encoder
from xstilts.phases import Context, check_plan, train_node
from xstilts.task_types.masked_lm import IGNORED, Pieces, mask
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


def test_masked_lm_is_trained_only_not_a_target_or_an_evaluation(shared_data_dir):
    registry = load_registry()
    with pytest.raises(XstiltsError) as excinfo:
        check_plan(registry, shared_data_dir, [TaskData(task="mnli")], "text-xnli", [])
    one_line_error(excinfo, "text-xnli", "not as the target")
    with pytest.raises(XstiltsError) as excinfo:
        check_plan(registry, shared_data_dir, [TaskData(task="mnli")], "mnli",
                   [TaskData(task="text-xnli", split="train", languages=["sw"])])
    one_line_error(excinfo, "text-xnli", "trained, not evaluated")
