"""Features of any task type (token ids, `choices` sequences per example, and targets) -> padded batches,
and the batch orders of training and evaluation."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch


@dataclass
class SpanWindows:
    """Span QA: the questions whose windows (feature rows) a `Features` holds, and where each window's tokens
    lie in its question's context."""

    question: np.ndarray  # per window: the index of its question in `contexts`
    offsets: list[np.ndarray]  # per window, (pieces, 2) int32: each piece's characters in the context, -1 outside
    contexts: list[str]
    answers: list[tuple[str, ...]]  # per question: the gold answer texts
    keys: list[str]  # per question: its id in the data file
    languages: list[str]  # per question: its language (answers are normalised per language)
    max_answer_length: int  # in pieces, for predictions
    normalization: str  # how answers are compared (see `xstilts.qa_metrics`)

    def subset(self, indices: np.ndarray) -> SpanWindows:
        return replace(self, question=self.question[indices], offsets=[self.offsets[i] for i in indices])

    @classmethod
    def concatenate(cls, parts: list[SpanWindows]) -> SpanWindows:
        shifts = np.cumsum([0] + [len(p.contexts) for p in parts[:-1]])
        return replace(parts[0], question=np.concatenate([p.question + shift for p, shift in zip(parts, shifts)]),
                       offsets=[o for p in parts for o in p.offsets], contexts=[c for p in parts for c in p.contexts],
                       answers=[a for p in parts for a in p.answers], keys=[k for p in parts for k in p.keys],
                       languages=[language for p in parts for language in p.languages])


@dataclass
class Features:
    """Unpadded token ids of a list of examples, `choices` sequences per example (one for classification,
    one per candidate for multiple choice), stored example after example, and one target per example. For
    span QA an example is a window of a question's context (`spans` says which), its target (start, end); for
    token classification a window of a sentence (`owners` says which), its target a tag per piece."""

    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None
    labels: np.ndarray
    choices: int = 1
    spans: SpanWindows | None = None
    owners: np.ndarray | None = None  # token classification: per window, the index of its sentence

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def units(self) -> np.ndarray:
        """Per example, the unit a subsample keeps or drops whole: the example itself, or a window's question or
        sentence."""
        if self.spans is not None:
            return self.spans.question
        return self.owners if self.owners is not None else np.arange(len(self))

    def sample(self, count: int, rng: np.random.Generator) -> Features:
        """`count` units (see `units`) drawn without replacement, in their original order."""
        units = np.unique(self.units)
        if count >= len(units):
            return self
        chosen = np.sort(rng.choice(units, count, replace=False))
        return self.subset(np.flatnonzero(np.isin(self.units, chosen)))

    @property
    def lengths(self) -> np.ndarray:
        """Number of real tokens per example (its longest sequence)."""
        lengths = np.fromiter((len(ids) for ids in self.input_ids), dtype=np.int64, count=len(self.input_ids))
        return lengths.reshape(-1, self.choices).max(1)

    def sequences(self, indices: np.ndarray) -> np.ndarray:
        """Positions in `input_ids` of the given examples' sequences."""
        return (np.asarray(indices)[:, None] * self.choices + np.arange(self.choices)).ravel()

    def subset(self, indices: np.ndarray) -> Features:
        """The features of the given examples."""
        rows = self.sequences(indices)
        types = None if self.token_type_ids is None else [self.token_type_ids[i] for i in rows]
        spans = None if self.spans is None else self.spans.subset(np.asarray(indices))
        owners = None if self.owners is None else self.owners[indices]
        return Features([self.input_ids[i] for i in rows], types, self.labels[indices], self.choices, spans, owners)

    @classmethod
    def concatenate(cls, parts: list[Features]) -> Features:
        """The examples of several feature sets (of one task), in order."""
        types = None if any(p.token_type_ids is None for p in parts) else [t for p in parts for t in p.token_type_ids]
        spans = None if parts[0].spans is None else SpanWindows.concatenate([p.spans for p in parts])
        owners = None
        if parts[0].owners is not None:  # sentences numbered on from the previous part's
            shifts = np.cumsum([0] + [int(p.owners.max(initial=-1)) + 1 for p in parts[:-1]])
            owners = np.concatenate([p.owners + shift for p, shift in zip(parts, shifts)])
        return cls([ids for p in parts for ids in p.input_ids], types, np.concatenate([p.labels for p in parts]),
                   parts[0].choices, spans, owners)


def collate(features: Features, indices: np.ndarray, pad_id: int, multiple: int = 1) -> dict[str, torch.Tensor]:
    """The given examples' sequences padded to the longest (dynamic padding), rounded up to a multiple of
    `multiple`; `labels` holds one target per example."""
    rows = features.sequences(indices)
    width = max(len(features.input_ids[i]) for i in rows)
    width += -width % multiple
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    token_type_ids = torch.zeros((len(rows), width), dtype=torch.long) if features.token_type_ids else None
    for row, index in enumerate(rows):
        ids = features.input_ids[index]
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention_mask[row, : len(ids)] = 1
        if token_type_ids is not None:
            token_type_ids[row, : len(ids)] = torch.tensor(features.token_type_ids[index])
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": torch.from_numpy(features.labels[indices])}
    if token_type_ids is not None:
        batch["token_type_ids"] = token_type_ids
    return batch


def length_grouped_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator, group: int = 50) -> list[np.ndarray]:
    """Shuffled batches of similar length: shuffle, sort within mega-batches of `group` batches, shuffle batches."""
    order = rng.permutation(len(lengths))
    batches: list[np.ndarray] = []
    mega = batch_size * group
    for start in range(0, len(order), mega):
        chunk = order[start : start + mega]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def token_budget_batches(lengths: np.ndarray, max_tokens: int, max_batch: int = 512) -> list[np.ndarray]:
    """Evaluation batches over rows sorted by length, each holding at most `max_tokens` padded tokens."""
    order = np.argsort(-lengths, kind="stable")
    batches, current = [], []
    for index in order:
        width = lengths[current[0]] if current else lengths[index]
        if current and (width * (len(current) + 1) > max_tokens or len(current) >= max_batch):
            batches.append(np.array(current))
            current = []
        current.append(index)
    if current:
        batches.append(np.array(current))
    return batches
