"""`xstilts evaluate`: score what is already trained on another evaluation set, without training anything.

- a study directory: the evaluation joins the study's spec (study.json) and every arm and seed gets it through
  the cache (only the new evaluation nodes run); results.csv and `xstilts report` include it. Add it to the
  study YAML as well to keep it when the YAML is run again.
- a run directory: its target model is scored into `eval-TASK-SPLIT/`; metrics.json and config.yaml gain
  the evaluation, so the directory still describes what it holds.
- a trained model directory (any phase of a run or a study node: heads.json + model.safetensors): scored
  with the head whose labels are the task's, into `--output`.
- for a retrieval task (Tatoeba), also a base model ('embedded', a Hugging Face name or folder): its encoder,
  into `--output`.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from xstilts.config import EvalData, load_config
from xstilts.errors import XstiltsError
from xstilts.manifest import write_json, write_text_atomically
from xstilts.model import HEADS_FILE, read_heads
from xstilts.phases import Context, check_plan, eval_node, is_done, read_result
from xstilts.config import resolve_data_dir
from xstilts.pipeline import evaluation_summary, format_table, make_context
from xstilts.study import run_study
from xstilts.study_spec import StudySpec
from xstilts.task_types import task_type
from xstilts.tasks.registry import load_registry


def _with(evaluations: list[EvalData], data: EvalData) -> list[EvalData]:
    """The evaluations with `data` replacing any entry of the same task and split."""
    return [e for e in evaluations if (e.task, e.split) != (data.task, data.split)] + [data]


def evaluate_study(study_dir: Path, data: EvalData) -> Path:
    """Add an evaluation to every arm and seed of a study; returns its results table."""
    spec = StudySpec(**json.loads((study_dir / "study.json").read_text(encoding="utf-8")))
    spec = spec.model_copy(update={"evaluate": _with(spec.evaluate, data)})
    return run_study(StudySpec(**spec.model_dump()), study_dir)


def evaluate_run(run_dir: Path, data: EvalData) -> dict:
    """Score a finished run's target model on one more evaluation set."""
    config = load_config(run_dir / "config.yaml")
    if not (run_dir / "target" / "DONE").exists():
        raise XstiltsError(f"{run_dir}: the run's target phase has not finished; run it first")
    config = config.model_copy(update={"evaluate": _with(config.evaluate, data)})
    ctx = make_context(config.model_copy(update={"intermediate": None}))  # checks the new evaluation's files
    result = eval_node(ctx, run_dir / f"eval-{data.task}-{data.split}", trained=run_dir / "target",
                       head=config.target.task.task, data=data)
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    metrics.setdefault("evaluation", {}).setdefault(data.task, {})[data.split] = evaluation_summary(result)
    write_json(run_dir / "metrics.json", metrics)
    write_text_atomically(run_dir / "config.yaml", yaml.safe_dump(config.model_dump(), sort_keys=False,
                                                                  allow_unicode=True))
    return metrics["evaluation"]


def evaluate_model(model_dir: Path, data: EvalData, output: Path, base_model: str, data_dir: str | None,
                   max_length: int) -> dict:
    """Score a trained model directory with its head for the task's labels, or for a retrieval task its encoder
    (a trained model's, or `model_dir` naming a base model); predictions and result in `output`."""
    registry = load_registry()
    spec = registry.get(data.task)
    resolved = resolve_data_dir(data_dir)
    _same_request(output, data, data.languages or spec.languages)
    if not task_type(spec.type).trainable:  # it scores an encoder: a trained one, or `model_dir` naming a base model
        trained = model_dir if (model_dir / HEADS_FILE).is_file() else None
        check_plan(registry, resolved, [], data.task, [data])
        ctx = Context.create(base_model if trained else str(model_dir), registry, resolved, max_length, "auto")
        return eval_node(ctx, output, trained=trained, head=None, data=data)
    heads = read_heads(model_dir)
    matching = [head for head, head_spec in heads.items() if head_spec.type == spec.type and list(head_spec.labels) == spec.labels]
    if len(matching) != 1:
        raise XstiltsError(f"{model_dir}: {len(matching)} heads have the labels of {data.task!r} ({spec.labels}); "
                           f"the heads are {({name: list(h.labels) for name, h in heads.items()})}")
    check_plan(registry, resolved, [], data.task, [data])
    ctx = Context.create(base_model, registry, resolved, max_length, "auto")
    return eval_node(ctx, output, trained=model_dir, head=matching[0], data=data)


def _same_request(output: Path, data: EvalData, languages: list[str]) -> None:
    """An --output that holds a finished evaluation is reused only for the same task, split, languages and
    cap; another request there would print the cached result under the new request's name."""
    if not is_done(output):
        return
    held = read_result(output)
    sizes = {language: value.get("n") for language, value in held.get("languages", {}).items()}
    same = (held.get("task"), held.get("split"), sorted(sizes)) == (data.task, data.split, sorted(languages))
    if not same or (data.max_examples and any((n or 0) > data.max_examples for n in sizes.values())):
        raise XstiltsError(f"{output}: holds an evaluation of {held.get('task')}/{held.get('split')} "
                           f"({', '.join(f'{lang} n={n}' for lang, n in sizes.items())}); give another --output "
                           f"for {data.task}/{data.split}")


def evaluate(target: Path, data: EvalData, output: Path | None = None, base_model: str = "embedded",
             data_dir: str | None = None, max_length: int = 128) -> str:
    """Dispatch on what `target` is; returns a line or table to print."""
    if (target / "study.json").is_file():
        return f"results: {evaluate_study(target, data)}"
    if (target / "config.yaml").is_file():
        return format_table(evaluate_run(target, data))
    scores_encoder = not task_type(load_registry().get(data.task).type).trainable
    if (target / HEADS_FILE).is_file() or scores_encoder:
        if output is None:
            raise XstiltsError(f"{target}: a model directory is scored into --output DIR; give one")
        result = evaluate_model(target, data, output, base_model, data_dir, max_length)
        return format_table({data.task: {data.split: evaluation_summary(result)}})
    raise XstiltsError(f"{target}: neither a study directory (study.json), a run directory (config.yaml) nor a "
                       f"trained model ({HEADS_FILE}); a base model (e.g. 'embedded') is scored only by retrieval tasks")
