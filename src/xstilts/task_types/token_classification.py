"""Token classification: a tag per word (POS tagging, IOB2 named entities), as XTREME does it.

Each word is tokenized on its own (a word the tokenizer turns into no piece, e.g. an empty token, becomes the
unknown piece) and is tagged on its first piece; its other pieces, and the special pieces, carry the target -100
and are ignored by the loss. A sentence longer than `max_length` pieces becomes windows of whole words, each
starting at the word in the middle of the previous one (half-window overlap); every word is trained on and
predicted exactly once, in the window where it has the most pieces of context on its shorter side (ties: the
earlier window). A word longer than a window keeps its first `max_length - 2` pieces.

Metrics (the task's `metric:`): `accuracy` per word (POS, XTREME's), one predictions row per word; or `f1`,
entity-level span F1 over IOB2 tags computed as seqeval's default mode computes it (an `I-` after `O` or after
another type starts an entity), one predictions row per sentence. The F1 of a set is corpus-level:
2 x found / (gold + predicted entities), summed over its sentences (seqeval's micro F1, not the mean of the
sentences' F1); each sentence's row holds its own F1 (2 x found / (gold + predicted); 1 for a sentence with
neither gold nor predicted entities) as its per-item value, and its counts."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from seqeval.metrics.sequence_labeling import get_entities
from torch import nn
from transformers import PreTrainedTokenizerBase

from xstilts.errors import XstiltsError
from xstilts.features import Features
from xstilts.task_types.classification import label_index
from xstilts.tasks.spec import Example, TaskSpec

IGNORED = -100  # the target of a piece that is not the tagged first piece of a word (cross-entropy's ignore_index)
WIDTH = 512  # predictions are padded to this many pieces per window, the longest window a task may have


class TokenHead(nn.Module):
    """Dropout, then one linear layer from every piece's hidden state to the tag scores (as BERT's and XLM-R's
    token classification models have it)."""

    def __init__(self, hidden: int, outputs: int, dropout: float) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.out_proj = nn.Linear(hidden, outputs)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor, choices: int = 1) -> torch.Tensor:
        return self.out_proj(self.dropout(hidden))


class TokenClassification:
    """Windows of a sentence's pieces -> a tag score per piece -> each word's tag at its first piece -> word
    accuracy or entity span F1."""

    name = "token_classification"
    trainable = True
    evaluated = True
    shared_head: str | None = None
    masks_pieces = False

    def __init__(self, metric: str = "accuracy", labels: tuple[str, ...] = ()) -> None:
        self.metric, self.labels = metric, labels
        self.metrics = (metric,)

    def example(self, spec: TaskSpec, fields: dict[str, Any], label_map: dict[str, str], where: str) -> Example:
        tokens, tags = fields["tokens"], fields["tags"]
        if not isinstance(tokens, list) or not isinstance(tags, list) or len(tokens) != len(tags):
            raise XstiltsError(f"{where}: tokens and tags must be lists of the same length")
        if not tokens:
            raise XstiltsError(f"{where}: an empty sentence")
        path, lines = where.rpartition(":")[0] or where, fields.get("lines")
        indices = []
        for position, tag in enumerate(tags):
            place = f"{path}:{lines[position]}" if lines else f"{where} (word {position + 1})"
            found = label_index(spec, tag, label_map, place)
            if found is None:
                raise XstiltsError(f"{place}: tag {tag!r} is in skip_labels; a sentence's words are all tagged")
            indices.append(found)
        return Example(" ".join(map(str, tokens)), None, -1, words=tuple(map(str, tokens)), tags=tuple(indices))

    def featurize(self, examples: list[Example], tokenizer: PreTrainedTokenizerBase, max_length: int,
                  spec: TaskSpec, language: str) -> Features:
        """Windows of every sentence, each word's tag at its first piece in the window that predicts it."""
        if max_length > WIDTH:
            raise XstiltsError(f"task {spec.name!r}: max_length {max_length} is above {WIDTH}, the longest window a "
                               "token classification task may have")
        if tokenizer.cls_token_id is None or tokenizer.sep_token_id is None:
            raise XstiltsError(f"task {spec.name!r}: the tokenizer has no CLS and SEP pieces to frame a window")
        words = [word for example in examples for word in example.words]
        encoded = tokenizer(words, add_special_tokens=False)["input_ids"] if words else []
        unknown = [tokenizer.unk_token_id]
        pieces = iter([ids or unknown for ids in encoded])
        input_ids, labels, owners = [], [], []
        room = max_length - 2
        for owner, example in enumerate(examples):
            word_pieces = [next(pieces)[:room] for _ in example.words]
            spans, predicting = windows([len(p) for p in word_pieces], room)
            for window, (start, end) in enumerate(spans):
                ids, targets = [tokenizer.cls_token_id], [IGNORED]
                for word in range(start, end):
                    targets += [example.tags[word] if predicting[word] == window else IGNORED]
                    targets += [IGNORED] * (len(word_pieces[word]) - 1)
                    ids += word_pieces[word]
                input_ids.append(ids + [tokenizer.sep_token_id])
                labels.append(targets + [IGNORED] * (max_length - len(targets)))
                owners.append(owner)
        return Features(input_ids, None, np.array(labels, dtype=np.int64).reshape(-1, max_length), 1,
                        owners=np.array(owners, dtype=np.int64))

    def head(self, hidden_size: int, labels: list[str], dropout: float, pooling: str) -> nn.Module:
        return TokenHead(hidden_size, len(labels), dropout)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy averaged over the batch's tagged pieces, times its windows (the caller divides by them)."""
        targets = labels[:, : logits.shape[1]]
        total = nn.functional.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORED,
                                            reduction="sum")
        return total / (targets != IGNORED).sum().clamp(min=1) * len(labels)

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        """The best tag of every piece, padded with -1 to `WIDTH` pieces."""
        best = logits.argmax(-1).to(torch.int16)
        return nn.functional.pad(best, (0, WIDTH - best.shape[1]), value=-1)

    def outcomes(self, predictions: np.ndarray, features: Features, names: list[str] | None) -> list[dict]:
        """Accuracy: per word (numbered through the sentences, in order), its sentence, gold tag, predicted tag
        and correct (0/1). F1: per sentence, its gold and predicted tags, its gold, predicted and found entities,
        and its f1."""
        names = list(names or self.labels)
        gold: dict[int, list[int]] = {}
        predicted: dict[int, list[int]] = {}
        for row, owner in enumerate(features.owners):
            tagged = np.flatnonzero(features.labels[row] != IGNORED)
            gold.setdefault(int(owner), []).extend(features.labels[row, tagged].tolist())
            predicted.setdefault(int(owner), []).extend(predictions[row, tagged].tolist())
        named = lambda tags: [names[tag] if names else str(tag) for tag in tags]  # noqa: E731
        if self.metric == "accuracy":
            return [{"index": index, "sentence": owner, "label": truth, "prediction": guess, "correct": int(truth == guess)}
                    for index, (owner, truth, guess) in enumerate(
                        (owner, truth, guess) for owner in sorted(gold)
                        for truth, guess in zip(named(gold[owner]), named(predicted[owner])))]
        rows = []
        for owner in sorted(gold):
            truth, guess = named(gold[owner]), named(predicted[owner])
            entities, found = span_counts(truth, guess)
            rows.append({"index": owner, "labels": " ".join(truth), "predictions": " ".join(guess),
                         "gold_entities": entities[0], "predicted_entities": entities[1], "found": found,
                         "f1": 2 * found / sum(entities) if sum(entities) else 1.0})
        return rows

    def corpus_scores(self, outcomes: list[dict]) -> dict[str, float]:
        """The task's metric over a set: word accuracy, or corpus-level span F1 (see the module's docstring)."""
        if self.metric == "accuracy":
            return {"accuracy": float(np.mean([row["correct"] for row in outcomes]))}
        found = sum(row["found"] for row in outcomes)
        entities = sum(row["gold_entities"] + row["predicted_entities"] for row in outcomes)
        return {"f1": 2 * found / entities if entities else 0.0}


def windows(lengths: list[int], room: int) -> tuple[list[tuple[int, int]], list[int]]:
    """Windows of whole words over a sentence whose words have `lengths` pieces, at most `room` pieces each, as
    (first word, end word), and per word the window that predicts it. Each window starts at the middle word of the
    previous one; a word is predicted by the window that gives it most context on its shorter side."""
    spans, start = [], 0
    while True:
        end, used = start, 0
        while end < len(lengths) and used + lengths[end] <= room:
            used, end = used + lengths[end], end + 1
        end = max(end, start + 1)  # a word longer than the window (already cut to `room` pieces) fits alone
        spans.append((start, end))
        if end == len(lengths):
            break
        half, middle = 0, start
        while middle < end - 1 and half + lengths[middle] <= used // 2:
            half, middle = half + lengths[middle], middle + 1
        start = max(middle, start + 1)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    context = np.array([[min(offsets[word] - offsets[first], offsets[last] - offsets[word + 1])
                         if first <= word < last else -1 for word in range(len(lengths))] for first, last in spans])
    return spans, context.argmax(0).tolist()


def span_counts(gold: list[str], predicted: list[str]) -> tuple[tuple[int, int], int]:
    """(gold entities, predicted entities) and the entities found (same type, same first and last word) of one
    sentence's IOB2 tags, chunked as seqeval's default mode chunks them."""
    truth, guess = set(get_entities(gold)), set(get_entities(predicted))
    return (len(truth), len(guess)), len(truth & guess)


TYPE = TokenClassification()
