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
from pathlib import Path
from typing import Any

from hybrid.errors import ConfigError, HybridError


def _stages(*stages: str) -> Callable[[argparse.Namespace], Any]:
    def handler(args: argparse.Namespace) -> Any:
        from hybrid.config import check_before_start, load_config

        config = load_config(args.config, args.set)
        check_before_start(config)  # before Ray, Spark or the run directory: a mistake costs seconds
        from hybrid.pipeline import run

        return run(config, stages=stages, restart=args.restart)

    return handler


def _score(args: argparse.Namespace) -> Any:
    from hybrid.config import load_config

    config = load_config(args.config, args.set)
    _check_score_paths(args.input, args.model, args.output, overwrite=args.overwrite)
    from hybrid.runtime import running
    from hybrid.score import data_layout, score_to_parquet

    with running(config.runtime) as runtime:
        result = score_to_parquet(
            runtime.spark, args.input, args.model, args.output, batch_size=config.score.batch_size,
            mode="overwrite" if args.overwrite else "error", **data_layout(config.data),
        )
    rejected = sum(result.rejected.values())
    found = {name.replace("_", " "): value for name, value in result.metrics.items() if value is not None}
    metrics = "; " + ", ".join(f"{name} {value:.4f}" for name, value in found.items()) + " (gold column)" if found else ""
    print(f"[score] {result.rows} rows ({result.scored} scored, {rejected} rejected {result.rejected if rejected else ''}) "
          f"-> {result.output_path} in {result.duration_s:.1f} s{metrics}")
    return result


def _is_local(path: str) -> bool:
    """Whether Spark would read ``path`` from this machine's file system (not ``s3a://``, ``hdfs://``...)."""
    return "://" not in path or path.startswith("file://")


def _check_score_paths(input_path: str, model_dir: str, output_path: str, *, overwrite: bool) -> None:
    """Fail before Ray and Spark start when ``hybrid score`` could only fail later.

    Raises:
        ConfigError: Naming the option, the rule and the path (remote ``scheme://`` tables are Spark's to check).
    """
    from hybrid.artifacts import MANIFEST, META

    for option, path in (("--input", input_path), ("--model", model_dir), ("--output", output_path)):
        if "\x00" in path:
            raise ConfigError(f"{option} must not contain a NUL character, but got {path!r}")
    local = {p: Path(p.removeprefix("file://")) for p in (input_path, output_path) if _is_local(p)}
    if input_path in local and not local[input_path].exists():
        raise ConfigError(f"--input: path {input_path!r} must exist (a Parquet file or directory), but it does not")
    model = Path(model_dir)
    if not model.is_dir():
        raise ConfigError(
            f"--model: {model_dir!r} must be a model directory (teacher/, student/...), but it does not exist"
        )
    missing = [name for name in (META, MANIFEST) if not (model / name).is_file()]
    if missing:
        raise ConfigError(
            f"--model: {model_dir!r} must be a hybrid model directory, but it has no {' or '.join(missing)}"
        )
    if output_path in local:
        out = local[output_path]
        if out.exists() and not overwrite:
            raise ConfigError(f"--output: path {output_path!r} must not exist already, but it does "
                              "(pass --overwrite to replace it)")
        if input_path in local and out.resolve() == local[input_path].resolve():
            raise ConfigError(f"--output must differ from --input (Spark would delete the table it reads), "
                              f"but both are {output_path!r}")
        if (out / META).is_file() or out.resolve() == model.resolve():
            raise ConfigError(f"--output: {output_path!r} must not be a model directory, but it is one")


def _runs(args: argparse.Namespace) -> Any:
    from hybrid.runs import find_runs, format_runs

    runs = find_runs(args.runs_dir)
    print(format_runs(runs, args.runs_dir))
    return runs


def _show(args: argparse.Namespace) -> Any:
    from hybrid.runs import format_run, read_run, resolve_run

    run = read_run(resolve_run(args.run, args.runs_dir))
    print(format_run(run))
    return run


def _config_arguments(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("config", help="run config YAML (see configs/)")
    cmd.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="override a config value, e.g. --set tune.num_samples=4 (repeatable)",
    )


def _stage_arguments(cmd: argparse.ArgumentParser) -> None:
    _config_arguments(cmd)
    cmd.add_argument("--restart", action="store_true", help="redo the stages even if their results are current (a fresh search, not a resumed one)")


def _score_arguments(cmd: argparse.ArgumentParser) -> None:
    _config_arguments(cmd)
    cmd.add_argument("--model", required=True, help="model directory (teacher/, student/, student_int8/)")
    cmd.add_argument("--input", required=True, help="Parquet table with a pixels column")
    cmd.add_argument("--output", required=True,
                     help="where to write the scored Parquet table (must not exist unless --overwrite)")
    cmd.add_argument("--overwrite", action="store_true", help="replace --output if it already exists")


def _runs_dir_argument(cmd: argparse.ArgumentParser) -> None:
    from hybrid.rundir import DEFAULT_RUNS_DIR

    cmd.add_argument("--runs-dir", default=DEFAULT_RUNS_DIR, metavar="DIR",
                     help=f"the runs directory (a config's runs_dir; default: {DEFAULT_RUNS_DIR})")


def _show_arguments(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("run", metavar="RUN", help="a run name inside the runs directory, or a path to a run directory")
    _runs_dir_argument(cmd)


Arguments = Callable[[argparse.ArgumentParser], None]
COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], Any], str, Arguments]] = {
    "run": (_stages("tune", "distill", "quantize", "score"),
            "the whole chain: ingest, tune, distill, quantize, score in Spark, report (resumes a stopped run)",
            _stage_arguments),
    "tune": (_stages("tune"), "ingest a Spark DataFrame, tune a model with Ray Tune (Optuna + ASHA), evaluate the best",
             _stage_arguments),
    "distill": (_stages("distill"), "distill the run's teacher into a smaller student (needs a tuned run)",
                _stage_arguments),
    "quantize": (_stages("quantize"), "quantize the run's student to int8, gated on accuracy (needs a distilled run)",
                 _stage_arguments),
    "score": (_score, "score a Parquet table in Spark with a model directory and write Parquet", _score_arguments),
    "runs": (_runs, "list the runs in a runs directory, newest first (reads files only: starts nothing)",
             _runs_dir_argument),
    "show": (_show, "print one run's state, data, search, models and stage times (reads files only)",
             _show_arguments),
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
    for name, (_, help_text, add_arguments) in COMMANDS.items():
        add_arguments(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    args = build_parser().parse_args(argv)
    # Progress lines must appear as they happen, also when stdout is a file or a pipe.
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    _quiet_known_noise()
    handler, _, _ = COMMANDS[args.command]
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
