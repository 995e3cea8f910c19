"""`xstilts study`: run a study's graph (skipping finished nodes), then write its tidy results table."""

from __future__ import annotations

import csv
import functools
import io
import json
import sys
import time
from pathlib import Path

from filelock import FileLock
from pydantic import ValidationError

from xstilts.config import RunConfig, resolve_data_dir
from xstilts.distributed import current_ranks
from xstilts.errors import XstiltsError
from xstilts.executors import Executor, make_executor
from xstilts.graph import (EvalNodeConfig, Graph, IntermediateNodeConfig, Node, build_graph, node_dir, node_seed,
                           seed_precisions)
from xstilts.manifest import environment, read_json, write_json, write_text_atomically
from xstilts.memory import peak_rss_mb
from xstilts.model import WEIGHTS_FILE
from xstilts.precision import device_kind, pick_device
from xstilts.phases import DONE_FILE, Context, check_plan, eval_node, is_done, read_result, train_node
from xstilts.report.base_model import BASE_MODEL_FILE
from xstilts.report.intermediate_scores import INTERMEDIATE_FILE
from xstilts.study_spec import BASELINE, StudySpec
from xstilts.names import path_component
from xstilts.tasks.registry import load_registry, validation_message
from xstilts.tracking import check_backend
from xstilts.training import CHECKPOINT_DIR

RESULT_COLUMNS = ["arm", "group", "arm_languages", "size_matched", "intermediate_examples",
                  "intermediate_pieces", "seed", "task", "split",
                  "language", "metric", "score", "n", "parallel", "eval_node", "target_node", "intermediate_node",
                  "predictions"]
_CONTEXTS: dict[str, Context] = {}


SETUP_FIELDS = {"model", "task_dirs", "data_dir", "max_length", "pooling", "log"}


def node_setup(setup: StudySpec | RunConfig) -> str:
    """What computing a node takes besides its config (the base model as named, the task and data folders,
    sequence length, pooling, where training curves are logged), as JSON: the same for a study and a run of
    those settings."""
    return setup.model_dump_json(include=SETUP_FIELDS)


def _context(setup: dict, precision: str) -> Context:
    """One context per process and shared settings (model, tokenizer and tokenized data load once); the
    precision is the node's, as resolved when the graph was built, not the worker's own choice."""
    key = json.dumps([setup["model"], setup["task_dirs"], setup["data_dir"], setup["max_length"], precision,
                      setup["pooling"]])
    if key not in _CONTEXTS:
        registry = load_registry([Path(p) for p in setup["task_dirs"]])
        _CONTEXTS[key] = Context.create(setup["model"], registry, resolve_data_dir(setup["data_dir"]),
                                        setup["max_length"], precision, setup["pooling"])
    return _CONTEXTS[key]


def run_node(study_dir: Path, setup_json: str, node: Node) -> dict:
    """Compute one node, or read it when another process has (a module-level function, so process pools and
    cluster executors can ship it). A trained node imported without its weights is trained again here: it
    runs only when a node to compute needs it as a parent."""
    out = node_dir(study_dir, node)
    out.parent.mkdir(parents=True, exist_ok=True)
    if is_done(out) and not usable(study_dir, node):  # imported without weights: to be trained again here
        _check_retraining(out, node)
    if current_ranks().world > 1:  # the processes of one phase (accelerate) compute it together, unlocked
        return read_result(out) if usable(study_dir, node) else _compute_node(study_dir, setup_json, node, out)
    with node_lock(out):
        if usable(study_dir, node):
            return read_result(out)
        (out / DONE_FILE).unlink(missing_ok=True)
        return _compute_node(study_dir, setup_json, node, out)


def node_lock(out: Path) -> FileLock:
    """The lock under which a node's folder is computed or imported (`nodes/KIND-KEY.lock`): one process does it;
    another (a second driver, a retried worker, a merge) waits, then finds it done. The lock is the OS's (flock):
    a killed holder releases it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(out.with_name(out.name + ".lock"))


def _check_retraining(out: Path, node: Node) -> None:
    """A trained node imported without weights is trained again (at its seed's precision, which its key holds)
    only on the kind of device that computed it: its seed's other nodes come from there, and a seed is computed
    wholly on one."""
    recorded, _ = machine_of(read_result(out))
    here = device_kind(pick_device())
    if recorded not in {here, "unknown"}:
        raise XstiltsError(f"{out}: {node.label} was imported without weights from a {recorded} machine; training it "
                           f"again here on {here} would compute seed {node.config.seed} on two kinds of device (its "
                           f"contrasts compare like with like): compute what needs it on a {recorded} machine and merge "
                           "its export here")


def usable(study_dir: Path, node: Node) -> bool:
    """Finished, and for a trained node with its weights (a parent can build on it)."""
    out = node_dir(study_dir, node)
    return is_done(out) and (node.kind == "eval" or (out / WEIGHTS_FILE).exists())


def _compute_node(study_dir: Path, setup_json: str, node: Node, out: Path) -> dict:
    config, setup = node.config, json.loads(setup_json)
    ctx = _context(setup, config.precision)
    parent = study_dir / "nodes" / node.parents[0] if node.parents else None
    if isinstance(config, EvalNodeConfig):
        return eval_node(ctx, out, trained=parent, head=config.head, data=config.data)
    if isinstance(config, IntermediateNodeConfig):
        return train_node(ctx, out, tasks=config.tasks, train=config.train, seed=config.seed, mixing=config,
                          description=node.label, log=setup["log"])
    return train_node(ctx, out, tasks=[config.task], train=config.train, seed=config.seed, parent=parent,
                      carry=config.carry, carry_head=config.carry_head, description=node.label, log=setup["log"])


class StudyProgress:
    """Prints nodes done/running/left, elapsed time and an estimate of what is left."""

    def __init__(self, nodes: list[Node], todo: list[Node], study_dir: Path, workers: int) -> None:
        self.todo = {node.name: node for node in todo}
        finished = [node for node in nodes if node.name not in self.todo and is_done(node_dir(study_dir, node))]
        self.total = len(finished) + len(todo)
        self.cached = len(finished)
        self.workers = workers
        self.running: dict[str, Node] = {}
        self.seconds: dict[str, list[float]] = {}
        self.started_at = time.perf_counter()
        for node in finished:
            self.seconds.setdefault(node.kind, []).append(read_result(node_dir(study_dir, node)).get("seconds", 0.0))

    def started(self, node: Node) -> None:
        self.running[node.name] = node
        self._line(f"start {node.label} [{node.name}]")

    def finished(self, node: Node, result: dict) -> None:
        self.running.pop(node.name, None)
        self.todo.pop(node.name, None)
        self.seconds.setdefault(node.kind, []).append(result.get("seconds", 0.0))
        self._line(f"done  {node.label} [{node.name}] in {result.get('seconds', 0):.0f}s")

    def _line(self, what: str) -> None:
        left = [n for n in self.todo.values() if n.name not in self.running]
        estimate = sum(self._mean(n.kind) for n in left) / self.workers
        done = self.total - len(self.todo)
        print(f"[study {_clock(time.perf_counter() - self.started_at)}] {done}/{self.total} done "
              f"({self.cached} cached), {len(self.running)} running, {len(left)} left, "
              f"about {_clock(estimate)} to go | {what}", file=sys.stderr, flush=True)

    def _mean(self, kind: str) -> float:
        values = self.seconds.get(kind) or [v for vs in self.seconds.values() for v in vs] or [60.0]
        return sum(values) / len(values)


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"


def describe(graph: Graph, study_dir: Path, nodes: list[Node], todo: list[Node], cells: int) -> str:
    """A slice's nodes (`nodes`: its result cells' and their ancestors) as text: each once, its status (`todo` are
    to run; an ancestor of cached nodes that is absent is not needed), parents and the arm/seed cells that share it."""
    lines, to_run = [], {node.name for node in todo}
    for node in nodes:
        directory = node_dir(study_dir, node)
        if node.name in to_run:
            status = "partial" if (directory / CHECKPOINT_DIR).exists() else "todo"
        else:
            status = "cached" if is_done(directory) else "unneeded"
        parents = f" <- {', '.join(node.parents)}" if node.parents else ""
        users = graph.users(node.name)
        lines.append(f"{status:8s} {node.name}{parents}\n         {node.label}; used by {len(users)}: {', '.join(users)}")
    done = sum(node.name not in to_run and is_done(node_dir(study_dir, node)) for node in nodes)
    lines.append(f"{len(nodes)} nodes for {cells} result cells; {done} cached, {len(todo)} to run")
    return "\n".join(lines)


def run_study(spec: StudySpec, study_dir: Path, workers: int | None = None, dry_run: bool = False,
              executor: Executor | None = None, seeds: list[int] | None = None,
              arms: list[str] | None = None) -> Path | None:
    """Run (or with `dry_run`, describe) a study on `executor` (default: local, `workers` processes); returns the
    results table's path. `seeds` and `arms` choose a slice: only its result cells and what they need are
    computed, under the node keys of the whole study, so a slice computed anywhere can be merged."""
    if not dry_run:
        check_backend(spec.log)  # a missing tracker is one line before anything runs
        registry = load_registry([Path(p) for p in spec.task_dirs])
        training = [spec.target.task, *(t for arm in spec.arms for t in arm.tasks)]
        check_plan(registry, resolve_data_dir(spec.data_dir), training, spec.target.task.task, spec.evaluate)
        for data in spec.intermediate_evaluate:  # scored with their own task's head
            check_plan(registry, resolve_data_dir(spec.data_dir), [], data.task, [data])
    workers = workers or spec.workers
    executor = executor or make_executor("local", workers, study_dir)
    begun = seed_precisions(spec, study_dir)
    # a seed not begun is keyed at the precision the executor's workers compute it at (not this driver's)
    asked = not dry_run and any(seed not in begun for seed in seeds or spec.seeds)
    graph = build_graph(spec, begun, executor.precision(spec.precision) if asked else None)
    cells = graph.cells(seeds, arms)
    wanted = graph.wanted(cells)
    todo = graph.to_run(wanted, lambda node: is_done(node_dir(study_dir, node)), lambda node: usable(study_dir, node))
    if dry_run:
        print(describe(graph, study_dir, graph.closure(wanted), todo, len(cells)))
        return None
    started = time.perf_counter()
    study_dir.mkdir(parents=True, exist_ok=True)
    write_json(study_dir / "study.json", spec.model_dump())
    write_json(study_dir / "graph.json", {n.name: {"label": n.label, "parents": n.parents} for n in graph.nodes.values()})
    progress = StudyProgress(graph.closure(wanted), todo, study_dir, workers)
    sliced = f" (slice: {len(cells)} of {len(graph.uses)} result cells)" if len(cells) < len(graph.uses) else ""
    print(f"[study] {len(graph.nodes)} nodes{sliced}, {progress.cached} cached, {len(todo)} to run", file=sys.stderr)
    executor.run(todo, functools.partial(run_node, study_dir, node_setup(spec)), progress)
    path = write_results(spec, graph, study_dir)
    ran = phase_seconds(study_dir, todo)
    found = provenance(graph, study_dir)
    write_json(study_dir / "manifest.json", {
        **environment(), "study": spec.name, "seeds": spec.seeds, "nodes": len(graph.nodes), "ran_nodes": len(todo),
        "data_files": found["data_files"], "computed_on": found["computed_on"],
        "timings_seconds": {"this_invocation": round(time.perf_counter() - started, 1), "ran_by_phase_kind": ran,
                            "ran_by_part": part_seconds(study_dir, todo),
                            "all_nodes_by_phase_kind": found["all_nodes_by_phase_kind"]},
        "peak_rss_mb": round(peak_rss_mb(), 1),
    })
    kinds = ", ".join(f"{kind} {_clock(seconds)}" for kind, seconds in ran.items())
    parts = part_seconds(study_dir, todo)
    if parts:
        kinds += (f"; of which reading and tokenizing {_clock(parts['read_and_tokenize'])}, model loading "
                  f"{_clock(parts['load_model'])}")
    print(f"[study] finished in {_clock(time.perf_counter() - started)} ({kinds or 'all cached'}); results: {path}",
          file=sys.stderr)
    return path


def phase_seconds(study_dir: Path, nodes: list[Node]) -> dict[str, float]:
    """Seconds spent in each kind of phase (intermediate, target, eval) over `nodes`, from their results
    (model loading and tokenization are inside the phase that needed them)."""
    totals: dict[str, float] = {}
    for node in nodes:
        totals[node.kind] = round(totals.get(node.kind, 0.0) + read_result(node_dir(study_dir, node))["seconds"], 1)
    return totals


def part_seconds(study_dir: Path, nodes: list[Node]) -> dict[str, float]:
    """Seconds spent reading and tokenizing data, loading models and computing, over `nodes` (results
    written before these parts were recorded count as computing)."""
    totals = {"read_and_tokenize": 0.0, "load_model": 0.0, "compute": 0.0}
    for node in nodes:
        result = read_result(node_dir(study_dir, node))
        for part, seconds in result.get("seconds_by_part", {"compute": result["seconds"]}).items():
            totals[part] = round(totals[part] + seconds, 1)
    return totals if nodes else {}


def _result(study_dir: Path, name: str) -> dict:
    return read_result(study_dir / "nodes" / name)


def machine_of(result: dict) -> tuple[str, str]:
    """(device kind, CPU model) a node's result records ('unknown' for results from before they did)."""
    machine = result.get("machine") if isinstance(result.get("machine"), dict) else {}
    return str(machine.get("device", "unknown")), str(machine.get("cpu", "unknown"))


def provenance(graph: Graph, study_dir: Path) -> dict:
    """Of a study's finished nodes: the data files read with their checksums, the seconds by phase kind, and
    per seed the precision, device kind and CPU model that computed it (`computed_on`)."""
    finished = [node for node in graph.nodes.values() if is_done(node_dir(study_dir, node))]
    computed_on: dict[str, list[dict]] = {}
    data_files = {}
    for node in finished:
        result = read_result(node_dir(study_dir, node))
        data_files.update({d["source"]: d["sha256"] for d in result["data"]})
        device, cpu = machine_of(result)
        where = {"precision": node.config.precision, "device": device, "cpu": cpu}
        seed = node_seed(graph, node)
        if seed is not None and where not in computed_on.setdefault(str(seed), []):
            computed_on[str(seed)].append(where)
    return {"data_files": data_files, "computed_on": computed_on,
            "all_nodes_by_phase_kind": phase_seconds(study_dir, finished)}


def write_results(spec: StudySpec, graph: Graph, study_dir: Path, into: Path | None = None,
                  predictions_suffix: str = "") -> Path:
    """results.csv and results.jsonl: one row per arm x seed x evaluation task x language of every finished
    result cell, with the primary metric's name and score (results.jsonl also every metric, `scores`);
    base_model.csv: the base model's scores on the retrieval evaluations, one row per task x language;
    intermediate.csv: the intermediate models' scores (`intermediate_evaluate`), one row per arm x seed x task x
    language.
    Read from `study_dir`, written `into` it or another folder (an export, whose predictions files carry
    `predictions_suffix`)."""
    arms = {arm.name: arm for arm in spec.arms}
    registry = load_registry([Path(p) for p in spec.task_dirs])
    rows = []
    for use in graph.uses:
        if not is_done(study_dir / "nodes" / use.eval):
            continue
        arm = arms.get(use.arm)
        evaluation = _result(study_dir, use.eval)
        examples, pieces = 0, 0
        if use.intermediate:
            trained = _result(study_dir, use.intermediate)
            examples, pieces = sum(trained["train_examples"].values()), trained["metrics"].get("train_pieces", "")
        languages = sorted({lang for t in arm.tasks for lang in (t.languages or registry.get(t.task).languages)}) if arm else []
        for language, value in evaluation["languages"].items():
            rows.append({
                "arm": use.arm, "group": arm.group if arm else BASELINE, "arm_languages": ";".join(languages),
                "size_matched": bool(arm and arm.cap), "intermediate_examples": examples,
                "intermediate_pieces": pieces, "seed": use.seed,
                "task": evaluation["task"], "split": evaluation["split"], "language": language,
                "metric": value["metric"], "score": value["score"], "scores": value["scores"], "n": value["n"],
                "parallel": registry.get(evaluation["task"]).parallel, "eval_node": use.eval, "target_node": use.target,
                "intermediate_node": use.intermediate or "",
                "predictions": str(Path("nodes") / use.eval / "predictions" / f"{language}.csv{predictions_suffix}"),
            })
    into = into or study_dir
    path = into / "results.csv"
    table = [{column: row[column] for column in RESULT_COLUMNS} for row in rows]  # `scores` only in results.jsonl
    write_text_atomically(path, _csv(RESULT_COLUMNS, table))
    write_text_atomically(into / "results.jsonl", "".join(json.dumps(row) + "\n" for row in rows))
    base = [{"task": result["task"], "split": result["split"], "language": language, "metric": value["metric"],
             "score": value["score"], "n": value["n"], "eval_node": name}
            for name in graph.base if is_done(study_dir / "nodes" / name) for result in [_result(study_dir, name)] for language, value in result["languages"].items()]
    if base:
        write_text_atomically(into / BASE_MODEL_FILE, _csv(list(base[0]), base))
    probes = [{"arm": probe.arm, "group": arms[probe.arm].group, "seed": probe.seed, "task": result["task"],
               "split": result["split"], "language": language, "metric": value["metric"], "score": value["score"],
               "n": value["n"], "eval_node": probe.eval, "intermediate_node": probe.intermediate}
              for probe in graph.probes if is_done(study_dir / "nodes" / probe.eval)
              for result in [_result(study_dir, probe.eval)] for language, value in result["languages"].items()]
    if probes:
        write_text_atomically(into / INTERMEDIATE_FILE, _csv(list(probes[0]), probes))
    return path


def _csv(columns: list[str], rows: list[dict]) -> str:
    table = io.StringIO()
    writer = csv.DictWriter(table, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return table.getvalue()


def _rewrite(study_dir: Path) -> str:
    """What to do about a damaged file the study writes at every run."""
    return f"run `xstilts study STUDY.yaml --output {study_dir}` again to rewrite it (finished nodes are kept)"


def read_spec(study_dir: Path, fix: str | None = None) -> StudySpec:
    """A study folder's study.json; a missing, damaged or invalid one is one line ending in `fix` (by default:
    run the study again)."""
    path, fix = study_dir / "study.json", fix or _rewrite(study_dir)
    try:
        return StudySpec(**read_json(path, fix))
    except ValidationError as error:
        raise XstiltsError(f"{validation_message(path, error)}; {fix}") from None


def _read_graph(study_dir: Path) -> dict[str, dict]:
    """A study folder's graph.json: node name -> its label and parents; names that are not one folder name
    (which could lead outside `nodes/`) and entries without a label are one line."""
    path = study_dir / "graph.json"
    nodes = read_json(path, _rewrite(study_dir))
    for name, info in nodes.items():
        try:
            path_component(name)
        except ValueError as error:
            raise XstiltsError(f"{path}: {error}; {_rewrite(study_dir)}") from None
        if not isinstance(info, dict) or not isinstance(info.get("label"), str):
            raise XstiltsError(f"{path}: node {name}: no label; {_rewrite(study_dir)}")
    return nodes


def study_status(study_dir: Path) -> str:
    """Which nodes of a started study are finished, partial (checkpointed) or still to run."""
    if not (study_dir / "graph.json").exists():
        raise XstiltsError(f"{study_dir}: not a study directory (no graph.json)")
    nodes = _read_graph(study_dir)
    counts = {"done": 0, "partial": 0, "todo": 0}
    lines = []
    for name, info in nodes.items():
        directory = study_dir / "nodes" / name
        status = "done" if is_done(directory) else "partial" if (directory / CHECKPOINT_DIR).exists() else "todo"
        counts[status] += 1
        lines.append(f"{status:8s} {name}  {info['label']}")
    lines.append(f"{len(nodes)} nodes: {counts['done']} done, {counts['partial']} partial, {counts['todo']} to run"
                 + ("; results.csv written" if (study_dir / "results.csv").exists() else ""))
    return "\n".join(lines)
