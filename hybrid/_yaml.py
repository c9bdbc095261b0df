"""Read YAML the strict way, with every failure as a one-line :class:`~hybrid.errors.ConfigError`.

PyYAML's own messages span several lines (a context, a problem and a caret under the offending
text); the CLI prints errors on one line, so they are condensed here to the problem and its line and
column. A key given twice in one mapping is an error too: PyYAML would silently keep the last one, so a
config could run with a value that is not the one its reader sees first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from hybrid._dataclass_io import show
from hybrid.errors import ConfigError

_MERGE_TAG = "tag:yaml.org,2002:merge"


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key repeated within one mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Mark] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:  # '<<: *base' overrides on purpose
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node.start_mark)
            except TypeError:  # an unhashable key: the base constructor reports it with its position
                continue
            if first is not key_node.start_mark:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {show(key)} appears twice (first at line {first.line + 1})",
                    key_node.start_mark,
                )
        return super().construct_mapping(node, deep=deep)


def one_line(text: str) -> str:
    """``text`` with every run of white space (newlines included) collapsed to one space."""
    return " ".join(str(text).split())


def yaml_problem(err: yaml.YAMLError) -> str:
    """PyYAML's error as one line: the problem, where it is, and what was being parsed."""
    if not isinstance(err, yaml.MarkedYAMLError):
        return one_line(str(err))
    mark = err.problem_mark or err.context_mark
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    context = f" ({one_line(err.context)})" if err.context else ""
    return f"{one_line(err.problem or 'invalid YAML')}{where}{context}"


def parse_yaml(text: str, what: str) -> Any:
    """Parse YAML ``text``; ``what`` names it in the error (``"--set train.lr: value '[1'"``).

    Raises:
        ConfigError: ``"<what> is not valid YAML: <problem> at line L, column C"``.
    """
    try:
        return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader: builds plain data only
    except yaml.YAMLError as err:
        raise ConfigError(f"{what} is not valid YAML: {yaml_problem(err)}") from None


def read_yaml(path: str | Path, what: str) -> Any:
    """Read and parse the YAML file ``path``; ``what`` names it in errors (``"config file"``).

    Raises:
        ConfigError: If the file is missing, not a regular file, unreadable, not UTF-8 or not valid YAML.
    """
    path = Path(path)
    shown = f"{what} {str(path)!r}"
    if not path.exists():
        raise ConfigError(f"{shown} does not exist")
    if not path.is_file():
        raise ConfigError(f"{shown} must be a file, but it is a directory or a special file")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ConfigError(f"{shown} cannot be read: {one_line(err.strerror or str(err))}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise ConfigError(
            f"{shown} must be UTF-8 text, but byte {data[err.start]:#04x} at line {line} is not (save it as UTF-8)"
        ) from None
    return parse_yaml(text, shown)
