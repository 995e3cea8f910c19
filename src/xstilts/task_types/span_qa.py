"""Extractive QA (SQuAD v1.1 style: SQuAD, TyDiQA-GoldP, XQuAD, MLQA): the answer is a span of the context.

A question and its context become one or more windows of at most the task's `max_length` pieces; consecutive
windows share `doc_stride` context pieces. A window's target is the first gold answer's first and last piece,
or the first piece (the CLS token) when the answer is not wholly inside it, as in the transformers QA example
(run_qa.py). The head scores every piece as a start and as an end; a question's prediction is the
highest-scoring span (start + end score) over its windows' 20 best starts x 20 best ends that lies in the
context, ends after it starts and is at most `max_answer_length` pieces long: the post-processing of that
example (`postprocess_qa_predictions`, without the SQuAD v2 null answer). Metrics: F1 (primary) and exact
match, per `xstilts.qa_metrics`."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from xstilts import qa_metrics
from xstilts.errors import XstiltsError
from xstilts.features import Features, SpanWindows
from xstilts.tasks.spec import Example, TaskSpec

N_BEST = 20  # start and end candidates per window


class SpanHead(nn.Module):
    """A start and an end score for every piece (one linear layer, no dropout, as the transformers QA models
    have it); padding scores the lowest value."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.out_proj = nn.Linear(hidden, 2)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor, choices: int = 1) -> torch.Tensor:
        logits = self.out_proj(hidden)
        return logits.masked_fill(~attention_mask.bool()[..., None], torch.finfo(logits.dtype).min)


class SpanQA:
    """Windows of (question, context) pieces -> start/end scores -> the best span's text -> F1 and EM."""

    name = "span_qa"
    metrics = ("f1", "exact_match")
    trainable = True
    evaluated = True
    shared_head: str | None = None
    masks_pieces = False

    def example(self, spec: TaskSpec, fields: dict[str, Any], label_map: dict[str, str], where: str) -> Example:
        context, question = str(fields["context"]), str(fields["question"])
        texts, starts = fields["answer_text"], fields["answer_start"]
        key = str(fields.get("id", ""))
        where = f"{where} (question {key})" if key else where
        if not context.strip():
            raise XstiltsError(f"{where}: empty context")
        if not question.strip():
            raise XstiltsError(f"{where}: empty question")
        if not isinstance(texts, list) or not isinstance(starts, list) or len(texts) != len(starts):
            raise XstiltsError(f"{where}: answer_text and answer_start must be lists of the same length")
        if not texts:
            raise XstiltsError(f"{where}: no gold answer")
        if any(not str(text).strip() for text in texts):
            raise XstiltsError(f"{where}: an empty gold answer")
        answers = []
        for text, start in zip(texts, starts):
            if not isinstance(start, int) or context[start:start + len(str(text))] != str(text):
                found = context[start:start + len(str(text))] if isinstance(start, int) else start
                raise XstiltsError(f"{where}: answer {str(text)!r} is not at its offset {start} in the context "
                                   f"(found {found!r})")
            answers.append((str(text), start))
        return Example(question, context, -1, answers=tuple(answers), key=key)

    def featurize(self, examples: list[Example], tokenizer: PreTrainedTokenizerBase, max_length: int,
                  spec: TaskSpec, language: str) -> Features:
        """Windows of every question, with the offsets that map their pieces back to the context."""
        if not tokenizer.is_fast:
            raise XstiltsError(f"task {spec.name!r}: span QA needs a fast tokenizer (character offsets); "
                               f"{type(tokenizer).__name__} is not one")
        if spec.doc_stride >= max_length // 2:
            raise XstiltsError(f"task {spec.name!r}: doc_stride {spec.doc_stride} must be below half of max_length "
                               f"{max_length}")
        questions = [e.text_a.lstrip() for e in examples]
        room = max_length - spec.doc_stride - 4  # special pieces around and between the two texts
        for example, pieces in zip(examples, tokenizer(questions, add_special_tokens=False)["input_ids"]):
            if len(pieces) > room:
                raise XstiltsError(f"task {spec.name!r} ({language}): question {example.key or example.text_a[:40]!r} "
                                   f"has {len(pieces)} pieces, which leaves no room for its context in {max_length}-"
                                   f"piece windows with doc_stride {spec.doc_stride}; raise the task's max_length")
        encoded = tokenizer(questions, [e.text_b for e in examples], truncation="only_second", max_length=max_length,
                            stride=spec.doc_stride, return_overflowing_tokens=True, return_offsets_mapping=True,
                            padding=False)
        question = np.asarray(encoded["overflow_to_sample_mapping"], dtype=np.int64)
        offsets, labels = [], np.zeros((len(question), 2), dtype=np.int64)
        for window, owner in enumerate(question):
            spans = np.asarray(encoded["offset_mapping"][window], dtype=np.int32).reshape(-1, 2)
            spans[[sequence != 1 for sequence in encoded.sequence_ids(window)]] = -1
            offsets.append(spans)
            labels[window] = _target(spans, examples[owner].answers[0])
        types = encoded.get("token_type_ids")
        uses_types = types is not None and any(any(row) for row in types)
        windows = SpanWindows(question, offsets, [e.text_b for e in examples],
                              [tuple(text for text, _ in e.answers) for e in examples], [e.key for e in examples],
                              [language] * len(examples), spec.max_answer_length, spec.answer_normalization)
        return Features(encoded["input_ids"], types if uses_types else None, labels, 1, windows)

    def head(self, hidden_size: int, labels: list[str], dropout: float, pooling: str) -> nn.Module:
        return SpanHead(hidden_size)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the start and of the end piece, averaged (summed over the windows)."""
        logits = logits.float()
        return (nn.functional.cross_entropy(logits[..., 0], labels[:, 0], reduction="sum")
                + nn.functional.cross_entropy(logits[..., 1], labels[:, 1], reduction="sum")) / 2

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        """Per window: the `N_BEST` best start pieces and their scores, then the best end pieces and theirs,
        as rows of a (windows, 4, N_BEST) tensor (a missing candidate is piece -1)."""
        logits = logits.float()
        if logits.shape[1] < N_BEST:
            logits = nn.functional.pad(logits, (0, 0, 0, N_BEST - logits.shape[1]), value=-float("inf"))
        found = [logits[..., side].topk(N_BEST, dim=1) for side in (0, 1)]
        rows = [row for top in found for row in (torch.where(torch.isinf(top.values), -1, top.indices).float(), top.values)]
        return torch.stack(rows, dim=1)

    def outcomes(self, predictions: np.ndarray, features: Features, names: list[str] | None) -> list[dict]:
        """Per question (in data order): its index and id, its gold answers (a JSON list), the predicted text,
        exact_match and f1."""
        spans = features.spans
        best: dict[int, tuple[float, str]] = {}
        for window, owner in enumerate(spans.question):
            score, text = _best_span(predictions[window], spans.offsets[window], spans.contexts[owner],
                                     spans.max_answer_length)
            if int(owner) not in best or score > best[int(owner)][0]:
                best[int(owner)] = (score, text)
        rows = []
        for owner in sorted(best):
            text, gold = best[owner][1], list(spans.answers[owner])
            rows.append({"index": owner, "id": spans.keys[owner], "answers": json.dumps(gold, ensure_ascii=False),
                         "prediction": text,
                         "exact_match": qa_metrics.exact_match(text, gold, spans.normalization, spans.languages[owner]),
                         "f1": qa_metrics.f1(text, gold, spans.normalization, spans.languages[owner])})
        return rows


def _target(offsets: np.ndarray, answer: tuple[str, int]) -> tuple[int, int]:
    """The first and last piece of the answer in a window, or (0, 0) when it is not wholly inside."""
    text, start = answer
    end = start + len(text)
    inside = np.flatnonzero(offsets[:, 0] >= 0)
    if offsets[inside[0], 0] > start or offsets[inside[-1], 1] < end:
        return 0, 0
    return int(inside[offsets[inside, 0] <= start][-1]), int(inside[offsets[inside, 1] >= end][0])


def _best_span(candidates: np.ndarray, offsets: np.ndarray, context: str, max_answer_length: int) -> tuple[float, str]:
    """The best valid span of one window's candidates: (score, text); (-inf, '') if none is valid."""
    best = (-float("inf"), "")
    starts, start_scores, ends, end_scores = candidates
    valid = lambda piece: 0 <= piece < len(offsets) and offsets[piece, 0] >= 0  # noqa: E731
    for start, start_score in zip(starts.astype(int), start_scores):
        if not valid(start):
            continue
        for end, end_score in zip(ends.astype(int), end_scores):
            if end < start or end - start + 1 > max_answer_length or not valid(end):
                continue
            if start_score + end_score > best[0]:
                best = (float(start_score + end_score), context[offsets[start, 0]:offsets[end, 1]])
    return best


TYPE = SpanQA()
