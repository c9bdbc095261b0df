"""Build typed, frozen dataclasses from plain dicts (YAML) and back, with errors that name the key.

Kept separate from :mod:`hybrid.config` so that model configs (which live in ``hybrid.models``) can
use the same strict loading without importing the pipeline's configs.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

from hybrid.errors import ConfigError, did_you_mean

T = TypeVar("T")

_EXPONENT_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")
_SHOWN_CHARS = 80


def show(value: Any) -> str:
    """``repr(value)`` cut to one short line, for error messages (a 10,000-item list must not flood them)."""
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else f"{text[:_SHOWN_CHARS - 5]}...{text[-2:]}"


def _finite(value: int | float | str, key: str) -> float:
    """``float(value)``, or :class:`ConfigError` for inf, nan and ints too large for a float."""
    try:
        out = float(value)
    except OverflowError:
        out = math.inf
    if not math.isfinite(out):
        raise ConfigError(f"{key} must be a finite number, but got {show(value)}")
    return out


def check_type(value: Any, hint: Any, key: str) -> Any:
    """Return ``value`` coerced to ``hint`` (int -> float, list -> tuple) or raise :class:`ConfigError`."""
    origin = get_origin(hint)
    if origin is Literal:
        allowed = get_args(hint)
        if value not in allowed:
            raise ConfigError(
                f"{key} must be one of {list(allowed)}, but got {show(value)}"
                f"{did_you_mean(str(value), [str(a) for a in allowed])}"
            )
        return value
    if origin in (Union, types.UnionType):
        args = get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return check_type(value, arg, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key} has an invalid value {show(value)}")
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key} must be a list, but got {show(value)}")
        (item,) = {a for a in get_args(hint) if a is not Ellipsis}
        return tuple(check_type(v, item, f"{key}[{i}]") for i, v in enumerate(value))
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, but got {show(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, but got {show(value)}")
        return value
    if hint is float:
        if isinstance(value, str) and _EXPONENT_FLOAT.fullmatch(value):
            # PyYAML follows YAML 1.1, which reads ``1e-3`` (no dot) as a string; users mean a number.
            return _finite(value, key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key} must be a number, but got {show(value)}")
        # inf passes one-sided rules such as ``lr > 0`` and nan any field without a rule; both would fail in a stage.
        return _finite(value, key)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, but got {show(value)}")
        if "\x00" in value:
            # Paths with a NUL byte make every file call raise ValueError deep in the run.
            raise ConfigError(f"{key} must not contain a NUL character, but got {show(value)}")
        return value
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key} must be a mapping, but got {show(value)}")
        return dict(value)
    if dataclasses.is_dataclass(hint):
        if dataclasses.is_dataclass(value):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key} must be a mapping, but got {show(value)}")
        return from_dict(hint, value, prefix=key)
    return value


def from_dict(cls: type[T], data: Mapping[str, Any], *, prefix: str = "") -> T:
    """Build dataclass ``cls`` from ``data``, rejecting unknown keys and wrongly typed values.

    Args:
        cls: A dataclass type whose fields carry type hints.
        data: Field values; missing fields take their defaults.
        prefix: Dotted path of ``data`` inside the whole config, used in error messages.

    Raises:
        ConfigError: On an unknown key, a wrongly typed value, or a failed ``__post_init__`` check.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix or 'config'} must be a mapping, but got {show(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            raise ConfigError(f"unknown config key '{dotted}'{did_you_mean(str(key), fields)}")
        kwargs[key] = check_type(value, hints[key], dotted)
    try:
        return cls(**kwargs)
    except ConfigError as err:
        if prefix and not str(err).startswith(prefix):
            raise ConfigError(f"{prefix}.{err}") from None
        raise


def to_dict(obj: Any) -> Any:
    """Turn a (nested) dataclass into plain JSON/YAML-friendly data (tuples become lists)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple | list):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def require(condition: bool, message: str) -> None:
    """Raise :class:`ConfigError` with ``message`` unless ``condition`` holds (never ``assert``)."""
    if not condition:
        raise ConfigError(message)
