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
from xstilts.report.results import load_results

XNLI = ["en", "fr", "es", "de", "el", "bg", "ru", "tr", "ar", "vi", "th", "zh", "hi", "sw", "ur"]
SEEDS = [1, 2, 3]
EXAMPLES = 100
BASE_ACCURACY = 0.55
# name, group, languages, size-matched, intermediate examples, planted gain in accuracy
ARMS = [
    ("baseline", "baseline", "", False, 0, 0.0),
    ("snli", "english", "en", False, 550_152, 0.08),
    ("qqp", "english", "en", True, 10_000, 0.06),
    ("indonli", "low-resource", "id", False, 10_330, 0.01),
    ("klue-nli", "low-resource", "ko", True, 10_000, 0.0),
]
OUTPUTS = ["report.md", "report.html", "summary.csv", "table.tex", "heatmap-xnli-test.png", "groups-xnli-test.png",
           "size-xnli-test.png"]


def make_study(root: Path, arms: list[tuple] = ARMS, seeds: list[int] = SEEDS) -> Path:
    """A study directory: results.csv/.jsonl, one predictions CSV per row, study.json and manifest.json."""
    rng = np.random.default_rng(7)
    labels = {language: rng.integers(0, 3, EXAMPLES) for language in XNLI}
    order = {language: rng.permutation(EXAMPLES) for language in XNLI}  # predictions files are not sorted by index
    rows = []
    for arm, group, languages, matched, examples, gain in arms:
        for seed in seeds:
            for language in XNLI:
                correct = (rng.random(EXAMPLES) < BASE_ACCURACY + gain).astype(int)
                index = order[language]
                prediction = np.where(correct[index] == 1, labels[language][index], (labels[language][index] + 1) % 3)
                path = Path("nodes") / f"eval-{arm}-{seed}" / "predictions" / f"{language}.csv"
                (root / path).parent.mkdir(parents=True, exist_ok=True)
                pd.DataFrame({"index": index, "label": labels[language][index], "prediction": prediction,
                              "correct": correct[index]}).to_csv(root / path, index=False)
                rows.append({"arm": arm, "group": group, "arm_languages": languages, "size_matched": matched,
                             "intermediate_examples": examples, "seed": seed, "task": "xnli", "split": "test",
                             "language": language, "accuracy": correct.mean(), "n": EXAMPLES,
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


def _recomputed(study: Path) -> pd.DataFrame:
    """Mean over seeds of mean(correct), per arm and language, straight from the predictions files."""
    results = pd.read_csv(study / "results.csv")
    results["from_predictions"] = [pd.read_csv(study / path)["correct"].mean() for path in results["predictions"]]
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
            assert summary.loc[(arm, language), "accuracy"] == pytest.approx(value)
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


@pytest.mark.parametrize(("column", "value", "message"), [
    ("accuracy", "1.5", "results.csv:2: column 'accuracy': '1.5' is not between 0 and 1"),
    ("group", "other", "results.csv:2: column 'group': 'other' is not one of"),
    ("seed", "x", "results.csv:2: column 'seed': 'x' is not an integer"),
    ("predictions", "missing.csv", "missing.csv: predictions file not found (results.csv line 2)"),
    ("accuracy", "0.0", "results.csv:2: column 'accuracy' is 0.0000 but the mean of 'correct'"),
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
    columns = [column for column in from_csv.columns if column not in ("correct", "line")]
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
