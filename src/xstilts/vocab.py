"""Vocabulary trimming for training: the word-embedding matrix (82% of mE5-small's parameters) is cut to
the pieces a phase's data actually contains. Its gradient and AdamW update then touch only those rows, and
the full matrix (384 MB in fp32) waits on disk instead of in memory while the phase trains.

Outputs for text made of those pieces are identical to the untrimmed model's; the rows a phase never
sees are left exactly as they were (full-vocabulary AdamW would only shrink them by weight decay). The one
exception is masked LM, whose tied decoder then scores the kept pieces only: its softmax runs over the phase's
vocabulary, which depends on every task of the phase."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from xstilts.features import Features
from xstilts.model import MultiHeadModel

SPILLED = "word_embeddings"


@dataclass
class VocabTrim:
    """Kept piece ids (sorted) and the map from full ids to trimmed ids."""

    kept: np.ndarray
    full_to_trimmed: np.ndarray

    @classmethod
    def from_features(cls, features: list[Features], vocab_size: int, always: list[int]) -> VocabTrim:
        """Keep every piece in `features` plus the `always` ids (special tokens)."""
        used = np.zeros(vocab_size, dtype=bool)
        used[always] = True
        for rows in features:
            for ids in rows.input_ids:
                used[ids] = True
        kept = np.flatnonzero(used)
        mapping = np.full(vocab_size, -1, dtype=np.int64)
        mapping[kept] = np.arange(len(kept))
        return cls(kept, mapping)

    def remap(self, features: Features) -> Features:
        """The same rows with ids in the trimmed vocabulary."""
        ids = [self.full_to_trimmed[row].tolist() for row in features.input_ids]
        return replace(features, input_ids=ids)

    def shrink(self, model: MultiHeadModel, spill: Path) -> None:
        """Replace the model's word embeddings by the kept rows; the full matrix is written to `spill` (a
        safetensors file) and dropped from memory until `expand`."""
        full = model.encoder.get_input_embeddings().weight.detach()
        save_file({SPILLED: full}, str(spill))
        model.encoder.set_input_embeddings(nn.Embedding.from_pretrained(full[self.kept], freeze=False))

    def expand(self, model: MultiHeadModel, spill: Path) -> None:
        """Write the trained rows into the full matrix read back from `spill`, put it into the model and
        delete the file."""
        full = load_file(str(spill))[SPILLED]
        full[torch.from_numpy(self.kept)] = model.encoder.get_input_embeddings().weight.detach().to(full.dtype)
        model.encoder.set_input_embeddings(nn.Embedding.from_pretrained(full, freeze=False))
        spill.unlink()
