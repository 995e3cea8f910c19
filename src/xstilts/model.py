"""A shared pretrained encoder with named heads (one per training task), each of its task type."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, AutoModel

from xstilts.errors import XstiltsError
from xstilts.manifest import read_json
from xstilts.task_types import task_type
from xstilts.tasks.spec import LABELLED_TYPES

HEADS_FILE = "heads.json"
WEIGHTS_FILE = "model.safetensors"
SETTINGS_FILE = "xstilts_model.json"
POOLINGS = ("mean", "cls")
HEAD_INPUTS = ("masked",)  # batch entries that go to the head, not the encoder (masked LM's masked positions)
RESAVE = "re-run the phase that saved it (a study's node: delete the node's folder and run the study again)"


@dataclass(frozen=True)
class HeadSpec:
    """What a head is: its task type and, for classification, its label list."""

    type: str
    labels: tuple[str, ...] = ()


def read_heads(directory: Path) -> dict[str, HeadSpec]:
    """A saved model's heads (heads.json; a plain label list is a classification head, as older runs wrote);
    a damaged file, a head of no known type, without a list of labels or, for a labelled type, with none is
    one line."""
    path = directory / HEADS_FILE
    heads = {}
    for name, value in read_json(path, RESAVE).items():
        value = {"type": "classification", "labels": value} if isinstance(value, list) else value
        kind = value.get("type") if isinstance(value, dict) else None
        labels = value.get("labels") if isinstance(value, dict) else None
        if not _known_type(kind) or not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise XstiltsError(f"{path}: head {name!r} is not a task type and a list of labels ({str(value)[:60]}); "
                               f"{RESAVE}")
        if kind in LABELLED_TYPES and not labels:
            raise XstiltsError(f"{path}: the {kind} head {name!r} has no labels; {RESAVE}")
        heads[name] = HeadSpec(kind, tuple(labels))
    if not heads:
        raise XstiltsError(f"{path}: no heads; {RESAVE}")
    return heads


def _known_type(kind: object) -> bool:
    """Whether `kind` names a task type."""
    try:
        task_type(kind)
        return True
    except (KeyError, TypeError):
        return False


def load_weights(path: Path, fix: str, what: str = "weights") -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; a missing, truncated or foreign file is one line naming it, `what` it
    holds and `fix`."""
    try:
        return load_file(str(path))
    except (OSError, RuntimeError, ValueError, SafetensorError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise XstiltsError(f"{path}: unreadable {what} ({first}); {fix}") from None


class MultiHeadModel(nn.Module):
    """Encoder plus a dictionary of heads, each of its task type (the head owns its pooling)."""

    def __init__(self, encoder: nn.Module, heads: dict[str, HeadSpec], dropout: float | None = None,
                 pooling: str = "mean") -> None:
        super().__init__()
        self.encoder = encoder
        self.pooling = pooling
        config = encoder.config
        self.dropout = dropout if dropout is not None else getattr(config, "hidden_dropout_prob", 0.1)
        self.specs = dict(heads)
        self.heads = nn.ModuleDict({name: self._head(spec) for name, spec in heads.items()})

    def _head(self, spec: HeadSpec) -> nn.Module:
        head = task_type(spec.type).head(self.encoder.config.hidden_size, list(spec.labels), self.dropout, self.pooling)
        if hasattr(head, "tie"):  # a head that decodes with the word embeddings (masked LM)
            head.tie(self.encoder)
        return head

    @property
    def labels(self) -> dict[str, list[str]]:
        """Each head's label list."""
        return {name: list(spec.labels) for name, spec in self.specs.items()}

    def forward(self, head: str, input_ids: torch.Tensor, attention_mask: torch.Tensor, choices: int = 1,
                **extra: torch.Tensor) -> torch.Tensor:
        """Logits of `head` for a padded batch (`choices` sequences per example)."""
        own = {key: extra.pop(key) for key in HEAD_INPUTS if key in extra}
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
        return self.heads[head](hidden, attention_mask, choices, **own)

    def save(self, directory: Path) -> None:
        """Write weights (safetensors) and the heads' types and label sets."""
        directory.mkdir(parents=True, exist_ok=True)
        state = {key: value.detach().contiguous() for key, value in self.state_dict().items()}
        save_file(state, str(directory / WEIGHTS_FILE))
        heads = {name: {"type": spec.type, "labels": list(spec.labels)} for name, spec in self.specs.items()}
        (directory / HEADS_FILE).write_text(json.dumps(heads, indent=1))
        (directory / SETTINGS_FILE).write_text(json.dumps({"pooling": self.pooling}))


def load_encoder(model: str, dropout: float | None = None, attention_dropout: float | None = None) -> nn.Module:
    """The pretrained encoder (any Hugging Face model name or local directory); None keeps the model's own
    dropout rates."""
    config = AutoConfig.from_pretrained(model)
    if dropout is not None:
        config.hidden_dropout_prob = dropout
    if attention_dropout is not None:
        config.attention_probs_dropout_prob = attention_dropout
    try:
        return AutoModel.from_pretrained(model, config=config)
    except (OSError, ValueError, RuntimeError, SafetensorError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise XstiltsError(f"{model}: the model's weights cannot be loaded ({first}); for the embedded model, "
                           "delete its cache folder (~/.cache/xstilts or $XSTILTS_CACHE_DIR) to convert it again"
                           ) from None


def load_checkpoint(
    model: str, directory: Path, heads: dict[str, HeadSpec], carry_heads: dict[str, str], dropout: float | None = None,
    pooling: str = "mean", attention_dropout: float | None = None,
) -> MultiHeadModel:
    """A model whose encoder comes from a saved phase; `carry_heads` maps new head -> saved head to copy."""
    saved = load_weights(directory / WEIGHTS_FILE, RESAVE)
    result = MultiHeadModel(load_encoder(model, dropout, attention_dropout), heads, dropout, pooling)
    state = {key: value for key, value in saved.items() if key.startswith("encoder.")}
    for new, old in carry_heads.items():
        state |= {f"heads.{new}.{k[len(f'heads.{old}.'):]}": v for k, v in saved.items() if k.startswith(f"heads.{old}.")}
    try:
        missing, unexpected = result.load_state_dict(state, strict=False)
    except RuntimeError as error:  # a tensor of another shape (heads.json and the weights disagree)
        problem = " ".join(str(error).split("\n", 1)[-1].split())[:200]
    else:
        fresh = {f"heads.{name}." for name in heads if name not in carry_heads}
        not_loaded = [key for key in missing if not any(key.startswith(prefix) for prefix in fresh)]
        if not not_loaded and not unexpected:
            return result
        problem = f"missing {not_loaded[:3]}, unexpected {unexpected[:3]}"
    raise XstiltsError(f"{directory / WEIGHTS_FILE}: the weights do not match the model and its {HEADS_FILE} "
                       f"({problem}); {RESAVE}")


def load_trained(model: str, directory: Path) -> MultiHeadModel:
    """A trained phase's full model (encoder and all its heads)."""
    heads = read_heads(directory)
    return load_checkpoint(model, directory, heads, {name: name for name in heads}, pooling=saved_pooling(directory))


def saved_pooling(directory: Path) -> str:
    """The pooling a trained model was saved with (xstilts_model.json; 'cls' for models saved before it was
    recorded); a damaged file or an unknown pooling is one line, not a silent default."""
    path = directory / SETTINGS_FILE
    if not path.exists():
        return "cls"
    try:
        pooling = json.loads(path.read_text(encoding="utf-8")).get("pooling")
    except (ValueError, AttributeError):
        raise XstiltsError(f"{path}: not a JSON object with the model's pooling; re-run the phase that saved it") from None
    if pooling not in POOLINGS:
        raise XstiltsError(f"{path}: unknown pooling {pooling!r} (expected one of {', '.join(POOLINGS)})")
    return pooling
