"""Search spaces are data: YAML files of Optuna distributions keyed by dotted config keys.

Each entry is written in Optuna's own JSON format for distributions
(``optuna.distributions.distribution_to_json``), so a file round-trips through Optuna unchanged::

    train.lr:
      name: FloatDistribution
      attributes: {low: 0.0005, high: 0.005, log: true, step: null}
    model.pooling:
      name: CategoricalDistribution
      attributes: {choices: [max, avg]}
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import yaml
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
    distribution_to_json,
    json_to_distribution,
)

from hybrid._dataclass_io import show
from hybrid._yaml import one_line, read_yaml
from hybrid.config import Config, config_from_dict, set_dotted
from hybrid.errors import ConfigError, did_you_mean

TUNABLE_SECTIONS = ("model", "train")
"""Config sections a search space may set."""
COMPRESSION_SECTIONS = ("distill", "quantize")
"""Config sections a compression search space (``compression.search_space``) may set."""


def load_search_space(path: str | Path, *, key: str = "tune.search_space") -> dict[str, BaseDistribution]:
    """Read a search-space YAML file into Optuna distributions (``key``: the config key naming it, for messages).

    Raises:
        ConfigError: One line, if the file is missing, unreadable, not UTF-8, not valid YAML, not a mapping,
            or an entry is not a valid distribution.
    """
    path = Path(path)
    raw = read_yaml(path, f"{key}: file")
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(
            f"{key}: file {str(path)!r} must be a non-empty mapping of config keys to distributions, "
            f"but got {show(raw)}"
        )
    space, where = {}, key
    for name, entry in raw.items():
        try:
            space[str(name)] = json_to_distribution(json.dumps(entry))
        except Exception as err:  # optuna raises ValueError/KeyError/TypeError for malformed entries
            raise ConfigError(
                f"{where}: '{name}' in {str(path)!r} must be an Optuna distribution "
                f"({{name: FloatDistribution|IntDistribution|CategoricalDistribution, attributes: ...}}), "
                f"but got {show(entry)}: {one_line(f'{type(err).__name__}: {err}')}"
            ) from None
    return space


def dump_search_space(space: dict[str, BaseDistribution]) -> str:
    """YAML text of ``space`` in the same format :func:`load_search_space` reads."""
    return yaml.safe_dump({k: json.loads(distribution_to_json(v)) for k, v in space.items()}, sort_keys=False)


def extremes(dist: BaseDistribution) -> list[Any]:
    """Values at the edges of ``dist``: low and high, or every categorical choice."""
    if isinstance(dist, CategoricalDistribution):
        return list(dist.choices)
    if isinstance(dist, IntDistribution | FloatDistribution):
        return [dist.low, dist.high]
    raise ConfigError(f"unsupported distribution {type(dist).__name__}")


def apply_params(config: Config, params: dict[str, Any]) -> Config:
    """Return ``config`` with dotted ``params`` (one trial's sample) applied and validated.

    Raises:
        ConfigError: If a key is unknown or a value breaks a config rule.
    """
    raw = config.to_dict()
    for key, value in params.items():
        set_dotted(raw, key, value)
    return config_from_dict(raw)


def check_search_space(space: dict[str, BaseDistribution], config: Config) -> None:
    """Check every key names a real ``model``/``train`` field and every edge value is a valid config.

    Raises:
        ConfigError: Naming the key (with a did-you-mean hint) or the edge value that is invalid.
    """
    fields = {
        "model": {f.name for f in dataclasses.fields(config.model)},
        "train": {f.name for f in dataclasses.fields(config.train)},
    }
    for key, dist in space.items():
        section, _, name = key.partition(".")
        if section not in TUNABLE_SECTIONS:
            raise ConfigError(f"search space key '{key}' must start with one of {list(TUNABLE_SECTIONS)}")
        if name not in fields[section]:
            raise ConfigError(
                f"search space key '{key}' is not a field of the {section} config"
                f"{did_you_mean(name, fields[section])}"
            )
        for value in extremes(dist):
            try:
                apply_params(config, {key: value})
            except ConfigError as err:
                raise ConfigError(f"search space key '{key}': value {value!r} is invalid: {err}") from None


def check_compression_space(space: dict[str, BaseDistribution], config: Config) -> None:
    """Check a compression search space: every key names a ``distill`` or ``quantize`` field (or
    ``distill.student.<model field>``), and every edge value gives a valid config.

    Raises:
        ConfigError: Naming the key (with a did-you-mean hint) or the edge value that is invalid.
    """
    fields = {
        "distill": {f.name for f in dataclasses.fields(config.distill)} - {"student"},
        "quantize": {f.name for f in dataclasses.fields(config.quantize)},
    }
    model_fields = {f.name for f in dataclasses.fields(config.model)}
    for key, dist in space.items():
        section, _, name = key.partition(".")
        if section not in COMPRESSION_SECTIONS:
            raise ConfigError(f"compression.search_space key '{key}' must start with one of "
                              f"{list(COMPRESSION_SECTIONS)}{did_you_mean(section, COMPRESSION_SECTIONS)}")
        if section == "distill" and name.startswith("student."):
            leaf = name.removeprefix("student.")
            if leaf not in model_fields:
                raise ConfigError(f"compression.search_space key '{key}': '{leaf}' is not a field of the "
                                  f"{config.model_name} model config{did_you_mean(leaf, model_fields)}")
        elif name not in fields[section]:
            raise ConfigError(f"compression.search_space key '{key}' is not a field of the {section} config"
                              f"{did_you_mean(name, fields[section])}")
        for value in extremes(dist):
            try:
                apply_params(config, {key: value})
            except ConfigError as err:
                raise ConfigError(f"compression.search_space key '{key}': value {value!r} is invalid: {err}") from None
