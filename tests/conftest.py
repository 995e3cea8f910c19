"""Shared pytest fixtures, and the thread count of the whole test session."""

import os
from pathlib import Path

import pytest

# Every phase in this process and in the processes it starts (study drivers, executors' workers, launched
# ranks) runs on exactly TEST_THREADS threads: results that two processes compare bit for bit must come from
# the same kernels, and PyTorch's kernels depend on the thread count (measured: 4 training steps of the tiny
# model on 1 and on 2 threads end 7.7e-6 apart), which the adaptive policy (xstilts.cpu) would otherwise
# choose per process from the machine's load. XSTILTS_TEST_THREADS=2 reruns the tests under 2 threads (CI
# does so for the `numeric` tests) to show which comparisons depend on kernel choice.
TEST_THREADS = int(os.environ.get("XSTILTS_TEST_THREADS", "1"))
os.environ["XSTILTS_CPU_THREADS"] = str(TEST_THREADS)
# `-n auto` (the README's test command, pytest-xdist): one worker per core, at most 4. Each test runs on
# TEST_THREADS threads, so two workers keep a 2-core machine busy; `--dist loadfile` keeps a module's tests
# and its module-scoped fixtures (a trained run, a reference study) in one worker, computed once. Measured on
# a 2-core Xeon: the whole suite 18 min 0 s on one worker, 12 min 25 s on two.
MAX_WORKERS = 4


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist, absent without it
def pytest_xdist_auto_num_workers(config) -> int:
    from xstilts.cpu import usable_cores

    return min(MAX_WORKERS, usable_cores())


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The shared data directory: ``$XSTILTS_DATA_DIR``, else ``<repo>/../shared/data``."""
    env = os.environ.get("XSTILTS_DATA_DIR")
    return Path(env).resolve() if env else (Path(__file__).resolve().parents[1] / ".." / "shared" / "data").resolve()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A randomly initialised 2-layer BERT (hidden 32) with the real XLM-R tokenizer of the embedded model.

    The vocabulary is the full 250,037 rows of mE5-small so that real multilingual text tokenizes exactly
    as with the embedded model; the tokenizer files are the ones `xstilts.embedded_model` writes.
    """
    import json
    import shutil

    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from xstilts import embedded_model as em

    out = tmp_path_factory.mktemp("tiny-model")
    config = BertConfig(
        vocab_size=250037, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=512, pad_token_id=1, bos_token_id=0, eos_token_id=2, architectures=["BertModel"],
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(out)
    # Reuse the converter's tokenizer files (no public helper writes tokenizer_config.json on its own).
    shutil.copyfile(em.tokenizer_json(), out / "tokenizer.json")
    (out / "tokenizer_config.json").write_text(json.dumps(em._TOKENIZER_CONFIG, indent=2) + "\n")
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert (tokenizer.bos_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    return out


@pytest.fixture(scope="module")
def single_thread():
    """Run torch on TEST_THREADS threads (one unless XSTILTS_TEST_THREADS says otherwise) for a module: on a
    2-core machine shared with another training run, two spinning OpenMP threads are many times slower than
    one (measured: tiny-model steps ~170x slower)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(TEST_THREADS)
    yield
    torch.set_num_threads(before)
