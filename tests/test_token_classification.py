"""Token classification: word-per-line files (tab, space, CoNLL-U) read into sentences, bad lines stop in one
line naming file:line; each word is tagged on its first XLM-R piece, long sentences become windows that keep
every word's tag once; span F1 equals seqeval's; a tiny model learns PAN-X English; the built-in tasks list."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from seqeval.metrics import f1_score
from transformers import AutoTokenizer

from xstilts.config import parse_config
from xstilts.errors import XstiltsError
from xstilts.features import Features
from xstilts.pipeline import run
from xstilts.report.statistics import linearized_ratio
from xstilts.task_types import score_outcomes, task_kind
from xstilts.task_types.token_classification import IGNORED, WIDTH, windows
from xstilts.tasks import load_registry
from xstilts.task_types.catalogue import describe_tasks
from xstilts.task_types import read_split
from helpers import learning_run, one_line_error

DATA = Path(os.environ.get("XSTILTS_DATA_DIR", Path(__file__).parents[2] / "shared" / "data"))
FIXTURES = Path(__file__).parent / "fixtures" / "treebank"
NER = "labels: [O, B-PER, I-PER, B-LOC, I-LOC]\nmetric: f1\n"


def _task(root: Path, text: str | bytes, yaml_extra: str = "", local: str = "", name: str = "tags.txt") -> tuple:
    """A token task (and its one file, written with `text`, as its train split): its spec and the file."""
    (root / "tasks").mkdir(exist_ok=True)
    (root / "tasks" / "tags.yaml").write_text(
        "name: tags\ntype: token_classification\n" + (yaml_extra or NER)
        + f"local: {{format: conll, files: {{train: {name}}}{local}}}\n")
    path = root / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return load_registry([root / "tasks"]).get("tags"), path


def test_tab_files_read_a_sentence_per_blank_line_separated_block(tmp_path):
    spec, _ = _task(tmp_path, "Anna\tB-PER\nlives in\tO\nParis\tB-LOC\n\nHi\tO\n")
    examples = read_split(spec, "train", "en", tmp_path).examples
    assert [e.words for e in examples] == [("Anna", "lives in", "Paris"), ("Hi",)]
    assert [e.tags for e in examples] == [(1, 0, 3), (0,)]


def test_space_files_split_a_line_at_its_last_space_so_a_token_may_be_empty(tmp_path):
    spec, _ = _task(tmp_path, "Anna B-PER\n O\nSan Jose B-LOC\n\n", local=", separator: space")
    examples = read_split(spec, "train", "en", tmp_path).examples
    assert examples[0].words == ("Anna", "", "San Jose") and examples[0].tags == (1, 0, 3)


def test_a_conllu_treebank_joins_by_one_yaml_skipping_comments_ranges_and_empty_nodes():
    spec = load_registry([FIXTURES]).get("tiny-treebank")
    examples = read_split(spec, "test", "de", DATA).examples
    assert [e.words for e in examples] == [("In", "dem", "Haus", "schläft", "der", "Hund", "."),
                                           ("Anna", "liest", "."), ("Ja",)]
    assert [spec.labels[t] for t in examples[1].tags] == ["PROPN", "VERB", "PUNCT"]


@pytest.mark.parametrize("text, where, words", [
    (b"Anna\tB-PER\nParis\xff\tB-LOC\n", ":2:", ["not UTF-8"]),
    ("Anna\tB-PER\nParis\n", ":2:", ["no tag", "Paris"]),
    ("Anna\tB-PER\nParis\t\n", ":2:", ["no tag"]),
    ("Anna\tB-PER\n\nParis\tB-CITY\n", ":3:", ["unknown label 'B-CITY'"]),
    ("\n\nAnna\tB-PER\n\n\nParis\n", ":6:", ["no tag", "Paris"]),  # blank lines do not shift line numbers
])
def test_bad_lines_stop_in_one_line_naming_file_and_line(tmp_path, text, where, words):
    spec, path = _task(tmp_path, text)
    with pytest.raises(XstiltsError) as excinfo:
        read_split(spec, "train", "en", tmp_path)
    one_line_error(excinfo, f"{path}{where}", *words)


def test_blank_lines_at_the_start_the_end_and_repeated_between_sentences_are_one_separator(tmp_path):
    """XTREME's files have blank lines at their start and end and runs of them between sentences."""
    spec, _ = _task(tmp_path, "\n\r\nAnna\tB-PER\nlives\tO\n\n\n \t\nParis\tB-LOC\n\n\n")
    examples = read_split(spec, "train", "en", tmp_path).examples
    assert [e.words for e in examples] == [("Anna", "lives"), ("Paris",)]
    assert [e.tags for e in examples] == [(1, 0), (3,)]


@pytest.mark.parametrize("lines, where, words", [
    ("1\tJa\tja\tINTJ\t_\t_\t0\troot\t_\t_\n\n# only a comment\n1-2\tzum\t_\t_\t_\t_\t_\t_\t_\t_\n\n", ":3:",
     ["empty sentence"]),
    ("1\tJa\tja\t_\t_\t_\t0\troot\t_\t_\n", ":1:", ["no tag"]),
    ("1\tJa\tja\tINTJ\n", ":1:", ["10 tab-separated"]),
    ("# c\n1\tJa\tja\tINTJ\t_\t_\t0\troot\t_\t_\n2\tgut\tgut\tGOOD\t_\t_\t1\tx\t_\t_\n", ":3:", ["'GOOD'"]),
])
def test_bad_conllu_lines_stop_in_one_line_naming_file_and_line(tmp_path, lines, where, words):
    (tmp_path / "tb.yaml").write_text((FIXTURES / "tiny-treebank.yaml").read_text().replace(
        "{language}_tiny-ud-test.conllu", "bad.conllu"))
    (tmp_path / "bad.conllu").write_text(lines)
    with pytest.raises(XstiltsError) as excinfo:
        read_split(load_registry([tmp_path]).get("tiny-treebank"), "test", "de", DATA)
    one_line_error(excinfo, f"{tmp_path / 'bad.conllu'}{where}", *words)


def test_f1_needs_iob2_labels_and_metric_is_a_token_classification_option(tmp_path):
    with pytest.raises(XstiltsError) as excinfo:
        _task(tmp_path, "a\tO\n", "labels: [O, B-PER]\nmetric: f1\n")
    one_line_error(excinfo, "tags.yaml", "IOB2", "I-PER")
    (tmp_path / "tasks" / "tags.yaml").write_text("name: tags\nlabels: [a]\nmetric: f1\n"
                                                  "local: {format: tsv, files: {train: t.tsv}, columns: {text_a: 0, label: 1}}\n")
    with pytest.raises(XstiltsError) as excinfo:
        load_registry([tmp_path / "tasks"]).get("tags")
    one_line_error(excinfo, "tags.yaml", "token_classification option")


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_each_word_is_tagged_on_its_first_xlmr_piece(tmp_path, tokenizer):
    spec, _ = _task(tmp_path, "Anna\tB-PER\nKarenina\tI-PER\nunbelievably\tO\n\tO\nParis\tB-LOC\n")
    examples = read_split(spec, "train", "en", tmp_path).examples
    features = task_kind(spec).featurize(examples, tokenizer, 64, spec, "en")
    ids, labels = features.input_ids[0], features.labels[0]
    assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    firsts = [tokenizer.convert_ids_to_tokens(ids[p]) for p in np.flatnonzero(labels != IGNORED)]
    assert firsts == ["▁Anna", "▁Karen", "▁un", "<unk>", "▁Paris"]  # an empty token: the unknown piece
    assert [spec.labels[t] for t in labels[labels != IGNORED]] == ["B-PER", "I-PER", "O", "O", "B-LOC"]
    assert len(ids) > 7 and (labels[len(ids):] == IGNORED).all()


def test_windows_of_a_long_sentence_keep_every_words_tag_once(tmp_path, tokenizer):
    words = [(f"word{i}" if i % 3 else "unbelievably", ["O", "B-PER", "I-PER"][i % 3]) for i in range(70)]
    spec, _ = _task(tmp_path, "".join(f"{w}\t{t}\n" for w, t in words) + "\nshort\tO\n")
    examples = read_split(spec, "train", "en", tmp_path).examples
    features = task_kind(spec).featurize(examples, tokenizer, 24, spec, "en")
    assert (features.owners == 0).sum() >= 4 and max(features.lengths) <= 24
    assert features.labels.shape[1] == 24
    tagged = [features.labels[r][features.labels[r] != IGNORED] for r in np.flatnonzero(features.owners == 0)]
    assert np.concatenate(tagged).tolist() == list(examples[0].tags)  # every word once, in order
    # a perfect prediction scores every word, of every window, right
    predictions = np.full((len(features), WIDTH), -1, dtype=np.int16)
    predictions[:, :24] = features.labels
    kind = task_kind(spec.model_copy(update={"metric": "accuracy"}))
    outcomes = kind.outcomes(predictions, features, spec.labels)
    assert len(outcomes) == 71 and score_outcomes(kind, outcomes) == {"accuracy": 1.0}
    # and a word in the middle of a sentence is predicted by a window with context on both sides
    spans, chosen = windows([3] * 20, 12)
    assert spans[:2] == [(0, 4), (2, 6)] and all(spans[chosen[w]][0] < w < spans[chosen[w]][1] - 1
                                                 for w in range(1, 19))


SEQUENCES = [  # (gold, predicted): IOB2 edge cases
    (["O", "I-PER", "I-PER", "O"], ["O", "B-PER", "I-PER", "O"]),  # I- after O starts an entity
    (["B-PER", "I-LOC", "O"], ["B-PER", "I-PER", "O"]),  # a type change ends one entity and starts another
    (["O", "O", "B-LOC"], ["O", "O", "B-LOC"]),  # an entity at the sentence end
    (["O", "B-LOC", "I-LOC"], ["O", "B-LOC", "O"]),  # a truncated entity at the end
    (["O", "O"], ["O", "O"]),  # all O
    (["O", "O"], ["B-PER", "O"]),  # a spurious entity in an all-O sentence
    (["B-PER", "B-PER"], ["B-PER", "I-PER"]),  # two adjacent entities predicted as one
]


@pytest.mark.parametrize("cases", [SEQUENCES, SEQUENCES[:1], SEQUENCES[1:2], SEQUENCES[4:5], SEQUENCES[2:4]])
def test_span_f1_is_seqevals_on_edge_cases(tmp_path, cases):
    spec, _ = _task(tmp_path, "a\tO\n", "labels: [O, B-PER, I-PER, B-LOC, I-LOC]\nmetric: f1\n")
    outcomes = _outcomes(spec, cases)
    assert score_outcomes(task_kind(spec), outcomes)["f1"] == pytest.approx(
        f1_score([g for g, _ in cases], [p for _, p in cases], zero_division=0))
    assert all(0 <= row["f1"] <= 1 for row in outcomes)


def test_a_language_without_entities_scores_0_in_its_f1_and_in_the_reports_item_values(tmp_path):
    """No gold and no predicted entity in a whole language: seqeval's F1 is 0, and so are the task's corpus F1
    and the mean of the linearized item values the report checks it against."""
    spec, _ = _task(tmp_path, "a\tO\n")
    cases = [(["O", "O"], ["O", "O"]), (["O"], ["O"])]
    outcomes = _outcomes(spec, cases)
    counts = {name: np.array([row[name] for row in outcomes]) for name in ("found", "gold_entities", "predicted_entities")}
    items = linearized_ratio(2 * counts["found"], counts["gold_entities"] + counts["predicted_entities"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # seqeval warns that F1 is ill-defined, and gives 0
        expected = f1_score([g for g, _ in cases], [p for _, p in cases])
    assert expected == 0
    assert score_outcomes(task_kind(spec), outcomes)["f1"] == expected == items.mean()


def _outcomes(spec, cases: list[tuple[list[str], list[str]]]) -> list[dict]:
    """Outcomes of gold and predicted tag sequences, one window per sentence."""
    width = max(len(g) for g, _ in cases) + 2
    labels = np.full((len(cases), width), IGNORED)
    predictions = np.full((len(cases), WIDTH), -1, dtype=np.int16)
    for row, (gold, predicted) in enumerate(cases):
        labels[row, 1:len(gold) + 1] = [spec.labels.index(t) for t in gold]
        predictions[row, 1:len(gold) + 1] = [spec.labels.index(t) for t in predicted]
    features = Features([[0] * width] * len(cases), None, labels, owners=np.arange(len(cases)))
    return task_kind(spec).outcomes(predictions, features, spec.labels)


def test_the_builtin_token_files_read_through():
    registry = load_registry()
    for task, split, language, sentences in [("udpos", "dev", "mr", 46), ("panx", "dev", "yo", 100),
                                             ("masakhaner", "dev", "pcm", 806), ("sib200", "dev", "swh_Latn", 99)]:
        assert len(read_split(registry.get(task), split, language, DATA).examples) == sentences
    examples = read_split(registry.get("masakhaner"), "train", "xho", DATA).examples
    assert sum(word == "" for example in examples for word in example.words) == 2  # lines 44,520 and 74,513


def test_xstilts_tasks_lists_the_new_tasks():
    table = describe_tasks(load_registry(), DATA)
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in table.splitlines()}
    assert rows["udpos"][1:3] == ["token_classification", "accuracy"] and rows["udpos"][3].startswith("38: en")
    assert rows["panx"][1:3] == ["token_classification", "f1"] and rows["panx"][3].startswith("47: en")
    assert rows["panx"][4] == "train dev"
    assert rows["masakhaner"][1:3] == ["token_classification", "f1"] and rows["masakhaner"][3].startswith("17: bam")
    assert rows["sib200"][1:3] == ["classification", "accuracy"] and rows["sib200"][3].startswith("205: eng_Latn")
    assert rows["masakhaner"][5].strip(" |") == rows["sib200"][5].strip(" |") == "local"


def test_a_tiny_model_learns_panx_english(tmp_path, tiny_model_dir):
    config = learning_run(tiny_model_dir, DATA, FIXTURES, "panx")
    config["target"]["task"] = {"task": "panx", "languages": ["en"], "max_examples": 4000}
    config["target"]["train"] |= {"max_steps": 300, "eval_every": 300, "dev_max_examples": 100}
    config["evaluate"] = [{"task": "panx", "split": "dev", "languages": ["en"], "max_examples": 400}]
    metrics = run(parse_config(config, "test"), tmp_path / "run")
    score = metrics["evaluation"]["panx"]["dev"]["en"]
    table = (tmp_path / "run" / "eval-panx-dev" / "predictions" / "en.csv").read_text().splitlines()
    rows = [line.split(",") for line in table[1:]]
    assert len(rows) == 400 and score > 0.2  # F1: predicting every word O scores 0
    gold = [row[1].split(" ") for row in rows]
    predicted = [row[2].split(" ") for row in rows]
    assert score == pytest.approx(f1_score(gold, predicted))  # corpus-level, as seqeval computes it
