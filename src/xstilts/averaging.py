"""Checkpoint averaging: the running mean of the trainable weights over the snapshots of a training phase
(Schmidt et al., 2023, "Free Lunch: Robust Cross-Lingual Transfer via Model Checkpoint Averaging").
Averaged weights generalise more evenly across languages than any single checkpoint, and choosing the
snapshots needs no target-language data."""

from __future__ import annotations

import torch
from torch import nn


class WeightAverage:
    """Sum and count of snapshots of a model's trainable parameters (float32); a checkpoint stores `sums`,
    the count travels in the training state."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0

    def add(self, model: nn.Module) -> None:
        """Add the model's current trainable weights as one snapshot."""
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if parameter.requires_grad:
                    value = parameter.detach().float()
                    if name in self.sums:
                        self.sums[name] += value
                    else:
                        self.sums[name] = value.clone()
        self.count += 1

    def apply(self, model: nn.Module) -> None:
        """Overwrite the model's trainable weights with the mean of the snapshots."""
        parameters = dict(model.named_parameters())
        with torch.no_grad():
            for name, total in self.sums.items():
                parameters[name].copy_(total / self.count)

    def load(self, sums: dict[str, torch.Tensor], count: int) -> None:
        """Restore from a checkpoint."""
        self.sums, self.count = dict(sums), count
