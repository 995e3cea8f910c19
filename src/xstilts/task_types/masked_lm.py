"""Masked language modelling on unlabelled text (one sentence or paragraph per record), alongside or instead of
labelled intermediate tasks.

Masking is dynamic, BERT's: each time a batch is drawn, 15% of its pieces (never the first and last piece of a
sequence, nor padding) are chosen; 80% of them become the mask piece, 10% a random piece, 10% stay. The head
is BERT's prediction head: dense -> GELU -> LayerNorm, then the word-embedding matrix itself as the decoder
(tied, no output bias), scoring only the chosen pieces. The embedded mE5-small ships without an MLM head, so
the transform starts fresh. With frozen word embeddings (`freeze_embeddings`, the default) the tied decoder
stays the pretrained matrix and only the encoder and the transform learn. With vocabulary trimming the
decoder scores the kept pieces only and random replacements are drawn from them; the saved model has the full
vocabulary, rows of pieces the phase never saw equal to the pretrained ones. Repeated texts are read once; a
text longer than the phase's `max_length` becomes consecutive sequences."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from xstilts.errors import XstiltsError
from xstilts.features import Features
from xstilts.tasks.spec import Example, TaskSpec

MASKED_SHARE, AS_MASK, AS_RANDOM = 0.15, 0.8, 0.1
IGNORED = -100  # a label row's padding
SHARED_HEAD = "masked_lm"  # the head every masked_lm task of a phase trains: one transform over all its text


@dataclass(frozen=True)
class Pieces:
    """The ids masking uses, in the id space the model is trained in (trimmed or full): the mask piece, and
    the pieces a random replacement is drawn from (every kept piece but the special ones)."""

    mask_id: int
    replacements: torch.Tensor

    @classmethod
    def of(cls, tokenizer: PreTrainedTokenizerBase, to_model: np.ndarray | None = None) -> Pieces:
        """From the tokenizer's ids, mapped by `to_model` (full id -> trimmed id, -1 if not kept) if given."""
        if tokenizer.mask_token_id is None:
            raise XstiltsError(f"{type(tokenizer).__name__}: the tokenizer has no mask piece; masked LM needs one")
        special = set(tokenizer.all_special_ids)
        size = len(tokenizer) if to_model is None else min(len(tokenizer), len(to_model))
        full = np.array([i for i in range(size) if i not in special])
        if to_model is None:
            return cls(tokenizer.mask_token_id, torch.from_numpy(full))
        kept = to_model[full]
        return cls(int(to_model[tokenizer.mask_token_id]), torch.from_numpy(kept[kept >= 0]))


def mask(batch: dict[str, torch.Tensor], pieces: Pieces, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """The batch with pieces chosen and replaced as BERT does; `masked` marks the chosen positions, and each
    row of `labels` holds its sequence's original pieces there, in order, padded with `IGNORED`."""
    input_ids, attention = batch["input_ids"].clone(), batch["attention_mask"].bool()
    inner = attention.clone()
    inner[:, 0] = False
    inner[torch.arange(len(inner)), attention.sum(1) - 1] = False  # the closing piece
    chosen = (torch.rand(input_ids.shape, generator=generator) < MASKED_SHARE) & inner
    counts = chosen.sum(1)
    labels = torch.full((len(input_ids), max(1, int(counts.max()))), IGNORED, dtype=torch.long)
    labels[torch.arange(labels.shape[1]) < counts[:, None]] = input_ids[chosen]
    draw = torch.rand(input_ids.shape, generator=generator)
    input_ids[chosen & (draw < AS_MASK)] = pieces.mask_id
    randomised = chosen & (draw >= AS_MASK) & (draw < AS_MASK + AS_RANDOM)
    picks = torch.randint(len(pieces.replacements), (int(randomised.sum()),), generator=generator)
    input_ids[randomised] = pieces.replacements[picks]
    return {**batch, "input_ids": input_ids, "masked": chosen, "labels": labels}


class MaskedLMHead(nn.Module):
    """dense -> GELU -> LayerNorm -> the encoder's word embeddings (tied) at the masked positions."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        self.norm = nn.LayerNorm(hidden, eps=1e-12)
        self.encoder: nn.Module | None = None  # set by `tie`; not a submodule, so not saved with the head

    def tie(self, encoder: nn.Module) -> None:
        """Decode with `encoder`'s word embeddings, whatever matrix it holds when called (trimmed or full)."""
        object.__setattr__(self, "encoder", encoder)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor, choices: int = 1,
                masked: torch.Tensor | None = None) -> torch.Tensor:
        if masked is None:
            raise XstiltsError("a masked_lm head scores masked pieces only: its batches come from `mask`")
        x = self.norm(nn.functional.gelu(self.dense(hidden[masked])))
        return x @ self.encoder.get_input_embeddings().weight.T


class MaskedLM:
    """Cross-entropy over the vocabulary at the masked pieces; masked-piece accuracy."""

    name = "masked_lm"
    metrics = ("masked_accuracy",)
    trainable = True
    evaluated = False
    shared_head: str | None = SHARED_HEAD
    masks_pieces = True

    def example(self, spec: TaskSpec, fields: dict[str, Any], label_map: dict[str, str], where: str) -> Example | None:
        text = str(fields["text_a"]).strip()
        return Example(text, None, -1) if text else None  # a blank line is no text

    def featurize(self, examples: list[Example], tokenizer: PreTrainedTokenizerBase, max_length: int,
                  spec: TaskSpec, language: str) -> Features:
        """Each distinct text once; a text longer than `max_length` pieces becomes consecutive sequences."""
        texts = list(dict.fromkeys(example.text_a for example in examples))
        width = max_length - 2
        sequences = [[tokenizer.cls_token_id, *ids[start:start + width], tokenizer.sep_token_id]
                     for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]
                     for start in range(0, max(len(ids), 1), width)]
        return Features(sequences, None, np.zeros(len(sequences), dtype=np.int64))

    def head(self, hidden_size: int, labels: list[str], dropout: float, pooling: str) -> nn.Module:
        return MaskedLMHead(hidden_size)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The mean cross-entropy over the batch's masked pieces times its sequences (`labels` has a row per
        sequence): divided by the sequences as the loop does for every type, the batch's mean per piece."""
        targets = labels[labels != IGNORED]
        if not len(targets):
            return logits.sum() * 0.0
        return nn.functional.cross_entropy(logits.float(), targets, reduction="mean") * len(labels)

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.argmax(-1)

    def outcomes(self, predictions: np.ndarray, features: Features, names: list[str] | None) -> list[dict]:
        raise XstiltsError("a masked_lm task is trained, not evaluated: it has no per-example predictions")


TYPE = MaskedLM()
