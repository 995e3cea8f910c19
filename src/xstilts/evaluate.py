"""`xstilts evaluate`: score what is already trained on another evaluation set, without training anything.

- a study directory: the evaluation joins the study's spec (study.json) and every arm and seed gets it through
  the cache (only the new evaluation nodes run); results.csv and `xstilts report` include it. Add it to the
  study YAML as well to keep it when the YAML is run again.
- a run directory: the run is computed again with the evaluation added (a one-cell study: only the new
  evaluation node runs, linked as `eval-TASK-SPLIT/`); metrics.json and config.yaml gain the evaluation, so
  the directory still describes what it holds.
- a trained model directory (any phase of a run or a study node: heads.json + model.safetensors): scored
  with the head whose labels are the task's, into `--output`.
- a Hugging Face model directory with a head (`...ForSequenceClassification`, `...ForQuestionAnswering`,
  `...ForTokenClassification`, or an `xstilts export-model` folder): scored with its own head, config and
  tokenizer, its labels mapped onto the task's by name (`hf_interop.label_order`), into `--output`.
- for a retrieval task (Tatoeba), also a base model ('embedded', a Hugging Face name or folder): its encoder,
  into `--output`.
"""

from __future__ import annotations

from pathlib import Path

from xstilts.config import EvalData, load_config
from xstilts.errors import XstiltsError
from xstilts.manifest import write_json
from xstilts.model import HEADS_FILE, read_heads
from xstilts.hf_interop import imported_head, is_hf_checkpoint
from xstilts.model_identity import model_identity
from xstilts.phases import RESULT_FILE, Context, check_plan, eval_node, is_done, read_result
from xstilts.config import resolve_data_dir
from xstilts.pipeline import run
from xstilts.summaries import evaluation_summary, format_table
from xstilts.study import read_spec, run_study
from xstilts.study_spec import StudySpec
from xstilts.task_types import task_type
from xstilts.tasks.registry import load_registry


def _with(evaluations: list[EvalData], data: EvalData) -> list[EvalData]:
    """The evaluations with `data` replacing any entry of the same task and split."""
    return [e for e in evaluations if (e.task, e.split) != (data.task, data.split)] + [data]


def evaluate_study(study_dir: Path, data: EvalData) -> Path:
    """Add an evaluation to every arm and seed of a study; returns its results table."""
    spec = read_spec(study_dir)
    spec = spec.model_copy(update={"evaluate": _with(spec.evaluate, data)})
    return run_study(StudySpec(**spec.model_dump()), study_dir)


def evaluate_run(run_dir: Path, data: EvalData) -> dict:
    """Score a finished run's target model on one more evaluation set: the run once more with the evaluation
    added, which computes the new evaluation node only (its trained phases are cached nodes)."""
    config = load_config(run_dir / "config.yaml")
    if not is_done(run_dir / "target"):
        raise XstiltsError(f"{run_dir}: the run's target phase has not finished; run it first")
    config = config.model_copy(update={"evaluate": _with(config.evaluate, data)})
    return run(config, run_dir)["evaluation"]


def evaluate_model(model_dir: Path, data: EvalData, output: Path, base_model: str, data_dir: str | None,
                   max_length: int) -> dict:
    """Score a trained model directory with its head for the task's labels, or for a retrieval task its encoder
    (a trained model's, or `model_dir` naming a base model); predictions and result in `output`."""
    registry = load_registry()
    spec = registry.get(data.task)
    resolved = resolve_data_dir(data_dir)
    if is_hf_checkpoint(model_dir):  # scored with its own config, tokenizer and head: no other base model
        base_model = str(model_dir)
    request = _request(model_dir, base_model, data, data.languages or spec.languages)
    _same_request(output, request)
    if not task_type(spec.type).trainable:  # it scores an encoder: a trained one, or `model_dir` naming a base model
        trained = model_dir if (model_dir / HEADS_FILE).is_file() else None
        check_plan(registry, resolved, [], data.task, [data])
        ctx = Context.create(base_model if trained else str(model_dir), registry, resolved, max_length, "auto")
        return _recorded(output, request, eval_node(ctx, output, trained=trained, head=None, data=data))
    if is_hf_checkpoint(model_dir):
        head = imported_head(model_dir, spec)[0]
    else:
        heads = read_heads(model_dir)
        matching = [head for head, head_spec in heads.items() if head_spec.type == spec.type and list(head_spec.labels) == spec.labels]
        if len(matching) != 1:
            raise XstiltsError(f"{model_dir}: {len(matching)} heads have the labels of {data.task!r} ({spec.labels}); "
                               f"the heads are {({name: list(h.labels) for name, h in heads.items()})}")
        head = matching[0]
    check_plan(registry, resolved, [], data.task, [data])
    ctx = Context.create(base_model, registry, resolved, max_length, "auto")
    return _recorded(output, request, eval_node(ctx, output, trained=model_dir, head=head, data=data))


def _request(model_dir: Path, base_model: str, data: EvalData, languages: list[str]) -> dict:
    """What an evaluation into --output answers: the model scored and the base model, each by its weights'
    identity (a folder by the SHA-256 of its files, `model_identity`), and the task, split, languages, cap and
    source."""
    return {"model": model_identity(str(model_dir)), "base_model": model_identity(base_model), "task": data.task,
            "split": data.split, "languages": sorted(languages), "max_examples": data.max_examples,
            "source": data.source}


def _same_request(output: Path, request: dict) -> None:
    """An --output that holds a finished evaluation is reused only for the whole request it recorded; another
    request there would print the cached result under the new request's name."""
    if not is_done(output):
        return
    held = read_result(output)
    if held.get("request") != request:
        sizes = {language: value.get("n") for language, value in held.get("languages", {}).items()}
        raise XstiltsError(f"{output}: holds an evaluation of {held.get('task')}/{held.get('split')} "
                           f"({', '.join(f'{lang} n={n}' for lang, n in sizes.items())}) for another request (the "
                           f"model, base model, languages, cap or source differ); give another --output for "
                           f"{request['task']}/{request['split']}")


def _recorded(output: Path, request: dict, result: dict) -> dict:
    """The evaluation's result with its request, recorded in its result.json for `_same_request`."""
    result = {**result, "request": request}
    write_json(output / RESULT_FILE, result)
    return result


def evaluate(target: Path, data: EvalData, output: Path | None = None, base_model: str = "embedded",
             data_dir: str | None = None, max_length: int = 128) -> str:
    """Dispatch on what `target` is; returns a line or table to print."""
    if (target / "study.json").is_file():
        return f"results: {evaluate_study(target, data)}"
    if (target / "config.yaml").is_file():
        return format_table(evaluate_run(target, data))
    scores_encoder = not task_type(load_registry().get(data.task).type).trainable
    if (target / HEADS_FILE).is_file() or scores_encoder or is_hf_checkpoint(target):
        if output is None:
            raise XstiltsError(f"{target}: a model directory is scored into --output DIR; give one")
        result = evaluate_model(target, data, output, base_model, data_dir, max_length)
        return format_table({data.task: {data.split: evaluation_summary(result)}})
    raise XstiltsError(f"{target}: neither a study directory (study.json), a run directory (config.yaml), a "
                       f"trained model ({HEADS_FILE}) nor a Hugging Face model (config.json); a base model (e.g. "
                       "'embedded') is scored only by retrieval tasks")
