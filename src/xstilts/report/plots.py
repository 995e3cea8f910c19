"""The report's figures, drawn with matplotlib's object API on the Agg canvas (no pyplot, no global state)."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import TwoSlopeNorm
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.transforms import offset_copy

from xstilts.report.analysis import ARM_GROUPS, AVERAGE, Analysis
from xstilts.report.formatting import GROUP_NAMES, capitalised, metric_name, plural, points
from xstilts.report.results import BASELINE_GROUP, EvalSet

GROUP_COLORS = {"english": "#0072B2", "low-resource": "#D55E00", "mixed": "#009E73",  # colour-blind safe
                "mlm": "#CC79A7", "control": "#7F7F7F"}
GROUP_MARKERS = {"english": "o", "low-resource": "s", "mixed": "^", "mlm": "D", "control": "P"}
STYLE = {"font.size": 12, "axes.titlesize": 14, "axes.labelsize": 13, "xtick.labelsize": 12, "ytick.labelsize": 12,
         "legend.fontsize": 11}
DPI = 150
LABEL_GAP, LABEL_NEAR = 0.05, 0.15  # arm labels in the size plot: spacing and "same size", in axes fractions
DODGE, SAME_SIZE = 10.0, 1.03  # arms within 3% of each other's size are drawn side by side, 10 points apart


def _heatmap(analysis: Analysis, eval_set: EvalSet) -> Figure:
    """Arms x languages (and the average) of the change in points of the metric; * marks Holm-significant cells."""
    metric = metric_name(analysis.results.metric(eval_set))
    cells = analysis.cells_of(eval_set)
    cells = cells[cells["group"] != BASELINE_GROUP]
    arms = analysis.results.arms
    arms = arms[arms.index.isin(cells["arm"])]
    columns = [*analysis.results.languages(eval_set), AVERAGE]
    grid = {name: cells.pivot(index="arm", columns="language", values=name).reindex(index=arms.index, columns=columns)
            for name in ("delta", "significant")}
    values, marks = 100 * grid["delta"].to_numpy(dtype=float), grid["significant"].eq(True)
    limit = max(float(np.nanmax(np.abs(values))), 0.5)
    figure = Figure(figsize=(max(8.0, 0.8 * len(columns) + 4), 2.0 + 0.6 * len(arms)), layout="constrained")
    axes = figure.add_subplot()
    image = axes.imshow(values, cmap="RdBu", norm=TwoSlopeNorm(0, -limit, limit), aspect="auto")
    for (row, column), value in np.ndenumerate(values):
        if not np.isnan(value):
            mark = "*" if marks.iat[row, column] else ""
            axes.text(column, row, points(value / 100) + mark, ha="center", va="center", fontsize=11,
                      color="white" if abs(value) > 0.6 * limit else "black")
    axes.set_xticks(range(len(columns)), labels=columns)
    axes.set_yticks(range(len(arms)), labels=[f"{arm} ({GROUP_NAMES[group]})" for arm, group in arms["group"].items()])
    axes.axvline(len(columns) - 1.5, color="black", linewidth=2)
    for boundary in np.flatnonzero(arms["group"].to_numpy()[1:] != arms["group"].to_numpy()[:-1]):
        axes.axhline(boundary + 0.5, color="black", linewidth=2)
    axes.set_xlabel("Evaluation language")
    axes.set_title(f"Change in {metric} against the baseline, {eval_set[0]} {eval_set[1]}\n"
                   "(points; * significant after Holm correction)")
    figure.colorbar(image, ax=axes, label=f"Change ({metric} points)", fraction=0.04, pad=0.01)
    return figure


def _group_bars(analysis: Analysis, eval_set: EvalSet) -> Figure:
    """Mean change per group of arms, per language and on average, with their intervals."""
    rows = analysis.groups_of(eval_set, "language")
    scopes = [*analysis.results.languages(eval_set), AVERAGE]
    groups = [group for group in ARM_GROUPS if group in set(rows["group"])]
    positions = np.arange(len(scopes))
    width = 0.8 / max(len(groups), 1)
    figure = Figure(figsize=(max(9.0, 0.75 * len(scopes) + 3), 5.5), layout="constrained")
    axes = figure.add_subplot()
    for offset, group in enumerate(groups):
        selected = rows[rows["group"] == group].set_index("scope").reindex(scopes)
        value = 100 * selected["value"].to_numpy()
        errors = 100 * np.vstack([selected["value"] - selected["ci_low"], selected["ci_high"] - selected["value"]])
        cells = analysis.cells_of(eval_set)
        count = cells.loc[cells["group"] == group, "arm"].nunique()
        axes.bar(positions + (offset - (len(groups) - 1) / 2) * width, value, width, yerr=errors, capsize=2,
                 color=GROUP_COLORS[group], label=f"{capitalised(GROUP_NAMES[group])} ({plural(count, 'arm')})",
                 error_kw={"linewidth": 1})
    axes.axhline(0, color="black", linewidth=0.8)
    axes.axvline(len(scopes) - 1.5, color="grey", linestyle=":", linewidth=1)
    axes.set_xticks(positions, labels=scopes)
    axes.set_xlabel("Evaluation language")
    axes.set_ylabel(f"Mean change ({metric_name(analysis.results.metric(eval_set))} points)")
    axes.set_title(f"Mean change against the baseline by group, {eval_set[0]} {eval_set[1]}\n"
                   "(points, with 95% confidence intervals: training and test-item variance)")
    axes.legend(loc="best")
    axes.grid(axis="y", alpha=0.3)
    return figure


def _dodge(sizes: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Per arm, a horizontal offset in points that puts arms of about the same size side by side, and the id of
    its group of such arms."""
    ordered = sizes.sort_values(kind="stable")
    values = ordered.to_numpy(float)
    clusters = pd.Series(np.cumsum(np.r_[0, values[1:] > SAME_SIZE * values[:-1]]), index=ordered.index)
    ranks = clusters.groupby(clusters).cumcount()
    counts = clusters.map(clusters.value_counts())
    return (DODGE * (ranks - (counts - 1) / 2)).reindex(sizes.index), clusters.reindex(sizes.index)


def _label_arms(axes: Axes, arms: pd.DataFrame, offsets: pd.Series, clusters: pd.Series) -> None:
    """Name each arm right of its marker; labels of arms of about the same size are pushed apart vertically."""
    figure = axes.get_figure()
    (x_low, x_high), (y_low, y_high) = axes.get_xlim(), axes.get_ylim()
    scale = np.log10 if axes.get_xscale() == "log" else (lambda values: values)
    sizes, score = arms["intermediate_examples"].to_numpy(float), 100 * arms["score"].to_numpy()
    x = (scale(sizes) - scale(x_low)) / (scale(x_high) - scale(x_low))
    gap = LABEL_GAP * (y_high - y_low)
    heights = score.copy()
    for rank, index in enumerate(np.argsort(-score)):
        for other in sorted(np.argsort(-score)[:rank], key=lambda placed: -heights[placed]):
            if abs(x[index] - x[other]) < LABEL_NEAR and heights[index] > heights[other] - gap:
                heights[index] = heights[other] - gap
    axes.set_ylim(min(y_low, heights.min() - gap), y_high)
    for index, arm in enumerate(arms.index):
        text_offset = offsets[clusters == clusters[arm]].max() + 8
        leader = {"arrowstyle": "-", "color": "grey", "linewidth": 0.6} if heights[index] != score[index] else None
        axes.annotate(arm, (sizes[index], score[index]), xytext=(sizes[index], heights[index]),
                      xycoords=offset_copy(axes.transData, figure, x=offsets[arm], units="points"),
                      textcoords=offset_copy(axes.transData, figure, x=text_offset, units="points"),
                      va="center", fontsize=11, arrowprops=leader)


def _size(analysis: Analysis, eval_set: EvalSet) -> Figure:
    """Average score of each arm against its amount of intermediate data; the baseline as a line.

    Arms of about the same size are drawn side by side (offset by a few points) so their error bars stay apart."""
    cells = analysis.cells_of(eval_set)
    averages = cells[cells["language"] == AVERAGE].set_index("arm")
    arms = analysis.results.arms.join(averages[["score", "score_std"]], how="inner")
    baseline = averages.loc[analysis.results.baseline]
    figure = Figure(figsize=(9.0, 6.0), layout="constrained")
    axes = figure.add_subplot()
    level, spread = 100 * baseline["score"], 100 * np.nan_to_num(baseline["score_std"])
    axes.axhline(level, color="grey", linestyle="--", label=f"Baseline ({points(baseline['score'], signed=False)}%)")
    axes.axhspan(level - spread, level + spread, color="grey", alpha=0.12, linewidth=0)
    trained = arms[arms["group"] != BASELINE_GROUP]
    offsets, clusters = _dodge(trained["intermediate_examples"])
    for group in ARM_GROUPS:
        for position, (arm, row) in enumerate(trained[trained["group"] == group].iterrows()):
            axes.errorbar([row["intermediate_examples"]], [100 * row["score"]],
                          yerr=[100 * np.nan_to_num(row["score_std"])], fmt=GROUP_MARKERS[group], markersize=9,
                          capsize=3, color=GROUP_COLORS[group],
                          transform=offset_copy(axes.transData, figure, x=offsets[arm], units="points"),
                          label=None if position else capitalised(GROUP_NAMES[group]))
    sizes, spreads = trained["intermediate_examples"], 100 * trained["score_std"].fillna(0)
    for sign in (-1, 1):  # offset transforms keep the markers out of autoscaling: add their extent by hand
        axes.update_datalim(np.column_stack([sizes, 100 * trained["score"] + sign * spreads]))
    if not sizes.empty and sizes.min() > 0 and sizes.max() >= 10 * sizes.min():
        axes.set_xscale("log")
    axes.margins(x=0.15, y=0.2)
    _label_arms(axes, trained, offsets, clusters)
    axes.set_xlabel("Intermediate training examples")
    metric = metric_name(analysis.results.metric(eval_set))
    axes.set_ylabel(f"Average {metric} (%), ± std over seeds")
    axes.set_title(f"Average {eval_set[0]} {eval_set[1]} {metric} vs intermediate data size")
    axes.legend(loc="best")
    axes.grid(alpha=0.3)
    return figure


DRAW = {"heatmap": _heatmap, "groups": _group_bars, "size": _size}


def plot_file(kind: str, eval_set: EvalSet) -> str:
    """The PNG file name of one plot of one evaluation set."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{kind}-{eval_set[0]}-{eval_set[1]}") + ".png"


def write_plots(analysis: Analysis, output_dir: Path) -> None:
    """Draw every plot of every evaluation set into `output_dir` (file names from `plot_file`)."""
    with matplotlib.rc_context(STYLE):
        for eval_set in analysis.results.eval_sets:
            for kind, draw in DRAW.items():
                figure = draw(analysis, eval_set)
                FigureCanvasAgg(figure)
                figure.savefig(output_dir / plot_file(kind, eval_set), dpi=DPI)
