"""`write_report` end to end on a synthetic study directory with planted effects."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imread

from xstilts.errors import XstiltsError
from xstilts.report import write_report
from xstilts.report.analysis import analyse
from xstilts.report.findings import findings
from xstilts.report.plots import DRAW
from xstilts.report.results import load_results
from xstilts.task_types import item_column

XNLI = ["en", "fr", "es", "de", "el", "bg", "ru", "tr", "ar", "vi", "th", "zh", "hi", "sw", "ur"]
SEEDS = [1, 2, 3]
EXAMPLES = 100
BASE_SCORE = 0.55
# name, group, languages, size-matched, intermediate examples, planted gain in the score
ARMS = [
    ("baseline", "baseline", "", False, 0, 0.0),
    ("snli", "english", "en", False, 550_152, 0.08),
    ("qqp", "english", "en", True, 10_000, 0.06),
    ("indonli", "low-resource", "id", False, 10_330, 0.01),
    ("klue-nli", "low-resource", "ko", True, 10_000, 0.0),
]
OUTPUTS = ["report.md", "report.html", "summary.csv", "table.tex", "heatmap-xnli-test.png", "groups-xnli-test.png",
           "size-xnli-test.png"]


def _predictions(rng: np.random.Generator, metric: str, level: float, labels: np.ndarray) -> pd.DataFrame:
    """One run's per-example outcomes (by index) whose metric has expectation `level`: accuracy as a 0/1
    `correct` with label and prediction; span QA's f1 as a graded value in [0, 1] (U ** (1 / level - 1) has
    mean `level`), with exact_match where the span is exact."""
    if metric == "accuracy":
        correct = (rng.random(EXAMPLES) < level).astype(int)
        return pd.DataFrame({"index": np.arange(EXAMPLES), "label": labels,
                             "prediction": np.where(correct == 1, labels, (labels + 1) % 3), "correct": correct})
    f1 = np.round(rng.random(EXAMPLES) ** (1 / level - 1), 4)
    return pd.DataFrame({"index": np.arange(EXAMPLES), "prediction": [f"span {i}" for i in range(EXAMPLES)],
                         "f1": f1, "exact_match": (f1 == 1).astype(int)})


def make_study(root: Path, arms: list[tuple] = ARMS, seeds: list[int] = SEEDS, metric: str = "accuracy") -> Path:
    """A study directory: results.csv/.jsonl, one predictions CSV per row, study.json and manifest.json; its
    evaluation is scored by `metric` ('accuracy', or 'f1' as span QA scores it)."""
    rng = np.random.default_rng(7)
    labels = {language: rng.integers(0, 3, EXAMPLES) for language in XNLI}
    order = {language: rng.permutation(EXAMPLES) for language in XNLI}  # predictions files are not sorted by index
    column = item_column(metric)
    rows = []
    for arm, group, languages, matched, examples, gain in arms:
        for seed in seeds:
            for language in XNLI:
                outcomes = _predictions(rng, metric, BASE_SCORE + gain, labels[language])
                path = Path("nodes") / f"eval-{arm}-{seed}" / "predictions" / f"{language}.csv"
                (root / path).parent.mkdir(parents=True, exist_ok=True)
                outcomes.iloc[order[language]].to_csv(root / path, index=False)
                rows.append({"arm": arm, "group": group, "arm_languages": languages, "size_matched": matched,
                             "intermediate_examples": examples, "seed": seed, "task": "xnli", "split": "test",
                             "language": language, "metric": metric, "score": outcomes[column].mean(), "n": EXAMPLES,
                             "eval_node": f"eval-{arm}-{seed}", "target_node": f"target-{arm}-{seed}",
                             "intermediate_node": "" if arm == "baseline" else f"inter-{arm}-{seed}",
                             "predictions": str(path)})
    table = pd.DataFrame(rows)
    table.to_csv(root / "results.csv", index=False)
    (root / "results.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    train = {"epochs": 2.0, "lr": 3e-5, "batch_size": 32, "warmup_ratio": 0.1}
    study = {
        "name": "synthetic", "model": "embedded", "seeds": seeds, "max_length": 128, "intermediate_train": train,
        "target": {"task": {"task": "mnli", "split": "train", "languages": None, "max_examples": 2000},
                   "carry": "encoder", "train": train},
        "evaluate": [{"task": "xnli", "split": "test", "languages": None, "max_examples": EXAMPLES}],
        "arms": [{"name": arm, "group": group, "tasks": [{"task": arm, "split": "train", "languages": None,
                                                          "max_examples": None}],
                  "cap": 10_000 if matched else None, "sampling": "proportional", "train": None}
                 for arm, group, _, matched, _, _ in arms if group != "baseline"],
    }
    manifest = {"code": {"git_commit": "0123abcd", "dirty": False}, "libraries": {"torch": "2.13.0", "numpy": "2.4.6"},
                "data_files": {"xnli/test-en.tsv": "ab" * 32}, "timings_seconds": {"this_invocation": 3600.0}}
    (root / "study.json").write_text(json.dumps(study))
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The report of the synthetic study; its folder."""
    study = make_study(tmp_path_factory.mktemp("study"))
    return write_report(study).parent


def test_writes_every_output(report: Path) -> None:
    for name in OUTPUTS:
        assert (report / name).stat().st_size > 0, name
    page = (report / "report.html").read_text()
    sources = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert len(sources) == 3 and all(source.startswith("data:image/png;base64,") for source in sources)
    for name in OUTPUTS:
        if name.endswith(".png"):
            height, width, channels = imread(report / name).shape
            assert height > 300 and width > 600 and channels in (3, 4)


def _recomputed(study: Path, column: str = "correct") -> pd.DataFrame:
    """Mean over seeds of the mean of `column`, per arm and language, straight from the predictions files."""
    results = pd.read_csv(study / "results.csv")
    results["from_predictions"] = [pd.read_csv(study / path)[column].mean() for path in results["predictions"]]
    per_seed = results.pivot_table(index=["arm", "seed"], columns="language", values="from_predictions")
    per_seed["avg"] = per_seed[XNLI].mean(axis=1)
    return per_seed.groupby("arm").mean()


def test_main_table_matches_the_predictions(report: Path) -> None:
    expected = _recomputed(report.parent)
    summary = pd.read_csv(report / "summary.csv").set_index(["arm", "language"])
    markdown = (report / "report.md").read_text()
    for arm, _, _, _, _, _ in ARMS:
        row = next(line for line in markdown.splitlines() if line.startswith(f"| {arm} |"))
        cells = [cell.strip() for cell in row.strip("|").split("|")][1:]
        assert len(cells) == len(XNLI) + 1
        for language, cell in zip([*XNLI, "avg"], cells):
            value = expected.loc[arm, language]
            assert summary.loc[(arm, language), "score"] == pytest.approx(value)
            assert cell.split("±")[0] == f"{100 * value:.1f}", (arm, language, cell)
            if arm != "baseline":
                change = value - expected.loc["baseline", language]
                assert summary.loc[(arm, language), "delta"] == pytest.approx(change)
                assert cell.split("<br>")[1].startswith(f"{100 * change:+.1f}".replace("-", "−"))


def test_findings_name_the_planted_winner(report: Path) -> None:
    markdown = (report / "report.md").read_text()
    findings_text = markdown.split("## Findings")[1].split("### Caveats")[0]
    assert "English intermediate tasks helped more" in findings_text
    caveats_text = markdown.split("### Caveats")[1].split("## Results")[0]
    assert "sampled: 100 of 5010" in caveats_text
    assert "multilingual-e5-small" in caveats_text
    assert "snli" in (report / "table.tex").read_text()


def test_findings_follow_the_data(tmp_path: Path) -> None:
    """Planting the gain on the low-resource arms flips the answer (the prose is not fixed)."""
    flipped = [(arm, group, languages, matched, examples, 0.08 if group == "low-resource" else 0.0)
               for arm, group, languages, matched, examples, _ in ARMS]
    text = findings(analyse(load_results(make_study(tmp_path, flipped, seeds=[1, 2, 3]))))[0]
    assert "Low-resource intermediate tasks helped more" in text


def test_caveats_warn_about_few_seeds_and_translated_data(tmp_path: Path) -> None:
    arms = [*ARMS[:2], ("indonli-mt", "low-resource", "id", True, 10_000, 0.0)]
    report = write_report(make_study(tmp_path, arms, seeds=[1]), tmp_path / "out")
    caveats_text = report.read_text().split("### Caveats")[1].split("## Results")[0]
    assert "Only 1 seed" in caveats_text
    assert "indonli-mt trains on machine-translated data" in caveats_text
    findings_text = report.read_text().split("## Findings")[1].split("### Caveats")[0]
    assert "the study cannot say which group helped more" in findings_text  # one seed: no interval to include zero
    assert "interval that includes zero" not in findings_text


def test_a_graded_metric_is_named_and_its_item_values_analysed(tmp_path: Path) -> None:
    """A study scored by F1 (span QA: a graded value in [0, 1] per example, in the predictions' `f1` column):
    the report names F1 wherever it shows numbers, never accuracy, and its numbers are the graded values'."""
    study = make_study(tmp_path, metric="f1")
    pd.DataFrame({"task": "xquad", "split": "test", "language": ["en", "de"], "metric": "f1", "score": [0.5, 0.3],
                  "n": 10, "eval_node": "eval-base"}).to_csv(study / "base_model.csv", index=False)
    report = write_report(study).parent
    values = pd.read_csv(study / pd.read_csv(study / "results.csv")["predictions"][0])["f1"]
    assert values.between(0, 1).all() and not values.isin([0, 1]).all()  # graded, not 0/1
    markdown = (report / "report.md").read_text()
    for name in ("report.md", "report.html", "table.tex"):
        assert "accuracy" not in (report / name).read_text().lower(), name
    for phrase in ("xnli test: F1 (%), mean ± std", "change in average F1 [95% CI]", "changed average F1 by",
                   "Mean change in F1 (points)", "arms change F1 by", "F1 on xnli test", "| F1 | 50.0 | 30.0 | 40.0 |",
                   "English intermediate tasks helped more"):
        assert phrase in markdown, phrase
    expected = _recomputed(study, "f1")
    summary = pd.read_csv(report / "summary.csv").set_index(["arm", "language"])
    assert (summary["metric"] == "f1").all()
    for arm, _, _, _, _, _ in ARMS:
        for language in [*XNLI, "avg"]:
            assert summary.loc[(arm, language), "score"] == pytest.approx(expected.loc[arm, language])
            if arm != "baseline":
                change = expected.loc[arm, language] - expected.loc["baseline", language]
                assert summary.loc[(arm, language), "delta"] == pytest.approx(change)
    numbers = json.loads((report / "report.json").read_text())
    assert numbers["primary"]["metric"] == "f1" and {arm["metric"] for arm in numbers["arms"]} == {"f1"}
    assert numbers["base_model"] == {"xquad/test": {"metric": "f1", "en": 0.5, "de": 0.3, "average": 0.4}}
    analysis = analyse(load_results(study))
    for kind, draw in DRAW.items():
        labels = " ".join(text for axes in draw(analysis, ("xnli", "test")).axes
                          for text in (axes.get_title(), axes.get_xlabel(), axes.get_ylabel()))
        assert "F1" in labels and "accuracy" not in labels, (kind, labels)


def test_masked_lm_arms_are_a_group_and_the_pieces_each_arm_consumed_are_stated(tmp_path: Path) -> None:
    """Labelled English, labelled low-resource, mixed and masked-LM arms, all capped at 1,000 examples: the report
    compares the four groups with the baseline and lists the pieces each arm consumed, which size matching by
    examples leaves unmatched."""
    arms = [ARMS[0], ("snli", "english", "en", True, 1000, 0.05), ("indonli", "low-resource", "id", True, 1000, 0.02),
            ("indonli-mlm", "mixed", "id;sw;ur", True, 2000, 0.03), ("mlm", "mlm", "id;sw;ur", True, 1000, 0.0)]
    study = make_study(tmp_path, arms=arms)
    pieces = {"baseline": 0, "snli": 31_000, "indonli": 52_000, "indonli-mlm": 80_000, "mlm": 28_000}
    table = pd.read_csv(study / "results.csv", keep_default_na=False)
    table["intermediate_pieces"] = table["arm"].map(pieces)
    table.to_csv(study / "results.csv", index=False)
    markdown = (write_report(study).parent / "report.md").read_text()
    header = next(line for line in markdown.splitlines() if line.startswith("| language |"))
    assert [cell.strip() for cell in header.strip("|").split("|")][1:5] == \
        ["English arms", "Low-resource arms", "Mixed arms", "Masked-LM arms"], header
    mlm_row = next(line for line in markdown.splitlines() if line.startswith("| mlm | mlm |"))
    assert "| 1,000 | 28,000 |" in mlm_row, mlm_row
    assert "tokenizer pieces: mlm 28,000, snli 31,000, indonli 52,000, indonli-mlm 80,000" in markdown


def test_bad_graded_item_values_are_named(tmp_path: Path) -> None:
    study = make_study(tmp_path, ARMS[:2], seeds=[1], metric="f1")
    predictions = study / pd.read_csv(study / "results.csv")["predictions"][0]
    frame = pd.read_csv(predictions)
    frame.loc[3, "f1"] = 1.5
    frame.to_csv(predictions, index=False)
    with pytest.raises(XstiltsError, match=r"en.csv:5: column 'f1': '1.5' is not a number between 0 and 1"):
        load_results(study)
    frame.drop(columns="f1").to_csv(predictions, index=False)
    with pytest.raises(XstiltsError, match=r"en.csv: missing column 'f1' \(results.csv line 2, metric 'f1'\)"):
        load_results(study)


@pytest.mark.parametrize(("column", "value", "message"), [
    ("score", "1.5", "results.csv:2: column 'score': '1.5' is not between 0 and 1"),
    ("group", "other", "results.csv:2: column 'group': 'other' is not one of"),
    ("seed", "x", "results.csv:2: column 'seed': 'x' is not an integer"),
    ("predictions", "missing.csv", "missing.csv: predictions file not found (results.csv line 2)"),
    ("predictions", "../outside.csv", "results.csv:2: column 'predictions' points outside the study folder"),
    ("predictions", "/etc/hostname", "results.csv:2: column 'predictions' points outside the study folder"),
    ("score", "0.0", "results.csv:2: column 'score' is 0.0000 but the mean of 'correct'"),
    ("metric", "f1", "results.csv:3: column 'metric': xnli/test is scored by 'accuracy' here but by 'f1' in an "
                     "earlier row"),
])
def test_bad_rows_are_named(tmp_path: Path, column: str, value: str, message: str) -> None:
    study = make_study(tmp_path, ARMS[:2], seeds=[1])
    table = pd.read_csv(study / "results.csv", dtype=str, keep_default_na=False)
    table.loc[0, column] = value
    table.to_csv(study / "results.csv", index=False)
    with pytest.raises(XstiltsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        write_report(study)


def test_jsonl_gives_the_same_rows_as_csv(tmp_path: Path) -> None:
    study = make_study(tmp_path, ARMS[:2], seeds=[1])
    from_csv = load_results(study).rows
    (study / "results.csv").unlink()
    from_jsonl = load_results(study).rows
    columns = [column for column in from_csv.columns if column not in ("item_scores", "line")]
    pd.testing.assert_frame_equal(from_csv[columns], from_jsonl[columns], check_dtype=False)


def test_missing_column_and_mismatched_examples_are_named(tmp_path: Path) -> None:
    study = make_study(tmp_path, ARMS[:2], seeds=[1])
    table = pd.read_csv(study / "results.csv", dtype=str, keep_default_na=False)
    table.drop(columns="n").to_csv(study / "results.csv", index=False)
    with pytest.raises(XstiltsError, match="results.csv: missing column 'n'"):
        load_results(study)
    table.to_csv(study / "results.csv", index=False)
    predictions = study / table.loc[len(table) - 1, "predictions"]
    frame = pd.read_csv(predictions)
    frame.loc[0, "index"] = EXAMPLES + 5
    frame.to_csv(predictions, index=False)
    with pytest.raises(XstiltsError, match="example indices differ"):
        load_results(study)


@pytest.mark.browser
def test_html_renders_in_headless_chromium(report: Path, tmp_path: Path) -> None:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("chromium not found: install Debian's chromium (`apt-get install -y chromium`) to run this test")
    screenshot = tmp_path / "report.png"
    completed = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={screenshot}", "--window-size=1400,2400",
         "--enable-logging=stderr", "--v=0", (report / "report.html").as_uri()],
        capture_output=True, text=True, timeout=180)
    assert completed.returncode == 0, completed.stderr[-3000:]
    # Chromium logs page console messages as "[...:INFO:CONSOLE:1] "message", source: URL (line)"; the report
    # has no scripts, so any console message (or uncaught error) is a fault of the page.
    console = [line for line in completed.stderr.splitlines() if re.search(r":CONSOLE\b|Uncaught", line)]
    assert not console, "\n".join(console)
    image = imread(screenshot)
    assert image.shape[:2] == (2400, 1400)
    assert image[..., :3].std() > 0.05  # not a blank page


def test_every_arm_group_a_study_accepts_has_a_name_colour_and_marker_in_the_report() -> None:
    from typing import get_args

    from xstilts.report.formatting import GROUP_NAMES
    from xstilts.report.plots import GROUP_COLORS, GROUP_MARKERS
    from xstilts.report.results import GROUPS
    from xstilts.study_spec import ArmGroup

    groups = set(get_args(ArmGroup))
    assert set(GROUPS) == groups | {"baseline"}
    assert set(GROUP_NAMES) == set(GROUP_COLORS) == set(GROUP_MARKERS) == groups
    assert len(set(GROUP_COLORS.values())) == len(set(GROUP_MARKERS.values())) == len(groups)


@pytest.mark.parametrize("gain, verdict", [(0.15, "the design detected it."), (0.0, "the design did NOT detect")])
def test_the_positive_control_is_checked_before_the_primary_question(tmp_path: Path, gain: float, verdict: str) -> None:
    """A planted large gain on the control arm is reported as detected; no gain, as not detected; both in the
    design checks, which come before the primary question, with the A/A check."""
    arms = [*ARMS, ("xnli-dev", "control", "fr;sw", True, 10_000, gain)]
    study = make_study(tmp_path, arms=arms, seeds=[1, 2, 3, 4])
    manifest = json.loads((study / "manifest.json").read_text())
    manifest["computed_on"] = {"1": [{"precision": "bf16", "device": "cpu", "cpu": "Xeon A"}],
                               "2": [{"precision": "fp32", "device": "cpu", "cpu": "EPYC B"}]}
    (study / "manifest.json").write_text(json.dumps(manifest))
    markdown = (write_report(study).parent / "report.md").read_text()
    checks = markdown.split("## Design checks")[1].split("## Primary question")[0]
    control = next(line for line in checks.splitlines() if line.startswith("Positive control"))
    assert "'xnli-dev'" in control and verdict in control
    assert "Calibration check (A/A)" in checks
    assert "| 2 | fp32 | cpu | EPYC B |" in markdown  # where each seed was computed
    primary = analyse(load_results(study)).primary
    assert "xnli-dev" not in primary.english + primary.low_resource  # the control never enters the question


def test_corpus_level_span_f1_is_read_as_a_ratio_of_counts(tmp_path: Path) -> None:
    """NER predictions carry per-sentence entity counts and a score that is corpus-level F1 (not the mean of
    the per-sentence F1s): the report reads them, and each run's item values average to its score."""
    study = make_study(tmp_path, ARMS[:3], metric="f1")
    table = pd.read_csv(study / "results.csv", keep_default_na=False)
    rng = np.random.default_rng(5)
    for index, row in table.iterrows():
        gold = rng.poisson(1.5, EXAMPLES)
        predicted = np.maximum(gold + rng.integers(-1, 2, EXAMPLES), 0)
        found = np.minimum(gold, predicted) - rng.binomial(np.minimum(gold, predicted), 0.3)
        per_sentence = np.where(gold + predicted > 0, 2 * found / np.maximum(gold + predicted, 1), 1.0)
        pd.DataFrame({"index": np.arange(EXAMPLES), "gold_entities": gold, "predicted_entities": predicted,
                      "found": found, "f1": per_sentence}).to_csv(study / row["predictions"], index=False)
        table.loc[index, "score"] = 2 * found.sum() / (gold + predicted).sum()
    table.to_csv(study / "results.csv", index=False)
    (study / "results.jsonl").unlink()
    results = load_results(study)
    for _, row in results.rows.iterrows():
        assert np.mean(row["item_scores"]) == pytest.approx(row["score"], abs=1e-9)
    assert (write_report(study).parent / "report.md").exists()
