"""A shared pretrained encoder with named classification heads (one per training task)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, AutoModel

from xstilts.errors import XstiltsError

HEADS_FILE = "heads.json"
WEIGHTS_FILE = "model.safetensors"
SETTINGS_FILE = "xstilts_model.json"


class ClassificationHead(nn.Module):
    """Dropout -> dense -> tanh -> dropout -> projection, on a pooled sentence vector."""

    def __init__(self, hidden: int, num_labels: int, dropout: float) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.dense = nn.Linear(hidden, hidden)
        self.out_proj = nn.Linear(hidden, num_labels)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        x = self.dropout(pooled)
        x = self.dropout(torch.tanh(self.dense(x)))
        return self.out_proj(x)


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """Sentence vector: the first token's state ('cls') or the mean over real tokens ('mean', how E5
    models are pretrained)."""
    if pooling == "cls":
        return hidden[:, 0]
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)


class MultiHeadModel(nn.Module):
    """Encoder plus a dictionary of heads; `heads` maps head name -> its label list."""

    def __init__(self, encoder: nn.Module, heads: dict[str, list[str]], dropout: float | None = None,
                 pooling: str = "mean") -> None:
        super().__init__()
        self.encoder = encoder
        self.pooling = pooling
        config = encoder.config
        self.dropout = dropout if dropout is not None else getattr(config, "hidden_dropout_prob", 0.1)
        self.labels = dict(heads)
        self.heads = nn.ModuleDict(
            {name: ClassificationHead(config.hidden_size, len(labels), self.dropout) for name, labels in heads.items()}
        )

    def forward(self, head: str, input_ids: torch.Tensor, attention_mask: torch.Tensor, **extra: torch.Tensor) -> torch.Tensor:
        """Logits of `head` for a padded batch."""
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
        return self.heads[head](pool(hidden, attention_mask, self.pooling))

    def add_head(self, name: str, labels: list[str]) -> None:
        """Add a freshly initialised head."""
        self.labels[name] = list(labels)
        self.heads[name] = ClassificationHead(self.encoder.config.hidden_size, len(labels), self.dropout)

    def save(self, directory: Path) -> None:
        """Write weights (safetensors) and the head label sets."""
        directory.mkdir(parents=True, exist_ok=True)
        state = {key: value.detach().contiguous() for key, value in self.state_dict().items()}
        save_file(state, str(directory / WEIGHTS_FILE))
        (directory / HEADS_FILE).write_text(json.dumps(self.labels, indent=1))
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
    model: str, directory: Path, heads: dict[str, list[str]], carry_heads: dict[str, str], dropout: float | None = None,
    pooling: str = "mean", attention_dropout: float | None = None,
) -> MultiHeadModel:
    """A model whose encoder comes from a saved phase; `carry_heads` maps new head -> saved head to copy."""
    saved = load_file(str(directory / WEIGHTS_FILE))
    result = MultiHeadModel(load_encoder(model, dropout, attention_dropout), heads, dropout, pooling)
    state = {key: value for key, value in saved.items() if key.startswith("encoder.")}
    for new, old in carry_heads.items():
        state |= {f"heads.{new}.{k[len(f'heads.{old}.'):]}": v for k, v in saved.items() if k.startswith(f"heads.{old}.")}
    missing, unexpected = result.load_state_dict(state, strict=False)
    fresh = {f"heads.{name}." for name in heads if name not in carry_heads}
    not_loaded = [key for key in missing if not any(key.startswith(prefix) for prefix in fresh)]
    if not_loaded or unexpected:
        raise RuntimeError(f"{directory}: checkpoint does not match the model (missing {not_loaded[:3]}, unexpected {unexpected[:3]})")
    return result


def load_trained(model: str, directory: Path) -> MultiHeadModel:
    """A trained phase's full model (encoder and all its heads)."""
    heads = json.loads((directory / HEADS_FILE).read_text())
    settings = json.loads((directory / SETTINGS_FILE).read_text()) if (directory / SETTINGS_FILE).exists() else {}
    return load_checkpoint(model, directory, heads, {name: name for name in heads}, pooling=settings.get("pooling", "cls"))
