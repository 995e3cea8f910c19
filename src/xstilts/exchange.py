"""Results that travel: `xstilts export` writes a study's finished nodes without weights (results, compressed
per-example predictions, provenance); `xstilts merge` takes exports from other machines into a study folder.

A node's name is the hash of its kind, config and parents, so the same node computed on two machines has the
same name; merge checks that hash against the config the export carries, refuses two copies of one node whose
contents differ, and refuses a seed whose nodes were computed at different precisions or on different device
kinds (seed-blocked contrasts compare like with like). Across seeds both may differ; the report lists them.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import shutil
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from xstilts.errors import XstiltsError
from xstilts.graph import (NODE_CONFIGS, Graph, Node, build_graph, node_dir, node_seed, precision_graphs,
                           seed_precisions)
from xstilts.manifest import environment, write_json, write_text_atomically
from xstilts.phases import RESULT_FILE, is_done, mark_done, read_result
from xstilts.study import machine_of, node_lock, provenance, read_spec, write_results
from xstilts.study_spec import StudySpec

EXPORT_FILE = "export.json"
EXPORT_FORMAT = 1
# What may differ between two computations of one node without their contents differing (keys at any depth
# of a result: timings, speeds, memory, the machine).
CIRCUMSTANCES = frozenset({"seconds", "seconds_by_part", "peak_rss_mb", "machine", "pairs_per_second",
                           "train_seconds", "examples_per_second", "tokens_per_second"})
NODE_NAME = re.compile(r"(intermediate|target|eval)-[0-9a-f]{16}")
PREDICTIONS_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\.csv")
# Where and how wide a copy ran, which seeds it listed (node keys hold their own seed) and what it logged to: not
# what it computed.
SPEC_CIRCUMSTANCES = {"data_dir", "workers", "seeds", "log"}


def _read_spec(folder: Path) -> StudySpec:
    """The study.json of a study or export folder."""
    return read_spec(folder, "is it a study or export folder?")


def _where(graph: Graph, node: Node, result: dict) -> tuple[int | None, str, str, str]:
    """(seed, precision, device kind, CPU model) of a finished node."""
    return (node_seed(graph, node), node.config.precision, *machine_of(result))


def export_study(study_dir: Path, output: Path) -> str:
    """Write every finished node of `study_dir` into `output`: result.json, predictions as .csv.gz, the node's
    config; and the study's spec, results tables and provenance. No weights. Returns a summary line."""
    _check_output(study_dir, output)
    spec = _read_spec(study_dir)
    graph = build_graph(spec, seed_precisions(spec, study_dir))
    nodes = {}
    for node in graph.nodes.values():
        source = node_dir(study_dir, node)
        if not is_done(source):
            continue
        result = read_result(source)
        target = output / "nodes" / node.name
        target.mkdir(parents=True)
        (target / RESULT_FILE).write_bytes((source / RESULT_FILE).read_bytes())
        for predictions in sorted((source / "predictions").glob("*.csv")):
            (target / "predictions").mkdir(exist_ok=True)
            # mtime 0: the same predictions give the same bytes, so a committed export diffs cleanly
            with gzip.GzipFile(target / "predictions" / f"{predictions.name}.gz", "wb", mtime=0) as packed:
                packed.write(predictions.read_bytes())
        seed, precision, device, cpu = _where(graph, node, result)
        nodes[node.name] = {"kind": node.kind, "label": node.label, "parents": list(node.parents),
                            "config": node.config.model_dump(), "seed": seed, "precision": precision, "device": device, "cpu": cpu}
    if not nodes:
        raise XstiltsError(f"{study_dir}: no finished nodes to export")
    write_json(output / "study.json", spec.model_dump())
    write_results(spec, graph, study_dir, into=output, predictions_suffix=".gz")
    found = provenance(graph, study_dir)
    write_json(output / "manifest.json", {**environment(), "study": spec.name, "seeds": spec.seeds, **found})
    write_json(output / EXPORT_FILE, {"format": EXPORT_FORMAT, "study": spec.name, "nodes": nodes})
    seeds = sorted({info["seed"] for info in nodes.values() if info["seed"] is not None})
    return f"{output}: {len(nodes)} finished nodes of {spec.name} (seeds {', '.join(map(str, seeds))}), no weights"


def _check_output(study_dir: Path, output: Path) -> None:
    """An export goes into a new or empty folder other than the study's; a folder holding files is refused, an
    earlier export too (delete it to export again)."""
    if output.resolve() == study_dir.resolve():
        raise XstiltsError(f"{output}: the export folder cannot be the study folder; give a new or empty folder")
    if output.exists() and not output.is_dir():
        raise XstiltsError(f"{output}: --output names a file; give a new or empty folder")
    if output.is_dir() and any(output.iterdir()):
        held = "an export already (delete it to export again)" if (output / EXPORT_FILE).exists() else "files and is not an export"
        raise XstiltsError(f"{output}: holds {held}; give a new or empty folder")


@dataclass(frozen=True)
class _Copy:
    """One node as an export (or the study folder) holds it."""

    origin: Path
    folder: Path
    info: dict

    def contents(self) -> str:
        """A hash of what the node computed: its result less the circumstances (its data files by checksum, not
        by path: paths differ between machines), and its predictions."""
        result = _without_circumstances(read_result(self.folder))
        if isinstance(result.get("data"), list):
            result["data"] = [{key: value for key, value in entry.items() if key != "source"}
                              if isinstance(entry, dict) else entry for entry in result["data"]]
        digest = hashlib.sha256(json.dumps(result, sort_keys=True).encode())
        for name, data in self.predictions():
            digest.update(name.encode() + b"\0" + data)
        return digest.hexdigest()

    def predictions(self) -> list[tuple[str, bytes]]:
        """(file name, CSV bytes) of each per-example predictions file, compressed or not."""
        files = []
        for path in sorted((self.folder / "predictions").glob("*")):
            name = path.name.removesuffix(".gz")
            if not PREDICTIONS_NAME.fullmatch(name) or name in {"..", "."}:
                raise XstiltsError(f"{path}: not a predictions file name (LANGUAGE.csv or LANGUAGE.csv.gz)")
            try:
                files.append((name, gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()))
            except (EOFError, zlib.error, gzip.BadGzipFile) as error:
                raise XstiltsError(f"{path}: damaged or truncated ({error}); export it again") from None
        return files


def _without_circumstances(value: object) -> object:
    if isinstance(value, dict):
        return {key: _without_circumstances(item) for key, item in value.items() if key not in CIRCUMSTANCES}
    if isinstance(value, list):
        return [_without_circumstances(item) for item in value]
    return value


def _export_copies(export: Path, spec: StudySpec, same_study: bool = True) -> dict[str, _Copy]:
    """The nodes of one export, each checked: a node name, a config that hashes to it, a readable result; with
    `same_study`, the export must be of `spec`'s study."""
    path = export / EXPORT_FILE
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise XstiltsError(f"{export}: no {EXPORT_FILE} (not an export; make one with `xstilts export`)") from None
    except ValueError as error:
        raise XstiltsError(f"{path}: not JSON ({error})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != EXPORT_FORMAT or not isinstance(manifest.get("nodes"), dict):
        raise XstiltsError(f"{path}: not an export of format {EXPORT_FORMAT}")
    copies = {}
    for name, info in manifest["nodes"].items():
        if not NODE_NAME.fullmatch(str(name)):
            raise XstiltsError(f"{path}: {name!r} is not a node name")
        try:
            config = NODE_CONFIGS[info["kind"]](**info["config"])
            node = Node(info["kind"], config, tuple(info["parents"]), info["label"])
        except (KeyError, TypeError, ValidationError) as error:
            first = str(error).splitlines()[0]
            raise XstiltsError(f"{path}: node {name}: a missing or malformed entry ({first})") from None
        if node.name != name:
            raise XstiltsError(f"{path}: node {name}: its config hashes to {node.name} (edited or damaged)")
        folder = export / "nodes" / name
        try:
            read_result(folder)
        except XstiltsError as error:
            raise XstiltsError(f"{str(error).split('; ')[0]}; the export is damaged: export it again") from None
        copies[name] = _Copy(export, folder, info)
    if same_study and manifest.get("study") != spec.name:
        raise XstiltsError(f"{path}: an export of study {manifest.get('study')!r}, not {spec.name!r}")
    return copies


def _same_study(first: StudySpec, other: StudySpec, where: Path) -> None:
    a, b = first.model_dump(), other.model_dump()
    differing = sorted(key for key in a.keys() | b.keys() if key not in SPEC_CIRCUMSTANCES and a.get(key) != b.get(key))
    if differing:
        raise XstiltsError(f"{where / 'study.json'}: the study differs from the one being merged into in "
                           f"{', '.join(differing)}")


def merge_exports(study_dir: Path, exports: list[Path], data_dir: str | None = None,
                  study: StudySpec | None = None) -> str:
    """Take the finished nodes of `exports` into `study_dir` (created if new), then rewrite its results tables
    and provenance. Everything is checked before anything is written: the studies agree, every node and its
    result is sound, each seed stays at one precision and on one kind of device, and the results tables can be
    written. `data_dir` (this machine's data folder) is recorded in the study's spec; a new study folder
    otherwise records none, not the exporting machine's.

    `study`: the spec of another study, which shares nodes with the exports' (the same baseline, when the
    target and evaluation are the same): only the nodes of its graph are taken, the others passed over, and it
    is the study folder's spec. Returns a summary line."""
    specs = [_read_spec(export) for export in exports]
    if study is not None:
        spec = study if data_dir is None else study.model_copy(update={"data_dir": data_dir})
        if (study_dir / "study.json").exists():
            _same_study(spec, _read_spec(study_dir), study_dir)
    else:
        spec = _read_spec(study_dir) if (study_dir / "study.json").exists() else specs[0].model_copy(update={"data_dir": None})
        if data_dir is not None:
            spec = spec.model_copy(update={"data_dir": data_dir})
        for export, other in zip(exports, specs):
            _same_study(spec, other, export)
        seeds = sorted({seed for other in [spec, *specs] for seed in other.seeds})  # a later copy may add seeds
        spec = spec.model_copy(update={"seeds": seeds})
    graphs = precision_graphs(spec)
    known = {name: (graph, node) for graph in graphs.values() for name, node in graph.nodes.items()}
    held = {name: _Copy(study_dir, node_dir(study_dir, node), {}) for name, (graph, node) in known.items()
            if is_done(node_dir(study_dir, node))}
    incoming: dict[str, _Copy] = {}
    passed = 0
    for export in exports:
        for name, copy in _export_copies(export, spec, same_study=study is None).items():
            if name not in known and study is not None:
                passed += 1  # a node of the export's study that this one does not share
                continue
            if name not in known:
                raise XstiltsError(f"{export}: node {name} ({copy.info['label']}) is not a node of study {spec.name!r} "
                                   "on these data files (give this machine's data folder with --data-dir)")
            first = held.get(name) or incoming.get(name)
            if first is not None and first.contents() != copy.contents():
                raise XstiltsError(f"{copy.folder}: differs from the copy in {first.origin} ({copy.info['label']}); "
                                   "one node cannot have two results")
            incoming.setdefault(name, copy)
    precisions = _check_seeds(known, {**held, **incoming}, seed_precisions(spec, study_dir), study_dir)
    new = {name: copy for name, copy in incoming.items() if name not in held}
    for copy in new.values():
        copy.predictions()  # readable, before anything is written
    graph = build_graph(spec, precisions)
    _trial(spec, graph, {**held, **incoming}, study_dir)
    written = sum(_write_node(copy, node_dir(study_dir, known[name][1])) for name, copy in new.items())
    write_json(study_dir / "study.json", spec.model_dump())
    write_results(spec, graph, study_dir)
    write_json(study_dir / "manifest.json", {**environment(), "study": spec.name, "seeds": spec.seeds,
                                             **provenance(graph, study_dir)})
    return (f"{study_dir}: {written} nodes taken in, {len(incoming) - written} already there"
            + (f", {passed} not of this study passed over" if study is not None else "") + "; "
            f"results.csv rewritten")


def _check_seeds(known: dict[str, tuple[Graph, Node]], copies: dict[str, _Copy], begun: dict[int, str],
                 study_dir: Path) -> dict[int, str]:
    """Refuse a seed whose nodes carry different precisions or device kinds (a node computed before results
    recorded their machine matches any device kind), or whose incoming nodes are at another precision than the
    nodes `study_dir` has begun (`begun`: seed -> precision). Returns the precision of every seed found."""
    seen: dict[int, tuple[str, str, Path]] = {}
    for name, copy in copies.items():
        graph, node = known[name]
        seed, precision, device, _ = _where(graph, node, read_result(copy.folder))
        if seed is None:
            continue
        if begun.get(seed, precision) != precision:
            raise XstiltsError(f"{copy.origin}: seed {seed} was computed at {precision} there but {study_dir} has "
                               f"nodes of it at {begun[seed]}; a seed is computed at one precision (give each seed "
                               "wholly to one machine)")
        first = seen.setdefault(seed, (precision, device, copy.origin))
        if first[1] == "unknown" and device != "unknown":
            first = seen[seed] = (first[0], device, copy.origin)
        if first[0] != precision or device not in {first[1], "unknown"}:
            raise XstiltsError(f"{copy.origin}: seed {seed} was computed at {precision} on {device} there but at "
                               f"{first[0]} on {first[1]} in {first[2]}; a seed's contrasts must compare like with "
                               "like (give each seed wholly to one machine)")
    return {**begun, **{seed: first[0] for seed, first in seen.items()}}


def _trial(spec: StudySpec, graph: Graph, copies: dict[str, _Copy], study_dir: Path) -> None:
    """Write the merged results tables and provenance from the merged nodes' results into a scratch folder, so
    that a result they cannot be written from is refused before anything is written into `study_dir`."""
    with tempfile.TemporaryDirectory(prefix="xstilts-merge-") as scratch:
        trial = Path(scratch)
        for name, copy in copies.items():
            (trial / "nodes" / name).mkdir(parents=True)
            shutil.copyfile(copy.folder / RESULT_FILE, trial / "nodes" / name / RESULT_FILE)
            mark_done(trial / "nodes" / name)
        try:
            write_results(spec, graph, trial)
            provenance(graph, trial)
        except XstiltsError as error:
            message = str(error)
            for name, copy in copies.items():
                message = message.replace(str(trial / "nodes" / name), str(copy.folder))
            raise XstiltsError(message.replace(str(trial), str(study_dir))) from None
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            origins = ", ".join(sorted({str(copy.origin) for copy in copies.values()}))
            raise XstiltsError(f"{study_dir}: the merged results cannot be written ({type(error).__name__}: {error}): "
                               f"a node's {RESULT_FILE} in {origins} lacks what results.csv needs; nothing was "
                               "written") from None


def _write_node(copy: _Copy, target: Path) -> bool:
    """Under the node's lock (as the study runner computes it): its result and plain-CSV predictions, then its
    DONE marker (last); a partial copy is replaced, a node finished here meanwhile kept. Whether it was written."""
    with node_lock(target):
        if is_done(target):
            return False
        if target.exists():
            shutil.rmtree(target)
        for name, data in copy.predictions():
            (target / "predictions").mkdir(parents=True, exist_ok=True)
            (target / "predictions" / name).write_bytes(data)
        write_text_atomically(target / RESULT_FILE, (copy.folder / RESULT_FILE).read_text(encoding="utf-8"))
        mark_done(target)
    return True
