"""The model card (README.md) of an exported model: what its folder's surroundings record of where it comes from.

- A study node (`STUDY/nodes/NAME`): the study's name and base model (study.json), the node's label and the
  nodes it builds on (graph.json), its arm, group and seed (results.csv), its finished evaluation nodes.
- A run's phase (`RUN/target`, `RUN/intermediate`, or the node either links to): the run's name and base model
  (config.yaml), and for the target its evaluations (`RUN/eval-*`).
- Either, and a bare model folder: each phase's result.json (tasks, seed, precision, data files and their
  SHA-256, training metrics, the xstilts version and commit that trained it).

A file that is absent is left out; one that is damaged is one line. Names read from graph.json become folder
names only once checked to be one folder name.
"""

from __future__ import annotations

import csv
from pathlib import Path

import yaml

from xstilts import __version__
from xstilts.errors import XstiltsError
from xstilts.manifest import read_json
from xstilts.model import MultiHeadModel
from xstilts.names import path_component
from xstilts.summaries import evaluation_summary, format_table

POOLED = ("classification", "multiple_choice")  # the head types whose pooling matters
PIPELINE_TAGS = {"classification": "text-classification", "span_qa": "question-answering",
                 "token_classification": "token-classification"}


def provenance(model_dir: Path) -> dict:
    """What is known of a model folder: `origin` (study node, run phase or model folder), `model` (the base
    model, where recorded), `study` or `run`, `node`, `label`, `arms`, `phases` (result.json of the phases it
    comes from, first to last, each with its folder's name as `phase`) and `evaluations` (result.json of its
    finished evaluations)."""
    study_dir = model_dir.parent.parent
    if model_dir.parent.name == "nodes" and (study_dir / "study.json").is_file():
        return _study_node(study_dir, model_dir.name)
    for run_dir in (model_dir.parent, model_dir.parent.parent):  # RUN/target, or the node it links to
        phase = next((phase for phase in ("target", "intermediate")
                      if (run_dir / phase).resolve() == model_dir.resolve()), None)
        if phase and (run_dir / "config.yaml").is_file():
            return _run_phase(run_dir, phase)
    return {"origin": "model folder", "phases": _results([model_dir]), "evaluations": []}


def _parents(graph: dict, node: str) -> list:
    """A node's parents as graph.json lists them ([] where it does not)."""
    parents = graph.get(node, {}).get("parents") if isinstance(graph.get(node), dict) else None
    return parents if isinstance(parents, list) else []


def _study_node(study_dir: Path, name: str) -> dict:
    fix = f"run the study again to rewrite it (finished nodes are kept): xstilts study STUDY.yaml --output {study_dir}"
    spec = read_json(study_dir / "study.json", fix)
    graph = read_json(study_dir / "graph.json", fix) if (study_dir / "graph.json").is_file() else {}
    chain = [name]
    while _parents(graph, chain[0]) and _parents(graph, chain[0])[0] not in chain:
        chain.insert(0, _parents(graph, chain[0])[0])
    children = [child for child in graph if str(child).startswith("eval-") and name in _parents(graph, child)]
    for node in [*chain, *children]:
        try:
            path_component(str(node))
        except ValueError as error:
            raise XstiltsError(f"{study_dir / 'graph.json'}: {error}; {fix}") from None
    arms = []
    if (study_dir / "results.csv").is_file():
        with open(study_dir / "results.csv", newline="", encoding="utf-8") as handle:
            arms = list(dict.fromkeys(f"{row.get('arm')} ({row.get('group')}), seed {row.get('seed')}"
                                      for row in csv.DictReader(handle)
                                      if name in (row.get("target_node"), row.get("intermediate_node"))))
    label = graph[name].get("label") if isinstance(graph.get(name), dict) else None
    return {"origin": "study node", "study": spec.get("name"), "model": spec.get("model"), "node": name,
            "label": label, "arms": arms, "phases": _results([study_dir / "nodes" / node for node in chain]),
            "evaluations": _results([study_dir / "nodes" / child for child in children])}


def _run_phase(run_dir: Path, phase: str) -> dict:
    try:
        config = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise XstiltsError(f"{run_dir / 'config.yaml'}: unreadable ({str(error).splitlines()[0]})") from None
    config = config if isinstance(config, dict) else {}
    phases = ["intermediate", "target"] if phase == "target" else ["intermediate"]
    return {"origin": "run phase", "run": config.get("name"), "model": config.get("model") or "embedded",
            "node": phase, "phases": _results([run_dir / name for name in phases]),
            "evaluations": _results(sorted(run_dir.glob("eval-*"))) if phase == "target" else []}


def _results(folders: list[Path]) -> list[dict]:
    """The result.json of each folder that has one, with the folder's name as `phase`."""
    return [{**read_json(folder / "result.json", f"delete {folder} to compute it again"), "phase": folder.name}
            for folder in folders if (folder / "result.json").is_file()]


def _by_task(results: list[dict]) -> dict:
    """Finished evaluations as metrics.json keeps them: {task: {split: summary}}."""
    found: dict = {}
    for result in results:
        if result.get("kind") == "eval" and isinstance(result.get("languages"), dict) and result["languages"]:
            found.setdefault(result.get("task"), {})[result.get("split")] = evaluation_summary(result)
    return found


def _cell(value: object) -> str:
    """A value for a Markdown table cell."""
    return str(value).replace("|", "\\|").replace("\n", " ")


def model_card(facts: dict, model: MultiHeadModel, head: str, exported_as: str, exact: bool, marker: dict) -> str:
    """The README.md of an export (`exact`: as a transformers class with its head; `marker`: its source, weights'
    SHA-256 and base model): metadata, what the model is, where it comes from, how to load it, data, metrics."""
    spec = model.specs[head]
    title = facts.get("study") or facts.get("run") or "xstilts model"
    lines = ["---", "library_name: transformers", "tags:", "- xstilts",
             f"pipeline_tag: {PIPELINE_TAGS[spec.type] if exact else 'feature-extraction'}", "---", "",
             f"# {title}: {head}", "",
             f"- Exported by xstilts {__version__} from `{marker['source']}` (weights SHA-256 "
             f"`{marker['weights_sha256']}`), head `{head}` ({spec.type}"
             + (f", labels {', '.join(spec.labels)}" if spec.labels else "")
             + (f", {model.pooling} pooling" if spec.type in POOLED else "") + ").",
             f"- Base model: `{marker['base_model']}`; exported as `{exported_as}`.", *_origin(facts),
             "", "## Use", "", *_use(spec.type, head, exact),
             "", "Score it with xstilts: `xstilts evaluate THIS_FOLDER --task TASK --output DIR`.", ""]
    data = [row for result in [*facts["phases"], *facts["evaluations"]] for row in result.get("data", [])]
    if data:
        lines += ["## Data", "", "| task | split | language | examples | file | SHA-256 |",
                  "|---|---|---|---:|---|---|"]
        lines += [f"| {_cell(row.get('task'))} | {_cell(row.get('split'))} | {_cell(row.get('language'))} | "
                  f"{row.get('examples')} | {_cell(row.get('source'))} | `{row.get('sha256')}` |" for row in data]
        lines.append("")
    evaluation = _by_task(facts["evaluations"])
    if evaluation:
        lines += ["## Evaluation (percent)", "", format_table(evaluation), ""]
    return "\n".join(lines)


def _origin(facts: dict) -> list[str]:
    """The card's lines on the study or run and on each phase the model comes from."""
    lines = []
    if facts["origin"] == "study node":
        label = f": {facts['label']}" if facts.get("label") else ""
        lines.append(f"- Study `{facts['study']}`, node `{facts['node']}`{label}.")
        lines += [f"- Arm {arm}." for arm in facts.get("arms", [])]
    elif facts["origin"] == "run phase":
        lines.append(f"- Run `{facts['run']}`, its {facts['node']} phase.")
    for result in facts["phases"]:
        tasks = ", ".join(str(task.get("task")) for task in result.get("tasks", []))
        machine, metrics = result.get("machine", {}), result.get("metrics", {})
        commit = machine.get("code", {}).get("git_commit")
        lines.append(f"- `{result['phase']}` trained on {tasks or 'unrecorded tasks'}, seed {result.get('seed')}, "
                     f"{result.get('precision')}: {metrics.get('steps')} steps, best dev {metrics.get('best_dev')} at "
                     f"step {metrics.get('best_step')} (xstilts {machine.get('libraries', {}).get('xstilts')}"
                     + (f", commit {commit}" if commit else "") + ").")
    return lines


def _use(kind: str, head: str, exact: bool) -> list[str]:
    """How to load the export."""
    from xstilts.hf_interop import AUTO_CLASSES, HEAD_WEIGHTS

    if exact:
        auto = AUTO_CLASSES[kind].__name__
        return ["```python", f"from transformers import AutoTokenizer, {auto}", "",
                f'model = {auto}.from_pretrained("THIS_FOLDER")',
                'tokenizer = AutoTokenizer.from_pretrained("THIS_FOLDER")', "```"]
    return [f"No transformers class computes this head exactly, so the encoder is saved for `AutoModel` and the "
            f"head in `{HEAD_WEIGHTS}`:", "", "```python", "from xstilts.hf_interop import load_exported", "",
            'model = load_exported("THIS_FOLDER")  # the encoder (AutoModel) and the head',
            f'logits = model("{head}", input_ids, attention_mask)', "```"]
