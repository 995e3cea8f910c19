"""Learning curves: the training loss of every trained node against its step, one faint line per node coloured by
arm, one plot per phase kind (intermediate, target), from the `curve` each node's result.json records (for
nodes written before it, the loss at each dev evaluation, `history`). A phase kind without any node of two
points or more gets no plot."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from xstilts.errors import XstiltsError
from xstilts.manifest import read_json
from xstilts.names import path_component
from xstilts.report.plots import DPI, STYLE
from xstilts.report.render import Block, Heading, Image
from xstilts.report.results import Results

PHASES = {"intermediate": "intermediate_node", "target": "target_node"}  # phase kind -> results column
Curve = tuple[np.ndarray, np.ndarray]  # steps, losses
Curves = dict[str, dict[str, list[Curve]]]  # phase kind -> arm -> one curve per node


def curve_file(phase: str) -> str:
    """The PNG file name of a phase kind's learning curves."""
    return f"learning-curve-{phase}.png"


def _node_curve(study_dir: Path, node: str) -> Curve | None:
    """A node's (step, loss) points, None when its result is not in the folder (a table without nodes)."""
    try:
        path = study_dir / "nodes" / path_component(node) / "result.json"
    except ValueError as error:
        raise XstiltsError(f"{study_dir}: a node name in the results table: {error}") from None
    if not path.is_file():
        return None
    metrics = read_json(path, f"delete {path.parent} and run the study again").get("metrics", {})
    points = [p for p in metrics.get("curve") or metrics.get("history") or []
              if isinstance(p, dict) and isinstance(p.get("loss"), (int, float)) and isinstance(p.get("step"), int)]
    return np.array([p["step"] for p in points]), np.array([p["loss"] for p in points], dtype=float)


def load_curves(study_dir: Path, results: Results) -> Curves:
    """Per phase kind and arm (in the report's arm order), the curves of its nodes with two points or more."""
    curves: Curves = {}
    for phase, column in PHASES.items():
        pairs = results.rows[["arm", column]].drop_duplicates()
        for arm in results.arms.index:
            for node in pairs.loc[(pairs["arm"] == arm) & (pairs[column] != ""), column]:
                curve = _node_curve(study_dir, node)
                if curve is not None and len(curve[0]) >= 2:
                    curves.setdefault(phase, {}).setdefault(arm, []).append(curve)
    return curves


def _draw(phase: str, arms: dict[str, list[Curve]], baseline: str) -> Figure:
    figure = Figure(figsize=(9.0, 5.5), layout="constrained")
    axes = figure.add_subplot()
    palette = matplotlib.colormaps["tab10"]
    others = [arm for arm in arms if arm != baseline]
    colours = {arm: palette(index % 10) for index, arm in enumerate(others)} | {baseline: "black"}
    for arm, curves in arms.items():
        for steps, losses in curves:
            axes.plot(steps, losses, color=colours[arm], alpha=0.35, linewidth=1.0)
    axes.legend([Line2D([], [], color=colours[arm]) for arm in arms],
                [f"{arm} ({len(curves)})" for arm, curves in arms.items()], loc="best", title="arm (nodes)")
    axes.set_xlabel("Optimizer step")
    axes.set_ylabel("Training loss (moving average)")
    axes.set_title(f"Training loss of every {phase} phase, one line per node")
    axes.grid(alpha=0.3)
    return figure


def write_curves(curves: Curves, results: Results, output_dir: Path) -> None:
    """Draw each phase kind's learning curves into `output_dir` (file names from `curve_file`)."""
    with matplotlib.rc_context(STYLE):
        for phase, arms in curves.items():
            figure = _draw(phase, arms, results.baseline)
            FigureCanvasAgg(figure)
            figure.savefig(output_dir / curve_file(phase), dpi=DPI)


def curve_blocks(curves: Curves) -> list[Block]:
    """A heading and one figure per phase kind with curves."""
    if not curves:
        return []
    return [Heading("Learning curves"), *(Image(curve_file(phase), (
        f"Training loss (its moving average) against the optimizer step of every {phase} phase: one faint line per "
        "node, coloured by arm; the number of nodes per arm in the legend.")) for phase in curves)]
