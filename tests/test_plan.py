"""`xstilts plan`: seeds needed from a pilot's variances, and wall time from its phase timings."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest

from test_report import ARMS, make_study
from xstilts.cli import main
from xstilts.config import EvalData, TargetConfig, TaskData, TrainConfig
from xstilts.errors import XstiltsError
from xstilts.plan import MIN_DESIGN_SEEDS, Cost, designs, load_plan, plan_study, row_counter, study_seconds, with_items
from xstilts.report.statistics import seeds_needed
from xstilts.study_spec import Arm, StudySpec

# The pilot's phases: training seconds = 20 + 0.1 s per example, evaluation = 5 + 0.01 s per pair.
TRAIN_FIXED, TRAIN_RATE, EVAL_FIXED, EVAL_RATE = 20.0, 0.1, 5.0, 0.01


def _pilot(root: Path) -> Path:
    """The synthetic study of test_report with node results whose timings follow the costs above."""
    study = make_study(root)
    for name, kind, units in (("inter-a", "train", 500), ("target-a", "train", 2000), ("target-b", "train", 2000),
                              ("eval-a", "eval", 1500), ("eval-b", "eval", 1500)):
        node = study / "nodes" / name
        node.mkdir(parents=True, exist_ok=True)
        if kind == "train":
            result = {"kind": "train", "metrics": {"train_examples": units}, "seconds": TRAIN_FIXED + TRAIN_RATE * units}
        else:
            result = {"kind": "eval", "languages": {"en": {"n": units}}, "seconds": EVAL_FIXED + EVAL_RATE * units}
        (node / "result.json").write_text(json.dumps(result))
    return study


def _planned(data_dir: Path) -> StudySpec:
    train = TrainConfig(epochs=1)
    return StudySpec(
        name="planned", data_dir=str(data_dir), seeds=[1], intermediate_train=train,
        target=TargetConfig(task=TaskData(task="mnli"), train=train),
        evaluate=[EvalData(task="xnli", split="test", max_examples=1000)],
        arms=[Arm(name="snli", group="english", tasks=[TaskData(task="snli")], cap=1000),
              Arm(name="indonli", group="low-resource", tasks=[TaskData(task="indonli")], cap=1000)])


def test_costs_are_fitted_from_the_pilot_phases(tmp_path: Path) -> None:
    plan = load_plan(_pilot(tmp_path))
    assert plan.train_cost.fixed == pytest.approx(TRAIN_FIXED) and plan.train_cost.per_unit == pytest.approx(TRAIN_RATE)
    assert plan.eval_cost.per_unit == pytest.approx((EVAL_FIXED + EVAL_RATE * 1500) / 1500)  # one size: a rate
    assert plan.pilot_items == 100


def test_wall_time_counts_every_phase_of_the_planned_graph(tmp_path: Path, shared_data_dir: Path) -> None:
    plan = load_plan(_pilot(tmp_path))
    seconds = study_seconds(_planned(shared_data_dir), 5, plan)
    # per seed: 2 intermediate phases of 1,000 examples, 3 targets on the 8,999-pair MNLI slice,
    # 3 evaluations of 15 x 1,000 XNLI pairs
    assert seconds["intermediate"] == pytest.approx(5 * 2 * (TRAIN_FIXED + TRAIN_RATE * 1000))
    assert seconds["target"] == pytest.approx(5 * 3 * (TRAIN_FIXED + TRAIN_RATE * 8999))
    assert seconds["eval"] == pytest.approx(5 * 3 * plan.eval_cost.seconds(15_000))


def test_plan_prints_the_seeds_needed_and_the_time(tmp_path: Path, shared_data_dir: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    pilot = _pilot(tmp_path)
    plan = load_plan(pilot)
    text = plan_study(_planned(shared_data_dir), pilot, [0.5, 1.0])
    for effect in (0.5, 1.0):
        needed = seeds_needed(plan.estimate, effect / 100, item_scale=100 / 1000)
        line = next(line for line in text.splitlines() if line.strip().startswith(f"{effect:.2f} points"))
        if needed is None:
            assert "not reachable" in line
        else:
            minutes = sum(study_seconds(_planned(shared_data_dir), needed, plan).values()) / 60
            assert f": {needed} seeds;" in line
            shown = re.search(r"wall time (\d+) h (\d+) min", line)
            assert abs(60 * int(shown[1]) + int(shown[2]) - minutes) <= 0.5
    study_file = tmp_path / "planned.yaml"
    study_file.write_text(json.dumps(_planned(shared_data_dir).model_dump()))
    assert main(["plan", str(study_file), "--pilot", str(pilot), "--effect", "2"]) == 0
    assert "2.00 points with 80% power" in capsys.readouterr().out


def test_a_pilot_with_one_seed_is_refused(tmp_path: Path) -> None:
    study = make_study(tmp_path, ARMS, seeds=[1])
    with pytest.raises(XstiltsError, match="one seed; its seed-to-seed variance is unknown"):
        load_plan(study)


def test_cost_fit_with_one_size_is_a_rate() -> None:
    assert Cost.fit([100, 100], [10, 12]) == Cost(0.0, 0.11)



@pytest.mark.parametrize("train_std, item_se, sizes, expected_items", [
    # seeds noisy, items quiet: the fewest items, more seeds
    (0.02, 0.002, [250, 500, 1000, 2000, 3000, 5010], 250),
    # items noisy (2 points at the pilot's 100 items; 1.27 points at 250, too much for a 3-point effect
    # at 80% power whatever the seeds): the fewest items at which the 4-seed floor suffices
    (0.003, 0.02, [500, 1000, 2000, 3000, 5010], 1000),
])
def test_the_cheapest_design_trades_seeds_against_test_items(tmp_path: Path, shared_data_dir: Path, train_std: float,
                                                             item_se: float, sizes: list[int],
                                                             expected_items: int) -> None:
    plan = load_plan(_pilot(tmp_path))
    planted = replace(plan, estimate=replace(plan.estimate, train_variance=train_std ** 2, item_variance=item_se ** 2))
    spec = _planned(shared_data_dir)
    counter = row_counter(spec)  # one reading of the data for every design
    options = designs(spec, planted, 3.0, "xnli/test", counter)
    assert [d.items for d in options] == sizes
    for design in options:
        needed = seeds_needed(planted.estimate, 0.03, planted.pilot_items / design.items)
        assert design.seeds == max(MIN_DESIGN_SEEDS, needed)
        assert design.seconds == study_seconds(with_items(spec, "xnli/test", None if design.items == 5010 else design.items),
                                               design.seeds, planted, counter)
    assert min(options, key=lambda d: d.total).items == expected_items
