"""`xstilts run`: base model -> [intermediate] -> target -> zero-shot evaluation, as a one-cell study.

The run's phases are the nodes a study's cell of the same settings has (`graph.run_graph`), computed by the
study's `run_node` (locks, resume, the same keys) into `RUN_DIR/nodes/`. The run directory's phase folders
(`intermediate`, `target`, `eval-TASK-SPLIT`) are links to those nodes, so a finished run given an added
evaluation trains nothing, and a run that failed and is then corrected computes only the phases whose
config changed."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import yaml

from xstilts.config import RunConfig, resolve_data_dir
from xstilts.distributed import current_ranks
from xstilts.embedded_model import resolve_model
from xstilts.errors import XstiltsError
from xstilts.graph import run_graph
from xstilts.manifest import environment, write_json, write_text_atomically
from xstilts.memory import peak_rss_mb
from xstilts.phases import check_plan
from xstilts.precision import pick_device
from xstilts.study import node_setup, run_node
from xstilts.summaries import evaluation_summary, format_table
from xstilts.tasks.registry import load_registry
from xstilts.tracking import check_backend


def check_run(config: RunConfig) -> None:
    """Every input of the run exists and reads (see `phases.check_plan`), before any phase starts."""
    registry = load_registry([Path(p) for p in config.task_dirs])
    training = [*(config.intermediate.tasks if config.intermediate else []), config.target.task]
    check_plan(registry, resolve_data_dir(config.data_dir), training, config.target.task.task, config.evaluate)


def _refuse_older_layout(output: Path, folders: list[str]) -> None:
    """A phase folder that is a real folder, not a link, holds a run of an older xstilts: refused, not replaced."""
    for folder in folders:
        path = output / folder
        if path.exists() and not path.is_symlink():
            raise XstiltsError(f"{path}: a phase folder of a run from an older xstilts (before runs were one-cell "
                               "studies); choose another --output, or move that run away")


def _link(output: Path, folder: str, node: str) -> None:
    """Point the phase folder `output/folder` at `nodes/node`, atomically."""
    temporary = output / f".{folder}.link"
    temporary.unlink(missing_ok=True)
    os.symlink(Path("nodes") / node, temporary)
    os.replace(temporary, output / folder)


def run(config: RunConfig, output: Path) -> dict:
    """Compute every phase of `config` into `output` that is not finished there (interrupted ones resume);
    returns the run's metrics (also written to metrics.json)."""
    started = time.perf_counter()
    check_backend(config.log)
    check_run(config)  # a failed check leaves nothing behind
    graph, folders = run_graph(config)
    main = current_ranks().main  # with several processes (accelerate launch), rank 0 writes the run's files
    if main:
        _refuse_older_layout(output, list(folders))
    setup = node_setup(config)
    results = {name: run_node(output, setup, node) for name, node in graph.nodes.items()}
    phases = {folder: results[name] for folder, name in folders.items()}
    metrics = {phase: phases[phase] for phase in ("intermediate", "target") if phase in phases}
    metrics["evaluation"] = {}
    for data in config.evaluate:
        summary = evaluation_summary(phases[f"eval-{data.task}-{data.split}"])
        metrics["evaluation"].setdefault(data.task, {})[data.split] = summary
    if not main:
        return metrics
    output.mkdir(parents=True, exist_ok=True)
    for folder, name in folders.items():
        _link(output, folder, name)
    write_text_atomically(output / "config.yaml", yaml.safe_dump(config.model_dump(), sort_keys=False,
                                                                 allow_unicode=True))
    write_json(output / "metrics.json", metrics)
    files = [d for result in phases.values() for d in result["data"]]
    write_json(output / "manifest.json", {
        **environment(), "seed": config.seed, "model": resolve_model(config.model),
        "precision": phases["target"]["precision"], "device": str(pick_device()),
        "data_files": {d["source"]: d["sha256"] for d in files}, "nodes": folders,
        "timings_seconds": {"total": round(time.perf_counter() - started, 1),
                            **{p: metrics[p]["seconds"] for p in ("intermediate", "target") if p in metrics}},
        "peak_rss_mb": round(peak_rss_mb(), 1),
    })
    print(format_table(metrics["evaluation"]), file=sys.stderr)
    return metrics
