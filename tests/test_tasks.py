"""Task registry and readers: built-in tasks on the real shared data, user tasks declared in YAML,
and one-line errors naming the file and row (or key) for malformed input."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from xstilts.errors import XstiltsError
from xstilts.tasks import Example, load_registry
from xstilts.task_types import read_split
from xstilts.tasks.registry import BUILTIN_DIR
from helpers import one_line_error

NLI = ["entailment", "neutral", "contradiction"]
XNLI_LANGUAGES = ["en", "fr", "es", "de", "el", "bg", "ru", "tr", "ar", "vi", "th", "zh", "hi", "sw", "ur"]
AMERICAS = ["aym", "bzd", "cni", "gn", "hch", "nah", "oto", "quy", "shp", "tar"]
TATOEBA_LANGUAGES = ("afr ara ben bul cmn deu ell est eus fin fra heb hin hun ind ita jav jpn kat kaz kor mal mar nld "
                     "pes por rus spa swh tam tel tgl tha tur urd vie").split()

# Rows per language as stated by the data README (/work/shared/data/README.md); AmericasNLI states ranges.
EXPECTED_ROWS = {
    ("xnli", "dev"): {lang: 2490 for lang in XNLI_LANGUAGES},
    ("xnli", "test"): {lang: 5010 for lang in XNLI_LANGUAGES},
    ("mnli", "train"): {"en": 8999},
    ("mnli", "dev"): {"en": 1000},
    ("snli", "train"): {"en": 8999},
    ("snli", "dev"): {"en": 1000},
    ("qnli", "train"): {"en": 8999},
    ("qnli", "dev"): {"en": 1000},
    ("qqp", "train"): {"en": 8999},
    ("qqp", "dev"): {"en": 1000},
    ("rte", "train"): {"en": 2240},
    ("rte", "dev"): {"en": 249},
    ("sst2", "train"): {"en": 6227},
    ("sst2", "dev"): {"en": 692},
    ("indonli", "train"): {"id": 10330},
    ("indonli", "dev"): {"id": 2197},
    ("indonli", "test"): {"id": 2201},  # test = test_lay
    ("indonli-mt", "train"): {"id": 10330},
    ("indonli-mt", "dev"): {"id": 2198 - 40},  # 40 rows have gold label '-'
    ("klue-nli", "dev"): {"ko": 3000},
    ("hellaswag", "train"): {"en": 9042},  # the validation file's first 9,042 items; the last 1,000 are dev
    ("hellaswag", "dev"): {"en": 1000},
    ("cosmosqa", "train"): {"en": 2485},  # the validation file's first 2,485 questions; the last 500 are dev
    ("cosmosqa", "dev"): {"en": 500},
    ("pawsx", "dev"): {lang: 2000 for lang in ["en", "de", "ko", "zh"]},
    ("pawsx", "test"): {lang: 2000 for lang in ["en", "de", "ko", "zh"]},  # the four with gold test labels
    ("pawsx-dev", "dev"): {lang: 2000 for lang in ["en", "de", "es", "fr", "ja", "ko", "zh"]},
    ("tatoeba", "test"): {lang: {"jav": 205, "kat": 746, "kaz": 575, "mal": 687, "swh": 390, "tam": 307, "tel": 234,
                                 "tha": 548}.get(lang, 1000) for lang in TATOEBA_LANGUAGES},
    ("tydiqa", "train"): {"en": 3696, "ko": 1625, "sw": 2755},  # train exists in these three only
    ("tydiqa", "dev"): {"en": 440, "ar": 921, "bn": 113, "fi": 782, "id": 565, "ko": 276, "ru": 812, "sw": 499,
                        "te": 669},
    ("xquad", "test"): {lang: 1190 for lang in ["en", "de", "es", "tr", "vi", "zh"]},
    # unlabelled text: rows as read (featurizing keeps each distinct text once)
    ("text-xnli", "train"): {lang: 2490 for lang in XNLI_LANGUAGES},
    ("text-indonli", "train"): {"id": 10330},
    ("text-tydiqa", "train"): {"en": 3696, "ko": 1625, "sw": 2755},
    ("text-tydiqa-dev", "train"): {"ar": 921, "bn": 113, "en": 440, "fi": 782, "id": 565, "ko": 276, "ru": 812,
                                   "sw": 499, "te": 669},
}
UDPOS_TEST = {"af": 425, "ar": 1680, "bg": 1116, "de": 977, "el": 456, "en": 5440, "es": 3147, "et": 3760, "eu": 1799,
              "fa": 600, "fi": 4422, "fr": 5009, "he": 491, "hi": 2684, "hu": 449, "id": 1557, "it": 3518, "ja": 2372,
              "kk": 1047, "ko": 4276, "lt": 739, "mr": 47, "nl": 1471, "pl": 4942, "pt": 2681, "ro": 2272, "ru": 8976,
              "ta": 120, "te": 146, "th": 1000, "tl": 55, "tr": 4785, "uk": 892, "ur": 535, "vi": 800, "wo": 470,
              "yo": 100, "zh": 3455}
PANX_DEV_LANGUAGES = ("af ar az bg bn de el en es et eu fa fi fr gu he hi hu id it ja jv ka kk ko lt ml mr ms my nl pa "
                      "pl pt qu ro ru sw ta te tl tr uk ur vi yo zh").split()
MASAKHANER = {"bam": (4462, 638, 1274), "ewe": (3505, 501, 1001), "hau": (5716, 816, 1633), "ibo": (7634, 1090, 2181),
              "kin": (7825, 1118, 2235), "lug": (4942, 706, 1412), "luo": (5161, 737, 1474), "nya": (6250, 893, 1785),
              "pcm": (5646, 806, 1613), "sna": (6207, 887, 1773), "swa": (6593, 942, 1883), "tsn": (3489, 499, 996),
              "twi": (4240, 605, 1211), "wol": (4593, 656, 1312), "xho": (5718, 817, 1633), "yor": (6876, 983, 1964),
              "zul": (5848, 836, 1670)}
EXPECTED_ROWS |= {  # sentences (token tasks) or items per language, as the data README states them
    ("udpos", "train"): {"en": 21253, "af": 1315, "eu": 5396, "kk": 31, "mr": 373, "ta": 400, "te": 1051, "tr": 3664,
                         "ur": 4043, "vi": 1400, "wo": 1188},
    ("udpos", "dev"): {"en": 3974, "af": 194, "eu": 1798, "mr": 46, "ta": 80, "te": 131, "tr": 988, "ur": 552,
                       "vi": 800, "wo": 449},
    ("udpos", "test"): UDPOS_TEST,
    ("panx", "train"): {"en": 20000, "kk": 1000, "sw": 1000, "te": 1000, "gu": 100, "jv": 100, "my": 100, "pa": 100,
                        "qu": 100, "yo": 100},
    ("panx", "dev"): {lang: 1000 if lang in "af az bn hi kk ml mr ms sw ta te tl ur".split() else
                      100 if lang in "gu jv my pa qu yo".split() else 10000 for lang in PANX_DEV_LANGUAGES},
    **{("masakhaner", split): {lang: counts[i] for lang, counts in MASAKHANER.items()}
       for i, split in enumerate(("train", "dev", "test"))},
    **{("sib200", split): {lang: n for lang in load_registry().get("sib200").languages}
       for split, n in (("train", 701), ("dev", 99), ("test", 204))},
}
HUB_ONLY = {"anli", "commonsense_qa", "social_i_qa", "squad", "mlqa", "xquad-hub"}
AMERICAS_RANGES = {"dev": (222, 743), "test": (738, 750)}
SKIPPED = {("indonli-mt", "dev"): 40}


def _local_splits() -> list[tuple[str, str]]:
    registry = load_registry()
    return sorted((name, split) for name, spec in registry.tasks.items() if spec.local for split in spec.local.files)


# --- built-in tasks -----------------------------------------------------------------------------------------


def test_builtin_registry_loads_every_yaml():
    registry = load_registry()
    files = sorted(BUILTIN_DIR.glob("*.yaml"))
    assert len(files) == len(registry.tasks) == 33
    assert set(registry.tasks) == {
        "americasnli", "indonli", "indonli-mt", "klue-nli", "mnli", "qnli", "qqp", "rte", "snli", "sst2", "xnli",
        "udpos", "panx", "masakhaner", "sib200",
        "hellaswag", "cosmosqa", "tatoeba", "pawsx", "pawsx-dev", "tydiqa", "xquad", "text-xnli", "text-indonli",
        "text-americasnli", "text-tydiqa", "text-tydiqa-dev", *HUB_ONLY}
    for name, spec in registry.tasks.items():
        assert spec.name == name
        # every built-in task but the Hub-only ones has local files in the shared data
        assert (spec.local is None) == (name in HUB_ONLY), name
        if spec.type == "classification":
            assert len(set(spec.labels)) == len(spec.labels) >= 2
    assert registry.get("tatoeba").languages == TATOEBA_LANGUAGES
    assert registry.get("xnli").languages == XNLI_LANGUAGES
    assert registry.get("americasnli").languages == AMERICAS
    assert registry.get("mnli").labels == registry.get("xnli").labels == NLI


def test_every_local_split_is_covered_by_the_expectations():
    covered = set(EXPECTED_ROWS) | {("americasnli", split) for split in AMERICAS_RANGES} | {("text-americasnli", "train")}
    assert set(_local_splits()) == covered


@pytest.mark.parametrize(("task", "split"), _local_splits())
def test_builtin_split_reads_real_data(shared_data_dir, task, split):
    spec = load_registry().get(task)
    counts = {}
    for language in EXPECTED_ROWS.get((task, split), spec.languages):
        data = read_split(spec, split, language, shared_data_dir)
        assert (data.task, data.split, data.language) == (task, split, language)
        assert data.labels == spec.labels
        assert data.skipped_unlabelled == SKIPPED.get((task, split), 0)
        assert Path(data.source).is_file() and Path(data.source).is_relative_to(shared_data_dir)
        assert len(data.sha256) == 64
        labels = {example.label for example in data.examples}
        if spec.type == "retrieval":
            assert labels == {-1}  # the target is the row itself
            assert all(example.text_a and example.text_b for example in data.examples)
        elif spec.type == "span_qa":  # gold answers at their offsets in the context
            assert labels == {-1} and all(e.answers and e.key for e in data.examples)
            assert all(e.text_b[start:start + len(text)] == text for e in data.examples for text, start in e.answers)
        elif spec.type == "masked_lm":
            assert labels == {-1} and all(e.text_b is None for e in data.examples)
        elif spec.type == "token_classification":  # a tag per word, every tag of the label set's
            assert labels == {-1} and all(len(e.words) == len(e.tags) > 0 for e in data.examples)
            assert len({tag for e in data.examples for tag in e.tags}) >= 2
        else:
            assert labels <= set(range(spec.choices or len(spec.labels)))
            assert len(labels) >= 2, "a real split has more than one label"
        for example in data.examples[:50]:
            assert isinstance(example.text_a, str) and example.text_a
            assert (example.text_b is None) == (task in ("sst2", "sib200")
                                                or spec.type in ("multiple_choice", "masked_lm", "token_classification"))
            assert len(example.choices) == (spec.choices or 0)
        counts[language] = len(data.examples)
    if task in ("americasnli", "text-americasnli"):
        low, high = AMERICAS_RANGES["dev" if task == "text-americasnli" else split]  # its dev premises
        assert all(low <= n <= high for n in counts.values()), counts
        assert min(counts.values()) == low and max(counts.values()) == high, counts
    else:
        assert counts == EXPECTED_ROWS[(task, split)]


def test_first_rows_match_the_raw_files(shared_data_dir):
    registry = load_registry()
    xnli = read_split(registry.get("xnli"), "dev", "sw", shared_data_dir)
    first = (shared_data_dir / "xnli" / "dev-sw.tsv").read_text(encoding="utf-8").split("\n")[0].split("\t")
    assert xnli.examples[0] == Example(first[0], first[1], NLI.index(first[2]))
    # IndoNLI maps e/n/c to the label names
    indo = read_split(registry.get("indonli"), "dev", "id", shared_data_dir)
    assert indo.examples[0].label == NLI.index("contradiction")  # the first val row has label "c"
    assert indo.examples[0].text_b == "Manuskrip tersebut tidak mencatat laporan kematian."
    # QQP maps "0"/"1" to not_duplicate/duplicate; both occur
    qqp = read_split(registry.get("qqp"), "dev", "en", shared_data_dir)
    assert {e.label for e in qqp.examples} == {0, 1}
    # sha256 is the file's
    path = shared_data_dir / "glue" / "RTE" / "dev.json"
    rte = read_split(registry.get("rte"), "dev", "en", shared_data_dir)
    assert rte.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_indonli_mt_skips_exactly_the_unlabelled_rows(shared_data_dir):
    path = shared_data_dir / "indonli" / "translate_train_small" / "dev.jsonl"
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    unlabelled = sum('"gold_label": "-"' in line for line in lines)
    assert (len(lines), unlabelled) == (2198, 40)
    data = read_split(load_registry().get("indonli-mt"), "dev", "id", shared_data_dir)
    assert (len(data.examples), data.skipped_unlabelled) == (2158, 40)


def test_unknown_language_and_split(shared_data_dir):
    registry = load_registry()
    with pytest.raises(XstiltsError) as excinfo:
        read_split(registry.get("xnli"), "dev", "xx", shared_data_dir)
    one_line_error(excinfo, "'xnli'", "'xx'")
    with pytest.raises(XstiltsError) as excinfo:
        read_split(registry.get("xnli"), "train", "en", shared_data_dir)  # XNLI has no local train split
    one_line_error(excinfo, "'xnli'", "'train'")


def test_missing_data_file_names_the_path(tmp_path):
    with pytest.raises(XstiltsError) as excinfo:
        read_split(load_registry().get("mnli"), "dev", "en", tmp_path)
    one_line_error(excinfo, str(tmp_path / "glue" / "MNLI" / "dev.json"), "not found")


# --- user tasks (YAML only, no code) ------------------------------------------------------------------------

USER_TASK = """\
name: toy-sentiment
description: a user task declared in YAML only
labels: [negative, positive]
languages: [en, de]
local:
  format: tsv
  files: {{train: 'toy/train-{{language}}.tsv', dev: 'toy/dev-{{language}}.tsv'}}
  header: {header}
  columns: {columns}
  label_map: {{'0': negative, '1': positive}}
"""


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _user_task_folder(tmp_path: Path, header: bool = True, name: str = "tasks") -> Path:
    columns = "{text_a: sentence, label: label}" if header else "{text_a: 1, label: 0}"
    return _write(tmp_path / name / "toy.yaml",
                  USER_TASK.format(header=str(header).lower(), columns=columns)).parent


def test_user_task_from_yaml_folder(tmp_path):
    folder = _user_task_folder(tmp_path)
    data_dir = tmp_path / "data"
    # quotes are literal with QUOTE_NONE; an empty line is ignored; label_map maps 0/1; label names pass too
    _write(data_dir / "toy" / "train-en.tsv",
           'sentence\tlabel\nA "great" film\t1\n\nawful, boring\t0\nfine\tpositive\n')
    _write(data_dir / "toy" / "train-de.tsv", "sentence\tlabel\nein toller Film\t1\n")
    registry = load_registry([folder])
    spec = registry.get("toy-sentiment")
    assert "mnli" in registry.tasks  # built-ins stay
    assert spec.labels == ["negative", "positive"] and spec.splits == ["train", "dev"]
    data = read_split(spec, "train", "en", data_dir)
    assert data.examples == [Example('A "great" film', None, 1), Example("awful, boring", None, 0),
                             Example("fine", None, 1)]
    assert data.source == str(data_dir / "toy" / "train-en.tsv")
    assert read_split(spec, "train", "de", data_dir).examples == [Example("ein toller Film", None, 1)]


def test_user_task_without_header_uses_column_indices(tmp_path):
    folder = _user_task_folder(tmp_path, header=False)
    data_dir = tmp_path / "data"
    _write(data_dir / "toy" / "dev-en.tsv", "1\tgood\n0\tbad\n")
    data = read_split(load_registry([folder]).get("toy-sentiment"), "dev", "en", data_dir)
    assert data.examples == [Example("good", None, 1), Example("bad", None, 0)]


def test_user_task_via_environment_and_override_order(tmp_path, monkeypatch):
    first = _user_task_folder(tmp_path, header=True, name="first")
    second = _user_task_folder(tmp_path, header=False, name="second")
    for folder in (first, second):
        with open(folder / "toy.yaml", "a") as handle:
            handle.write("override: true\n")  # a name defined twice needs this
    # a user folder may also override a built-in task
    _write(second / "mnli.yaml", "name: mnli\noverride: true\nlabels: [same, different]\nlocal: {format: jsonl, "
                                 "files: {train: m.jsonl}, columns: {text_a: a, label: l}}\n")
    monkeypatch.setenv("XSTILTS_TASK_DIRS", os.pathsep.join([str(first), str(second)]))
    registry = load_registry()
    assert registry.get("toy-sentiment").local.header is False  # the later folder wins
    assert registry.get("mnli").labels == ["same", "different"]
    assert registry.get("xnli").labels == NLI
    # folders given in code come after the environment's
    assert load_registry([first]).get("toy-sentiment").local.header is True
    data_dir = tmp_path / "data"
    _write(data_dir / "m.jsonl", '{"a": "x", "l": "same"}\n{"a": "y", "l": "different"}\n')
    assert [e.label for e in read_split(registry.get("mnli"), "train", "en", data_dir).examples] == [0, 1]


def test_missing_task_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("XSTILTS_TASK_DIRS", str(tmp_path / "nowhere"))
    with pytest.raises(XstiltsError) as excinfo:
        load_registry()
    one_line_error(excinfo, str(tmp_path / "nowhere"), "not found")


# --- malformed input: one line naming the file and the row or key -------------------------------------------

NLI_TSV_TASK = """\
name: pairs
labels: [entailment, neutral, contradiction]
local:
  format: {format}
  header: {header}
  files: {{dev: pairs.{format}}}
  columns: {columns}
"""


def _pairs_spec(tmp_path: Path, fmt: str = "tsv", header: bool = True):
    columns = ("{text_a: 0, text_b: 1, label: 2}" if not header and fmt in ("tsv", "csv")
               else "{text_a: premise, text_b: hypothesis, label: label}")
    folder = _write(tmp_path / "tasks" / "pairs.yaml",
                    NLI_TSV_TASK.format(format=fmt, header=str(header).lower(), columns=columns)).parent
    return load_registry([folder]).get("pairs")


def test_missing_column_without_header(tmp_path):
    spec = _pairs_spec(tmp_path, header=False)
    path = _write(tmp_path / "data" / "pairs.tsv", "a\tb\tneutral\nonly premise\tneutral\n")
    with pytest.raises(XstiltsError) as excinfo:
        read_split(spec, "dev", "en", tmp_path / "data")
    one_line_error(excinfo, f"{path}:2:", "3 columns", "found 2")


def test_missing_column_with_header(tmp_path):
    spec = _pairs_spec(tmp_path, header=True)
    path = _write(tmp_path / "data" / "pairs.tsv",
                  "premise\thypothesis\tlabel\na\tb\tneutral\nc\td\tentailment\nonly premise\tneutral\n")
    with pytest.raises(XstiltsError) as excinfo:
        read_split(spec, "dev", "en", tmp_path / "data")
    one_line_error(excinfo, f"{path}:4:", "3 columns", "found 2")


def test_header_without_configured_column(tmp_path):
    spec = _pairs_spec(tmp_path, header=True)
    path = _write(tmp_path / "data" / "pairs.tsv", "premise\thypo\tlabel\na\tb\tneutral\n")
    with pytest.raises(XstiltsError) as excinfo:
        read_split(spec, "dev", "en", tmp_path / "data")
    one_line_error(excinfo, f"{path}:2:", "'hypothesis'")


def test_unknown_label(tmp_path):
    spec = _pairs_spec(tmp_path, header=True)
    path = _write(tmp_path / "data" / "pairs.tsv",
                  "premise\thypothesis\tlabel\na\tb\tneutral\nc\td\tmaybe\n")
    with pytest.raises(XstiltsError) as excinfo:
        read_split(spec, "dev", "en", tmp_path / "data")
    one_line_error(excinfo, f"{path}:3:", "'maybe'", "entailment, neutral, contradiction")


def test_empty_file(tmp_path):
    spec = _pairs_spec(tmp_path, header=True)
    path = _write(tmp_path / "data" / "pairs.tsv", "")
    with pytest.raises(XstiltsError) as excinfo:
        read_split(spec, "dev", "en", tmp_path / "data")
    one_line_error(excinfo, str(path), "empty")


def test_header_only_file_has_no_examples(tmp_path):
    spec = _pairs_spec(tmp_path, header=True)
    path = _write(tmp_path / "data" / "pairs.tsv", "premise\thypothesis\tlabel\n")
    with pytest.raises(XstiltsError) as excinfo:
        read_split(spec, "dev", "en", tmp_path / "data")
    one_line_error(excinfo, str(path), "no labelled examples")


def test_invalid_json_line(tmp_path):
    spec = _pairs_spec(tmp_path, fmt="jsonl")
    path = _write(tmp_path / "data" / "pairs.jsonl",
                  '{"premise": "a", "hypothesis": "b", "label": "neutral"}\n\n{"premise": "a", "hypothesis": \n')
    with pytest.raises(XstiltsError) as excinfo:
        read_split(spec, "dev", "en", tmp_path / "data")
    one_line_error(excinfo, f"{path}:3:", "invalid JSON")


def test_invalid_json_file(tmp_path):
    spec = _pairs_spec(tmp_path, fmt="json")
    path = _write(tmp_path / "data" / "pairs.json", '{\n "0": {"premise": "a",\n "hypothesis": }\n}\n')
    with pytest.raises(XstiltsError) as excinfo:
        read_split(spec, "dev", "en", tmp_path / "data")
    one_line_error(excinfo, f"{path}:3:", "invalid JSON")


def test_jsonl_record_missing_field(tmp_path):
    spec = _pairs_spec(tmp_path, fmt="jsonl")
    path = _write(tmp_path / "data" / "pairs.jsonl",
                  '{"premise": "a", "hypothesis": "b", "label": "neutral"}\n{"premise": "a", "label": "neutral"}\n')
    with pytest.raises(XstiltsError) as excinfo:
        read_split(spec, "dev", "en", tmp_path / "data")
    one_line_error(excinfo, f"{path}:2:", "'hypothesis'")


@pytest.mark.parametrize(("name", "suggestion"), [("mnlli", "mnli"), ("xnl", "xnli"), ("indonli_mt", "indonli-mt")])
def test_unknown_task_suggests_close_name(name, suggestion):
    with pytest.raises(XstiltsError) as excinfo:
        load_registry().get(name)
    one_line_error(excinfo, f"unknown task {name!r}", f"did you mean {suggestion!r}")


def test_unknown_task_without_close_name():
    with pytest.raises(XstiltsError) as excinfo:
        load_registry().get("zzzzzz")
    message = one_line_error(excinfo, "'zzzzzz'")
    assert "did you mean" not in message


GOOD_TASK = {"name": "t", "labels": "[a, b]", "local": "{format: tsv, files: {train: x.tsv}, columns: {text_a: 0, label: 1}}"}


def _task_yaml(tmp_path: Path, **fields: str) -> Path:
    return _write(tmp_path / "tasks" / "t.yaml", "".join(f"{key}: {value}\n" for key, value in fields.items()))


@pytest.mark.parametrize(("fields", "key"), [
    ({**GOOD_TASK, "descripton": "typo of an optional key"}, "descripton"),
    ({**GOOD_TASK, "local": "{format: tsv, files: {train: x.tsv}, columns: {text_a: 0, label: 1}, hedaer: false}"},
     "local.hedaer"),
    ({"name": "t", "lables": "[a, b]", "local": GOOD_TASK["local"]}, "lables"),  # typo of a required key
    ({**GOOD_TASK, "local": "{formatt: tsv, files: {train: x.tsv}, columns: {text_a: 0, label: 1}}"}, "local.formatt"),
], ids=["descripton", "local.hedaer", "lables", "local.formatt"])
def test_bad_key_in_task_yaml_is_named(tmp_path, fields, key):
    path = _task_yaml(tmp_path, **fields)
    with pytest.raises(XstiltsError) as excinfo:
        load_registry([path.parent]).get("t")
    one_line_error(excinfo, str(path), f"unknown key {key!r}")


@pytest.mark.parametrize(("fields", "parts"), [
    ({**GOOD_TASK, "type": "regression"}, ["'type'"]),
    ({**GOOD_TASK, "local": "{format: xml, files: {train: x.xml}, columns: {text_a: 0, label: 1}}"}, ["'local.format'"]),
    ({**GOOD_TASK, "local": "{format: tsv, files: {train: x.tsv}, columns: {text_a: 0}}"}, ["`label`"]),
    ({"name": "t", "labels": "[a, b]"}, ["`local` or a `hub` source"]),
])
def test_invalid_value_in_task_yaml(tmp_path, fields, parts):
    path = _task_yaml(tmp_path, **fields)
    with pytest.raises(XstiltsError) as excinfo:
        load_registry([path.parent]).get("t")
    one_line_error(excinfo, str(path), *parts)


def test_invalid_yaml_syntax(tmp_path):
    path = _write(tmp_path / "tasks" / "t.yaml", "name: t\nlabels: [a, b\n")
    with pytest.raises(XstiltsError) as excinfo:
        load_registry([path.parent]).get("t")
    one_line_error(excinfo, str(path), "invalid YAML")


def test_yml_files_count_and_a_broken_file_hides_no_valid_task(tmp_path, capsys):
    folder = tmp_path / "tasks"
    _write(folder / "good.yml", "".join(f"{key}: {value}\n" for key, value in {**GOOD_TASK, "name": "good"}.items()))
    broken = _write(folder / "broken.yaml", "name: broken\nlabels: [a, b\n")
    registry = load_registry([folder])
    assert registry.get("good").labels == ["a", "b"]
    assert f"xstilts: warning: skipped task file {broken}" in capsys.readouterr().err
    with pytest.raises(XstiltsError) as excinfo:
        registry.get("broken")
    one_line_error(excinfo, str(broken), "invalid YAML")
    with pytest.raises(XstiltsError) as excinfo:
        registry.get("goood")
    one_line_error(excinfo, "did you mean 'good'?", f"1 task file(s) could not be read: {broken}")


# --- text that is not what it seems: encodings, NUL bytes, nulls, odd rows ------------------------------------


def test_byte_order_mark_is_read_as_such(tmp_path):
    spec = _pairs_spec(tmp_path, header=True)
    _write(tmp_path / "data" / "pairs.tsv", "\ufeffpremise\thypothesis\tlabel\na\tb\tneutral\n")
    assert read_split(spec, "dev", "en", tmp_path / "data").examples == [Example("a", "b", 1)]


@pytest.mark.parametrize(("fmt", "content", "parts"), [
    ("tsv", b"premise\thypothesis\tlabel\na\tb\tneutral\nc\xff\td\tneutral\n", [":3:", "not UTF-8 text", "column 2"]),
    ("jsonl", b'{"premise": "a", "hypothesis": "b", "label": "neutral"}\n{"premise": "\xc3"}\n', [":2:", "not UTF-8"]),
    ("tsv", b"premise\thypothesis\tlabel\na\x00\tb\tneutral\n", [":2:", "field 'text_a' holds a NUL byte"]),
    ("jsonl", b'{"premise": null, "hypothesis": "b", "label": "neutral"}\n', [":1:", "field 'premise' is null"]),
    ("json", b"42", ["expected a JSON object or array of records, found int"]),
], ids=["bad-utf8-tsv", "bad-utf8-jsonl", "nul-byte", "json-null", "json-number"])
def test_text_that_is_not_text_is_named(tmp_path, fmt, content, parts):
    spec = _pairs_spec(tmp_path, fmt=fmt, header=True)
    path = tmp_path / "data" / f"pairs.{fmt}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    with pytest.raises(XstiltsError) as excinfo:
        read_split(spec, "dev", "en", tmp_path / "data")
    one_line_error(excinfo, str(path), *parts)


def test_extra_fields_and_runaway_quotes_are_read_with_a_warning(tmp_path, capsys):
    spec = _pairs_spec(tmp_path, header=True)
    path = _write(tmp_path / "data" / "pairs.tsv", "premise\thypothesis\tlabel\na\tb\tneutral\tstray\nc\td\tneutral\n")
    assert len(read_split(spec, "dev", "en", tmp_path / "data").examples) == 2
    assert f"xstilts: warning: {path}:2: more fields than the header names; the extra fields of 1 row(s)" \
        in capsys.readouterr().err
    spec = _pairs_spec(tmp_path, fmt="csv", header=True)
    path = _write(tmp_path / "data" / "pairs.csv",
                  'premise,hypothesis,label\na,b,neutral\n"c,d,neutral\ne,f,neutral\ng",h,neutral\ni,j,neutral\n')
    assert len(read_split(spec, "dev", "en", tmp_path / "data").examples) == 3  # the quote swallowed two rows
    assert f"xstilts: warning: {path}:3: 1 record(s) run over several lines" in capsys.readouterr().err


@pytest.mark.parametrize("placeholder", ["lang", "0"])
def test_unknown_placeholder_in_file_names_is_named(tmp_path, placeholder):
    path = _task_yaml(tmp_path, **{**GOOD_TASK, "local": f"{{format: tsv, files: {{train: 'x-{{{placeholder}}}.tsv'}}, "
                                                         "columns: {text_a: 0, label: 1}}"})
    with pytest.raises(XstiltsError) as excinfo:
        load_registry([path.parent]).get("t")
    one_line_error(excinfo, str(path), f"unknown placeholder {{{placeholder}}}", "the only one is {language}")


def test_a_task_defined_twice_needs_an_explicit_override(tmp_path):
    first = _user_task_folder(tmp_path, name="first")
    second = _user_task_folder(tmp_path, header=False, name="second")
    with pytest.raises(XstiltsError) as excinfo:
        load_registry([first, second])
    one_line_error(excinfo, str(second / "toy.yaml"), f"'toy-sentiment' is already defined in {first / 'toy.yaml'}",
                   "override: true")


def test_relative_file_names_stay_inside_the_data_folder(tmp_path):
    data_dir = tmp_path / "data"
    outside = _write(tmp_path / "outside.tsv", "premise\thypothesis\tlabel\na\tb\tneutral\n")
    cases = [("{dev: ../outside.tsv}", "", "'../outside.tsv' is outside the folder"),
             (f"{{dev: '{outside}'}}", "", "is an absolute path; set `absolute_paths: true`"),
             (f"{{dev: '{outside}'}}", "  absolute_paths: true\n", None)]
    data_dir.mkdir(exist_ok=True)
    for files, allow, error in cases:
        path = _write(tmp_path / "tasks" / "pairs.yaml", NLI_TSV_TASK.format(
            format="tsv", header="true", columns="{text_a: premise, text_b: hypothesis, label: label}")
            .replace("{dev: pairs.tsv}", files) + allow)
        spec = load_registry([path.parent]).get("pairs")
        if error is None:
            assert read_split(spec, "dev", "en", data_dir).examples == [Example("a", "b", 1)]
        else:
            with pytest.raises(XstiltsError) as excinfo:
                read_split(spec, "dev", "en", data_dir)
            one_line_error(excinfo, error)


def test_home_and_variables_are_expanded_in_task_folders_and_file_names(tmp_path, monkeypatch):
    monkeypatch.setenv("MY_DATA", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("HOME", str(tmp_path))
    _write(tmp_path / "elsewhere" / "pairs.tsv", "premise\thypothesis\tlabel\na\tb\tneutral\n")
    _write(tmp_path / "tasks" / "pairs.yaml", NLI_TSV_TASK.format(
        format="tsv", header="true", columns="{text_a: premise, text_b: hypothesis, label: label}")
        .replace("{dev: pairs.tsv}", "{dev: $MY_DATA/pairs.tsv}") + "  absolute_paths: true\n")
    spec = load_registry([Path("~/tasks")]).get("pairs")
    assert read_split(spec, "dev", "en", tmp_path).examples == [Example("a", "b", 1)]


# --- real data layouts --------------------------------------------------------------------------------------


def test_numeric_columns_with_a_header_and_skipped_rows(tmp_path):
    path = _write(tmp_path / "tasks" / "pairs.yaml", NLI_TSV_TASK.format(
        format="tsv", header="true", columns="{text_a: 1, text_b: hypothesis, label: 0}") + "  skip_rows: 2\n")
    _write(tmp_path / "data" / "pairs.tsv", "# exported 2026-11-27\n# by a script\nlabel\tpremise\thypothesis\n"
                                            "neutral\ta\tb\ncontradiction\tc\td\n")
    spec = load_registry([path.parent]).get("pairs")
    assert read_split(spec, "dev", "en", tmp_path / "data").examples == [Example("a", "b", 1), Example("c", "d", 2)]


def test_column_names_per_language(tmp_path):
    """AfriXNLI-style files name their columns premise_yo, premise_ig, ..."""
    path = _write(tmp_path / "tasks" / "pairs.yaml", NLI_TSV_TASK.format(
        format="tsv", header="true", columns="{text_a: 'premise_{language}', text_b: 'hypothesis_{language}', "
                                             "label: label}").replace("pairs.tsv", "'pairs-{language}.tsv'")
        .replace("labels:", "languages: [yo, ig]\nlabels:"))
    _write(tmp_path / "data" / "pairs-yo.tsv", "premise_yo\thypothesis_yo\tlabel\nyo-a\tyo-b\tneutral\n")
    _write(tmp_path / "data" / "pairs-ig.tsv", "premise_ig\thypothesis_ig\tlabel\nig-a\tig-b\tentailment\n")
    spec = load_registry([path.parent]).get("pairs")
    assert read_split(spec, "dev", "yo", tmp_path / "data").examples == [Example("yo-a", "yo-b", 1)]
    assert read_split(spec, "dev", "ig", tmp_path / "data").examples == [Example("ig-a", "ig-b", 0)]


def test_labels_from_another_file_row_by_row(tmp_path):
    """A machine-translated test set without labels takes them from its labelled English original."""
    data = tmp_path / "data"
    english = _write(data / "xnli" / "test-en.tsv", "p1\th1\tneutral\np2\th2\tentailment\np3\th3\tcontradiction\n")
    _write(data / "mt" / "test-my.tsv", "my-p1\tmy-h1\nmy-p2\tmy-h2\nmy-p3\tmy-h3\n")
    path = _write(tmp_path / "tasks" / "mt.yaml", """\
name: xnli-mt
labels: [entailment, neutral, contradiction]
languages: [my]
local:
  format: tsv
  header: false
  files: {test: 'mt/test-{language}.tsv'}
  columns: {text_a: 0, text_b: 1}
  labels_from: {file: xnli/test-en.tsv, column: 2}
""")
    spec = load_registry([path.parent]).get("xnli-mt")
    examples = read_split(spec, "test", "my", data).examples
    assert examples == [Example("my-p1", "my-h1", 1), Example("my-p2", "my-h2", 0), Example("my-p3", "my-h3", 2)]
    english.write_text("p1\th1\tneutral\np2\th2\tentailment\n")  # one row short: the files no longer align
    with pytest.raises(XstiltsError) as excinfo:
        read_split(spec, "test", "my", data)
    one_line_error(excinfo, str(data / "mt" / "test-my.tsv"), "3 rows, but its labels_from file", "has 2",
                   "must align one to one")


def test_labels_from_another_file_by_key(tmp_path):
    data = tmp_path / "data"
    _write(data / "gold.csv", "id,label\nb,entailment\na,neutral\n")
    _write(data / "mt.csv", "id,premise,hypothesis\na,pa,ha\nb,pb,hb\nc,pc,hc\n")
    path = _write(tmp_path / "tasks" / "mt.yaml", """\
name: keyed
labels: [entailment, neutral, contradiction]
local:
  format: csv
  files: {test: mt.csv}
  columns: {text_a: premise, text_b: hypothesis}
  labels_from: {file: gold.csv, header: true, column: label, key: id, data_key: id}
""")
    spec = load_registry([path.parent]).get("keyed")
    with pytest.raises(XstiltsError) as excinfo:
        read_split(spec, "test", "en", data)
    one_line_error(excinfo, f"{data / 'mt.csv'}:4: key 'c' is not in the labels_from file")
    _write(data / "mt.csv", "id,premise,hypothesis\na,pa,ha\nb,pb,hb\n")
    assert read_split(spec, "test", "en", data).examples == [Example("pa", "ha", 1), Example("pb", "hb", 0)]


def test_file_names_relative_to_the_task_file(tmp_path):
    path = _write(tmp_path / "my-tasks" / "pairs.yaml", NLI_TSV_TASK.format(
        format="tsv", header="true", columns="{text_a: premise, text_b: hypothesis, label: label}")
        .replace("{dev: pairs.tsv}", "{dev: data/pairs.tsv}") + "  relative_to: task\n")
    _write(tmp_path / "my-tasks" / "data" / "pairs.tsv", "premise\thypothesis\tlabel\na\tb\tneutral\n")
    (tmp_path / "data").mkdir()
    spec = load_registry([path.parent]).get("pairs")
    assert read_split(spec, "dev", "en", tmp_path / "data").examples == [Example("a", "b", 1)]


def test_pawsx_fields_are_read_with_csv_quoting(shared_data_dir):
    """Line 19 of test-de.tsv starts with a quoted field holding doubled quotes (three quote marks, then
    Angel Eyes, then two)."""
    example = read_split(load_registry().get("pawsx"), "test", "de", shared_data_dir).examples[18]
    assert example.text_a.startswith('"Angel Eyes" ist ein beliebter Song aus dem Jahre 1946')
    assert example.label == 0  # different


@pytest.mark.parametrize("task, record, expected", [
    ("commonsense_qa", {"question": "Where?", "choices": {"label": list("ABCDE"), "text": list("vwxyz")},
                        "answerKey": "C"}, ("Where?", ("v", "w", "x", "y", "z"), 2)),
    ("social_i_qa", {"context": "Ann left.", "question": "Why?", "answerA": "a", "answerB": "b", "answerC": "c",
                     "label": "3"}, ("Ann left. Why?", ("a", "b", "c"), 2)),
    ("anli", {"premise": "p", "hypothesis": "h", "label": 2}, ("p", "h", 2)),
])
def test_hub_only_tasks_map_their_records(monkeypatch, task, record, expected):
    """What the Hub specs of tasks with no local copy make of a record of their data set's schema (the
    download itself needs internet; `datasets.load_dataset` hands over the record here)."""
    import datasets

    monkeypatch.setattr(datasets, "load_dataset", lambda path, name, split, revision=None: [record])
    example = read_split(load_registry().get(task), "dev", "en", None).examples[0]
    second = example.choices if example.choices else example.text_b
    assert (example.text_a, second, example.label) == expected
