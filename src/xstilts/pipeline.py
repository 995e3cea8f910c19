"""`xstilts run`: base model -> [intermediate] -> target -> zero-shot evaluation, in one run directory."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import yaml

from xstilts.config import RunConfig, load_config, resolve_data_dir
from xstilts.distributed import current_ranks
from xstilts.errors import XstiltsError
from xstilts.manifest import environment, write_json, write_text_atomically
from xstilts.memory import peak_rss_mb
from xstilts.phases import Context, check_plan, eval_node, train_node
from xstilts.tasks.registry import load_registry


def make_context(config: RunConfig) -> Context:
    """The shared context of a run (task registry, data folder, model), after checking all its data exists."""
    registry = load_registry([Path(p) for p in config.task_dirs])
    data_dir = resolve_data_dir(config.data_dir)
    training = [*(config.intermediate.tasks if config.intermediate else []), config.target.task]
    check_plan(registry, data_dir, training, config.target.task.task, config.evaluate)
    return Context.create(config.model, registry, data_dir, config.max_length, config.precision, config.pooling)


def _claim_output(config: RunConfig, output: Path) -> None:
    """Write the run's config into `output`, refusing a directory that holds a run of another config."""
    existing = output / "config.yaml"
    if existing.exists() and load_config(existing) != config:
        raise XstiltsError(f"{output}: holds a run of another config; choose another --output or delete it")
    write_text_atomically(existing, yaml.safe_dump(config.model_dump(), sort_keys=False, allow_unicode=True))


def run(config: RunConfig, output: Path) -> dict:
    """Run every phase of `config` into `output` (finished phases are skipped, interrupted ones resume)."""
    started = time.perf_counter()
    ctx = make_context(config)  # checks every input first: a failed check leaves nothing behind
    main = current_ranks().main  # with several processes (accelerate launch), rank 0 writes the run's files
    if main:
        _claim_output(config, output)
    metrics: dict = {}
    parent = None
    if config.intermediate:
        inter = config.intermediate
        metrics["intermediate"] = train_node(
            ctx, output / "intermediate", tasks=inter.tasks, train=inter.train, seed=config.seed,
            mixing=inter, description="intermediate")
        parent = output / "intermediate"
    target = config.target
    metrics["target"] = train_node(ctx, output / "target", tasks=[target.task], train=target.train, seed=config.seed,
                                   parent=parent, carry=target.carry, carry_head=target.carry_head,
                                   description="target")
    metrics["evaluation"] = {}
    files = [d for phase in ("intermediate", "target") if phase in metrics for d in metrics[phase]["data"]]
    for data in config.evaluate:
        result = eval_node(ctx, output / f"eval-{data.task}-{data.split}", trained=output / "target",
                           head=target.task.task, data=data)
        metrics["evaluation"].setdefault(data.task, {})[data.split] = evaluation_summary(result)
        files += result["data"]
    if not main:
        return metrics
    write_json(output / "metrics.json", metrics)
    write_json(output / "manifest.json", {
        **environment(), "seed": config.seed, "model": ctx.model, "precision": ctx.precision,
        "device": str(ctx.device), "data_files": {d["source"]: d["sha256"] for d in files},
        "timings_seconds": {"total": round(time.perf_counter() - started, 1),
                            **{p: metrics[p]["seconds"] for p in ("intermediate", "target") if p in metrics}},
        "peak_rss_mb": round(peak_rss_mb(), 1),
    })
    print(format_table(metrics["evaluation"]), file=sys.stderr)
    return metrics


def evaluation_summary(result: dict) -> dict:
    """An evaluation node's result as metrics.json keeps it: split, primary metric, its average and score per
    language, every metric per language (`scores`), n."""
    languages = result["languages"]
    return {"split": result["split"], "metric": result["metric"], "average": result["average"],
            **{lang: value["score"] for lang, value in languages.items()},
            "scores": {lang: value["scores"] for lang, value in languages.items()},
            "n": {lang: value["n"] for lang, value in languages.items()}}


def format_table(evaluation: dict) -> str:
    """Per-language scores of each evaluation task as a Markdown table: one row per metric, the primary first."""
    lines = []
    for task, split, result in ((t, s, r) for t, splits in evaluation.items() for s, r in splits.items()):
        languages = list(result["scores"])
        lines.append(f"| {task} ({split}) | " + " | ".join(languages) + " | avg |")
        lines.append("|---" * (len(languages) + 2) + "|")
        for metric in result["scores"][languages[0]]:
            values = [result["scores"][language][metric] for language in languages]
            lines.append(f"| {metric} | " + " | ".join(f"{100 * v:.1f}" for v in values)
                         + f" | {100 * sum(values) / len(values):.1f} |")
    return "\n".join(lines)
