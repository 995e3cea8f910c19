"""Attention for training on the CPU: plain matmul-softmax-matmul that stays in the compute dtype.

Measured on a 2-core AMX CPU (mE5-small, batch 32, MNLI lengths, bf16 autocast): the backward pass of
PyTorch's fused (flash) attention takes about 40% of a step (25 pairs/s); Hugging Face's `eager`
attention reaches 36 pairs/s but, under autocast, adds the fp32 mask to bf16 scores, keeping an fp32
and a bf16 copy of every attention matrix. This version adds the mask in the scores' dtype and
runs the softmax on it directly (the CPU kernel accumulates in fp32 and rounds its output once), so each
layer keeps a single attention matrix in the compute dtype. On GPUs and for inference, SDPA stays.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

CPU_TRAINING_ATTENTION = "xstilts_cpu"


def cpu_training_attention(
    module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
    attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0, **_: object,
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q k^T * scaling + mask) v over (batch, heads, length, head_dim) tensors, in q's compute dtype."""
    scaling = query.size(-1) ** -0.5 if scaling is None else scaling
    scores = torch.matmul(query * scaling, key.transpose(2, 3))
    if attention_mask is not None:
        scores = scores + attention_mask.to(scores.dtype)
    with torch.autocast(query.device.type, enabled=False):  # autocast would run softmax on an fp32 copy
        probabilities = scores.softmax(dim=-1)
    probabilities = nn.functional.dropout(probabilities, p=dropout, training=module.training)
    output = torch.matmul(probabilities, value).transpose(1, 2).contiguous()
    return output, probabilities


AttentionInterface.register(CPU_TRAINING_ATTENTION, cpu_training_attention)
ALL_MASK_ATTENTION_FUNCTIONS.register(CPU_TRAINING_ATTENTION, eager_mask)


def training_attention(choice: str, device: torch.device) -> str | None:
    """The attention implementation a training phase uses: 'auto' picks the CPU version on the CPU and
    keeps the model's own (SDPA) elsewhere; None means keep the model's own."""
    if choice == "auto":
        return CPU_TRAINING_ATTENTION if device.type == "cpu" else None
    return None if choice == "model" else choice


@contextlib.contextmanager
def attention_implementation(model: nn.Module, name: str | None) -> Iterator[None]:
    """Run the block with `model` (a Hugging Face model) switched to attention `name`, then switch back."""
    if name is None:
        yield
        return
    previous = model.config._attn_implementation
    model.set_attn_implementation(name)
    try:
        yield
    finally:
        model.set_attn_implementation(previous)
