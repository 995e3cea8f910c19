"""Exact match and F1 of extractive QA answers, with the answer normalisation of the official SQuAD v1.1
evaluation (lower case, ASCII punctuation and English articles removed, whitespace tokens) or of the MLQA
evaluation (Unicode punctuation, the language's articles, Chinese split into characters). An example's
score is its best over its gold answers, as both official scripts compute it."""

from __future__ import annotations

import functools
import re
import string
import sys
import unicodedata
from collections import Counter

ASCII_PUNCTUATION = frozenset(string.punctuation)
MLQA_ARTICLES = {
    "en": r"\b(a|an|the)\b", "es": r"\b(un|una|unos|unas|el|la|los|las)\b", "vi": r"\b(của|là|cái|chiếc|những)\b",
    "de": r"\b(ein|eine|einen|einem|eines|einer|der|die|das|den|dem|des)\b", "ar": r"\sال^|ال",
}
CHARACTER_LANGUAGES = frozenset({"zh"})  # MLQA compares Chinese character by character
_CJK = re.compile(r"[\u4e00-\u9fa5]")


@functools.cache
def unicode_punctuation() -> frozenset[str]:
    """Every Unicode punctuation character (categories P*) and ASCII punctuation, as MLQA removes them."""
    return frozenset(chr(i) for i in range(sys.maxunicode) if unicodedata.category(chr(i)).startswith("P")) \
        | ASCII_PUNCTUATION


def _characters_and_words(text: str) -> list[str]:
    """MLQA's mixed segmentation: each CJK character or punctuation mark a token, other runs split at spaces."""
    tokens, run = [], ""
    for char in text:
        if _CJK.search(char) or char in unicode_punctuation():
            tokens += run.split()
            run = ""
            tokens.append(char)
        else:
            run += char
    return tokens + run.split()


def answer_tokens(text: str, normalization: str = "squad", language: str = "en") -> list[str]:
    """The normalised tokens of an answer. MLQA's normalisation knows articles of en es vi de ar and splits zh
    into characters; other languages (where the official MLQA script stops) keep whitespace tokens and their
    articles."""
    text = text.lower()
    if normalization == "squad":
        text = "".join(char for char in text if char not in ASCII_PUNCTUATION)
        return re.sub(r"\b(a|an|the)\b", " ", text).split()
    text = "".join(char for char in text if char not in unicode_punctuation())
    if language in MLQA_ARTICLES:
        text = re.sub(MLQA_ARTICLES[language], " ", text)
    tokens = _characters_and_words(text) if language in CHARACTER_LANGUAGES else text.split()
    return [token for token in tokens if token.strip()]


def exact_match(prediction: str, gold: list[str], normalization: str = "squad", language: str = "en") -> float:
    """1.0 if the normalised prediction equals a normalised gold answer, else 0.0."""
    predicted = answer_tokens(prediction, normalization, language)
    return float(any(predicted == answer_tokens(answer, normalization, language) for answer in gold))


def f1(prediction: str, gold: list[str], normalization: str = "squad", language: str = "en") -> float:
    """The best token-overlap F1 of the prediction against any gold answer."""
    predicted = answer_tokens(prediction, normalization, language)
    best = 0.0
    for answer in gold:
        expected = answer_tokens(answer, normalization, language)
        same = sum((Counter(predicted) & Counter(expected)).values())
        if same:
            precision, recall = same / len(predicted), same / len(expected)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best
