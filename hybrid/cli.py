"""The ``hybrid`` command: a table from command names to pipeline functions.

User errors (:class:`~hybrid.errors.HybridError`) print one line and exit with status 1;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from hybrid.errors import HybridError


def _tune(args: argparse.Namespace) -> Any:
    from hybrid.config import load_config
    from hybrid.pipeline import run_tune

    return run_tune(load_config(args.config, args.set))


COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], Any], str]] = {
    "tune": (_tune, "ingest a Spark DataFrame, tune a model with Ray Tune (Optuna + ASHA), evaluate the best"),
}


def _quiet_known_noise() -> None:
    """Silence warnings that are ours to silence (third-party deprecations we cannot act on)."""
    warnings.filterwarnings("ignore", message=".*DataFrame.sql_ctx is an internal property.*")
    warnings.filterwarnings("ignore", message=".*parallelism.*deprecated.*")
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.ao\.quantization.*")
    logging.getLogger("py4j").setLevel(logging.WARNING)


def build_parser() -> argparse.ArgumentParser:
    """Argument parser with one sub-command per entry of :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(prog="hybrid", description="Spark DataFrames in, tuned and compressed models out.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of user errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        cmd.add_argument("config", help="run config YAML (see configs/)")
        cmd.add_argument(
            "--set", action="append", default=[], metavar="KEY=VALUE",
            help="override a config value, e.g. --set tune.num_samples=4 (repeatable)",
        )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    args = build_parser().parse_args(argv)
    # Progress lines must appear as they happen, also when stdout is a file or a pipe.
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    _quiet_known_noise()
    handler, _ = COMMANDS[args.command]
    try:
        handler(args)
    except HybridError as err:
        if args.debug:
            raise
        print(f"hybrid {args.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"hybrid {args.command}: interrupted; Ray and Spark were shut down", file=sys.stderr)
        return 130
    return 0
