"""`xstilts report`: the report of a finished study, from its results table and per-example predictions.

Writes report.md, a self-contained report.html, the plots as PNG (and the trained nodes' learning curves), summary.csv (one row per arm x test set and
arm average), table.tex (the main tables) and report.json (the primary contrast, the A/A check and every arm's
change, for machines).
"""

from __future__ import annotations

from pathlib import Path

from xstilts.errors import XstiltsError
from xstilts.manifest import write_json, write_text_atomically
from xstilts.report.analysis import analyse
from xstilts.report.summary import report_json
from xstilts.report.base_model import base_model_blocks, base_model_json, load_base_model
from xstilts.report.document import build_document, main_table
from xstilts.report.intermediate_scores import intermediate_blocks, intermediate_json, load_intermediate_scores
from xstilts.report.learning_curves import curve_blocks, load_curves, write_curves
from xstilts.report.plots import write_plots
from xstilts.report.protocol import load_protocol
from xstilts.report.render import render_html, render_latex, render_markdown
from xstilts.report.results import load_results

SUMMARY_COLUMNS = ["arm", "group", "task", "split", "language", "n", "seeds", "metric", "score", "score_std", "delta",
                   "delta_std", "ci_low", "ci_high", "p", "p_holm", "significant", "mde", "in_language", "size_matched"]

__all__ = ["write_report"]


def write_report(study_dir: Path, output_dir: Path | None = None) -> Path:
    """Write the report of `study_dir` into `output_dir` (default: STUDY_DIR/report); returns report.md's path."""
    study_dir = Path(study_dir)
    output_dir = Path(output_dir) if output_dir is not None else study_dir / "report"
    if not study_dir.is_dir():
        raise XstiltsError(f"{study_dir}: study directory not found")
    results = load_results(study_dir)
    protocol = load_protocol(study_dir)
    analysis = analyse(results, protocol.study)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_plots(analysis, output_dir)
    curves = load_curves(study_dir, results)
    write_curves(curves, results, output_dir)
    title = f"X-STILTs study report: {protocol.study.get('name') or study_dir.resolve().name}"
    base = load_base_model(study_dir)
    probes = load_intermediate_scores(study_dir)
    blocks = build_document(analysis, protocol, title, [*base_model_blocks(base), *intermediate_blocks(probes),
                                                            *curve_blocks(curves)])
    write_text_atomically(output_dir / "report.md", render_markdown(blocks))
    write_text_atomically(output_dir / "report.html", render_html(blocks, title, output_dir))
    tables = [main_table(analysis, eval_set) for eval_set in results.eval_sets]
    write_text_atomically(output_dir / "table.tex", render_latex(tables))
    analysis.cells[SUMMARY_COLUMNS].to_csv(output_dir / "summary.csv", index=False)
    write_json(output_dir / "report.json", {**report_json(analysis), "base_model": base_model_json(base),
                                                 "intermediate": intermediate_json(probes)})
    return output_dir / "report.md"
