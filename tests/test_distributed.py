"""Two processes training one phase together (accelerate launch, gloo on CPU) match one process with the
same global batch."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from xstilts.config import TaskData, parse_config
from xstilts.distributed import Ranks
from xstilts.errors import XstiltsError
from xstilts.model import HeadSpec, MultiHeadModel, load_encoder
from xstilts.phases import Context
from xstilts.pipeline import run
from xstilts.tasks import load_registry
from helpers import FP32_ROUNDOFF, assert_same_gradients, one_line_error, training_pass

NLI_HEAD = HeadSpec("classification", ("entailment", "neutral", "contradiction"))
GLOBAL_BATCH = np.arange(15)  # split 8 + 7 over two ranks, each padded to its own longest row


def _model(model_dir: str) -> MultiHeadModel:
    torch.manual_seed(5)
    return MultiHeadModel(load_encoder(model_dir, dropout=0.0, attention_dropout=0.0), {"mnli": NLI_HEAD})


def _rank_gradients(rank: int, world: int, model_dir: str, features, pad_id: int, out: str) -> None:
    """One rank of `world`: its share of one training pass, gradients summed over the ranks; rank 0 saves them."""
    torch.set_num_threads(1)  # the two ranks share the cores
    torch.distributed.init_process_group("gloo", init_method=f"file://{out}/rendezvous", rank=rank, world_size=world)
    try:
        loss, _, gradients = training_pass(_model(model_dir), features, GLOBAL_BATCH, pad_id, multiple=16,
                                           ranks=Ranks(rank, world))
        if rank == 0:
            torch.save({"loss": loss, "gradients": gradients}, f"{out}/gradients.pt")
    finally:
        torch.distributed.destroy_process_group()


# Each rank sums its own rows, padded to its own width, and the all-reduce adds the two sums: another order of
# the same sums of at most 15 x 64 tokens, so the fp32 bound of the padding test applies: n·u·κ = 960 · 2^-24
# · 100 ≈ 5.7e-3 (κ, the sums' condition, measured up to 33 on this batch; the difference measured: 1.4e-5).
GRADIENT_TOLERANCE = 15 * 64 * FP32_ROUNDOFF * 100


@pytest.mark.numeric
def test_two_ranks_sum_to_the_gradients_of_one_process(tmp_path, tiny_model_dir, shared_data_dir):
    """The gradients the optimizer gets after the ranks' all-reduce are one process's on the same global batch,
    to fp32 rounding (one pass: after AdamW steps the weights could only be compared to within lr per entry)."""
    ctx = Context.create(str(tiny_model_dir), load_registry(), shared_data_dir, 64, "fp32")
    features, _ = ctx.rows(TaskData(task="mnli", max_examples=48), 5)
    pad = ctx.tokenizer.pad_token_id
    torch.multiprocessing.spawn(_rank_gradients, args=(2, str(tiny_model_dir), features, pad, str(tmp_path)), nprocs=2)
    two = torch.load(tmp_path / "gradients.pt")
    loss, _, gradients = training_pass(_model(str(tiny_model_dir)), features, GLOBAL_BATCH, pad, multiple=16)
    assert two["loss"] == pytest.approx(loss, rel=GRADIENT_TOLERANCE)
    assert_same_gradients(two["gradients"], gradients, GRADIENT_TOLERANCE)


def _adamw_reach(train: dict) -> float:
    """How far apart two AdamW runs with these settings can put one weight whose gradients differ by rounding
    only: a gradient entry within rounding noise of zero can take a step of the opposite sign. A step moves a
    weight by lr_t·|m̂|/(√v̂ + eps) <= 1.02·lr_t (Cauchy-Schwarz on the bias-corrected averages, betas 0.9 and
    0.999, 6 steps or fewer), in either direction, and lr_t decays linearly from lr (no warmup step at these
    lengths), summing to lr·(T + 1)/2 over T steps."""
    return 2 * 1.02 * train["lr"] * (train["max_steps"] + 1) / 2


def test_two_processes_match_one_with_the_same_global_batch(tmp_path, tiny_model_dir, shared_data_dir):
    """Multi-task intermediate phase with gradient accumulation, then a target phase whose global batch (15)
    splits unevenly over the two ranks; dropout off, so the only difference is summation order. Rank 0 alone
    writes the phases, the same steps, examples and evaluation sets as one process. The weights can only be
    bounded by AdamW's reach (`_adamw_reach`), and dev or test accuracies, near ties apart, not at all: the
    numbers are compared where rounding bounds them, on the gradients of one pass (the test above)."""
    train = {"lr": 1e-3, "dropout": 0.0, "attention_dropout": 0.0, "eval_every": 2}
    config = {
        "name": "ddp", "model": str(tiny_model_dir), "data_dir": str(shared_data_dir), "precision": "fp32",
        "max_length": 64, "seed": 5,
        "intermediate": {"tasks": [{"task": "snli", "max_examples": 96}, {"task": "indonli", "max_examples": 64}],
                         "train": {**train, "max_steps": 4, "batch_size": 16, "grad_accumulation": 2}},
        "target": {"task": {"task": "mnli", "max_examples": 96},
                   "train": {**train, "max_steps": 6, "batch_size": 15, "checkpoint_every": 2}},
        "evaluate": [{"task": "xnli", "split": "dev", "languages": ["en", "sw"], "max_examples": 50}],
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    one = run(parse_config(config, "test"), tmp_path / "one")
    launched = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "xstilts.cli", "run", str(path),
         "--output", str(tmp_path / "two")], capture_output=True, text=True, timeout=600)
    assert launched.returncode == 0, launched.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    reach = 0.0  # the target phase starts from the intermediate phase's encoder
    for phase in ("intermediate", "target"):
        reach += _adamw_reach(config[phase]["train"])
        a, b = (load_file(str(tmp_path / d / phase / "model.safetensors")) for d in ("one", "two"))
        assert a.keys() == b.keys()
        assert max(float((a[k] - b[k]).abs().max()) for k in a) <= reach
        assert [h["step"] for h in one[phase]["metrics"]["history"]] == [h["step"] for h in two[phase]["metrics"]["history"]]
        assert one[phase]["metrics"]["steps"] == two[phase]["metrics"]["steps"]
        assert one[phase]["train_examples"] == two[phase]["train_examples"]
    for name, tables in one["evaluation"].items():
        assert {split: table["n"] for split, table in tables.items()} == {
            split: table["n"] for split, table in two["evaluation"][name].items()}
    # rank 0 alone wrote the phases: no per-rank leftovers, one DONE and one prediction file per language
    assert sorted(p.name for p in (tmp_path / "two" / "target").iterdir()) == sorted(
        p.name for p in (tmp_path / "one" / "target").iterdir())
    assert "resuming" not in launched.stderr


@pytest.mark.parametrize(("world", "message"), [
    ("abc", "WORLD_SIZE='abc' is not a number of processes"),
    ("2", "WORLD_SIZE=2 is set but no launcher started this process (no RANK, MASTER_ADDR, MASTER_PORT)"),
])
def test_a_stray_world_size_is_one_line(monkeypatch, world, message):
    from xstilts.distributed import current_ranks

    for name in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WORLD_SIZE", world)
    current_ranks.cache_clear()
    try:
        with pytest.raises(XstiltsError) as excinfo:
            current_ranks()
        one_line_error(excinfo, message)
    finally:
        monkeypatch.undo()
        current_ranks.cache_clear()
    assert current_ranks().world == 1
