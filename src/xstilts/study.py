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

from xstilts.config import resolve_data_dir
from xstilts.errors import XstiltsError
from xstilts.executors import Executor, make_executor
from xstilts.graph import (EvalNodeConfig, Graph, IntermediateNodeConfig, Node, build_graph, node_dir, node_seed,
                           seed_precisions)
from xstilts.manifest import environment, write_json, write_text_atomically
from xstilts.memory import peak_rss_mb
from xstilts.model import WEIGHTS_FILE
from xstilts.phases import DONE_FILE, Context, check_plan, eval_node, is_done, read_result, train_node
from xstilts.report.base_model import BASE_MODEL_FILE
from xstilts.study_spec import BASELINE, StudySpec
from xstilts.tasks.registry import load_registry
from xstilts.training import CHECKPOINT_DIR

RESULT_COLUMNS = ["arm", "group", "arm_languages", "size_matched", "intermediate_examples",
                  "intermediate_pieces", "seed", "task", "split",
                  "language", "metric", "score", "n", "parallel", "eval_node", "target_node", "intermediate_node",
                  "predictions"]
_CONTEXTS: dict[str, Context] = {}


def _context(spec: StudySpec, precision: str) -> Context:
    """One context per process and shared settings (model, tokenizer and tokenized data load once); the
    precision is the node's, as resolved when the graph was built, not the worker's own choice."""
    key = json.dumps([spec.model, spec.task_dirs, spec.data_dir, spec.max_length, precision, spec.pooling])
    if key not in _CONTEXTS:
        registry = load_registry([Path(p) for p in spec.task_dirs])
        _CONTEXTS[key] = Context.create(spec.model, registry, resolve_data_dir(spec.data_dir), spec.max_length,
                                        precision, spec.pooling)
    return _CONTEXTS[key]


def run_node(study_dir: Path, spec_json: str, node: Node) -> dict:
    """Compute one node, or read it when another process has (a module-level function, so process pools and
    cluster executors can ship it). A trained node imported without its weights is trained again here: it
    runs only when a node to compute needs it as a parent."""
    out = node_dir(study_dir, node)
    out.parent.mkdir(parents=True, exist_ok=True)
    # One process computes a node; another (a second driver, a retried worker) waits, then reads its result.
    # The lock is the OS's (flock): a killed holder releases it.
    with FileLock(out.with_name(out.name + ".lock")):
        if usable(study_dir, node):
            return read_result(out)
        (out / DONE_FILE).unlink(missing_ok=True)
        return _compute_node(study_dir, spec_json, node, out)


def usable(study_dir: Path, node: Node) -> bool:
    """Finished, and for a trained node with its weights (a parent can build on it)."""
    out = node_dir(study_dir, node)
    return is_done(out) and (node.kind == "eval" or (out / WEIGHTS_FILE).exists())


def _compute_node(study_dir: Path, spec_json: str, node: Node, out: Path) -> dict:
    spec = StudySpec.model_validate_json(spec_json)
    config = node.config
    ctx = _context(spec, config.precision)
    parent = study_dir / "nodes" / node.parents[0] if node.parents else None
    if isinstance(config, EvalNodeConfig):
        return eval_node(ctx, out, trained=parent, head=config.head, data=config.data)
    if isinstance(config, IntermediateNodeConfig):
        return train_node(ctx, out, tasks=config.tasks, train=config.train, seed=config.seed, mixing=config,
                          description=node.label)
    return train_node(ctx, out, tasks=[config.task], train=config.train, seed=config.seed, parent=parent,
                      carry=config.carry, carry_head=config.carry_head, description=node.label)


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


def describe(graph: Graph, study_dir: Path) -> str:
    """The graph as text: each node once, its status, parents and the arm/seed cells that share it."""
    lines = []
    for node in graph.nodes.values():
        directory = node_dir(study_dir, node)
        status = "cached" if is_done(directory) else ("partial" if (directory / CHECKPOINT_DIR).exists() else "todo")
        parents = f" <- {', '.join(node.parents)}" if node.parents else ""
        users = graph.users(node.name)
        lines.append(f"{status:8s} {node.name}{parents}\n         {node.label}; used by {len(users)}: {', '.join(users)}")
    done = sum(is_done(node_dir(study_dir, n)) for n in graph.nodes.values())
    lines.append(f"{len(graph.nodes)} nodes for {len(graph.uses)} result cells; {done} cached, {len(graph.nodes) - done} to run")
    return "\n".join(lines)


def run_study(spec: StudySpec, study_dir: Path, workers: int | None = None, dry_run: bool = False,
              executor: Executor | None = None, seeds: list[int] | None = None,
              arms: list[str] | None = None) -> Path | None:
    """Run (or with `dry_run`, describe) a study on `executor` (default: local, `workers` processes); returns the
    results table's path. `seeds` and `arms` choose a slice: only its result cells and what they need are
    computed, under the node keys of the whole study, so a slice computed anywhere can be merged."""
    graph = build_graph(spec, seed_precisions(spec, study_dir))
    cells = graph.cells(seeds, arms)
    wanted = [*graph.base, *dict.fromkeys(use.eval for use in cells)]
    if dry_run:
        print(describe(graph, study_dir))
        return None
    started = time.perf_counter()
    registry = load_registry([Path(p) for p in spec.task_dirs])
    training = [spec.target.task, *(t for arm in spec.arms for t in arm.tasks)]
    check_plan(registry, resolve_data_dir(spec.data_dir), training, spec.target.task.task, spec.evaluate)
    study_dir.mkdir(parents=True, exist_ok=True)
    write_json(study_dir / "study.json", spec.model_dump())
    write_json(study_dir / "graph.json", {n.name: {"label": n.label, "parents": n.parents} for n in graph.nodes.values()})
    workers = workers or spec.workers
    todo = graph.to_run(wanted, lambda node: is_done(node_dir(study_dir, node)), lambda node: usable(study_dir, node))
    progress = StudyProgress(graph.closure(wanted), todo, study_dir, workers)
    sliced = f" (slice: {len(cells)} of {len(graph.uses)} result cells)" if len(cells) < len(graph.uses) else ""
    print(f"[study] {len(graph.nodes)} nodes{sliced}, {progress.cached} cached, {len(todo)} to run", file=sys.stderr)
    executor = executor or make_executor("local", workers, study_dir)
    executor.run(todo, functools.partial(run_node, study_dir, spec.model_dump_json()), progress)
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
    base_model.csv: the base model's scores on the retrieval evaluations, one row per task x language.
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
            for name in graph.base for result in [_result(study_dir, name)] for language, value in result["languages"].items()]
    if base:
        write_text_atomically(into / BASE_MODEL_FILE, _csv(list(base[0]), base))
    return path


def _csv(columns: list[str], rows: list[dict]) -> str:
    table = io.StringIO()
    writer = csv.DictWriter(table, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return table.getvalue()


def study_status(study_dir: Path) -> str:
    """Which nodes of a started study are finished, partial (checkpointed) or still to run."""
    graph_file = study_dir / "graph.json"
    if not graph_file.exists():
        raise XstiltsError(f"{study_dir}: not a study directory (no graph.json)")
    nodes = json.loads(graph_file.read_text())
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
