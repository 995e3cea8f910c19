"""xstilts: intermediate-task transfer (X-STILTs) for zero-shot cross-lingual NLP."""

__version__ = "0.2.0"
