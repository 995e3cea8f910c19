"""Classification pipeline stages: examples -> tokenized features -> padded batches."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from xstilts.tasks.spec import Example


@dataclass
class Features:
    """Token ids (unpadded) and label indices of a list of examples."""

    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def lengths(self) -> np.ndarray:
        """Number of real tokens per example."""
        return np.fromiter((len(ids) for ids in self.input_ids), dtype=np.int64, count=len(self.input_ids))

    def subset(self, indices: np.ndarray) -> Features:
        """The features of the given rows."""
        types = None if self.token_type_ids is None else [self.token_type_ids[i] for i in indices]
        return Features([self.input_ids[i] for i in indices], types, self.labels[indices])


def tokenize(examples: list[Example], tokenizer: PreTrainedTokenizerBase, max_length: int) -> Features:
    """Tokenize text (pairs) with truncation to `max_length`, without padding."""
    first = [example.text_a for example in examples]
    pairs = examples and examples[0].text_b is not None
    second = [example.text_b or "" for example in examples] if pairs else None
    encoded = tokenizer(first, second, truncation=True, max_length=max_length, padding=False)
    types = encoded.get("token_type_ids")
    uses_types = types is not None and any(any(row) for row in types)
    labels = np.array([example.label for example in examples], dtype=np.int64)
    return Features(encoded["input_ids"], types if uses_types else None, labels)


def collate(features: Features, indices: np.ndarray, pad_id: int, multiple: int = 1) -> dict[str, torch.Tensor]:
    """A batch padded to its longest member (dynamic padding), rounded up to a multiple of `multiple`."""
    width = max(len(features.input_ids[i]) for i in indices)
    width += -width % multiple
    input_ids = torch.full((len(indices), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(indices), width), dtype=torch.long)
    token_type_ids = torch.zeros((len(indices), width), dtype=torch.long) if features.token_type_ids else None
    for row, index in enumerate(indices):
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
