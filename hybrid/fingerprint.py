"""Stage fingerprints: what each stage's result depends on, so a re-run redoes exactly what changed.

A fingerprint is a flat mapping of named inputs (dotted config keys, input-file signatures, the search
space's content, the code version, the upstream stages' digests) and a digest of it. A stage is done
only while its recorded fingerprint equals the current one; otherwise it is redone, and the
difference says why (``distill: distill.alpha 0.7 -> 0.0``).

Pure: no Spark, no Ray. The config sections each stage reads are declared in :data:`READS`, in one
place, and tested against the stages (one case per section).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hybrid._dataclass_io import to_dict

STAGE_ORDER: tuple[str, ...] = ("ingest", "tune", "distill", "quantize", "score")
"""Every stage, upstream first: each depends on the one before it."""

READS: dict[str, tuple[str, ...]] = {
    "ingest": ("data", "model.pretrained_dir"),
    # The teacher and the student are timed at quantize.latency_batch_size rows, as every model of a run is.
    "tune": ("model", "train", "tune", "quantize.latency_batch_size"),
    "distill": ("distill", "train", "tune.metric", "compression", "quantize.latency_batch_size"),
    "quantize": ("quantize",),
    "score": ("score",),
}
"""Config keys (sections or dotted leaves) each stage reads besides its upstream stage's results."""

_CODE_SUFFIXES = (".py",)


@dataclass(frozen=True)
class Fingerprint:
    """What one stage's result was (or would be) computed from."""

    inputs: dict[str, Any]
    """Flat ``name -> plain value``: dotted config keys, ``file:<key>`` signatures, ``code``, ``upstream``."""

    @property
    def digest(self) -> str:
        """SHA-256 of the canonical JSON of :attr:`inputs`."""
        return hashlib.sha256(_canonical(self.inputs).encode()).hexdigest()

    def changes(self, recorded: Mapping[str, Any] | None, *, limit: int = 4) -> list[str]:
        """Readable differences from a ``recorded`` inputs mapping (``key old -> new``), at most ``limit``."""
        if recorded is None:
            return ["never run"]
        lines = []
        for key in sorted(set(self.inputs) | set(recorded)):
            old, new = recorded.get(key, "<unset>"), self.inputs.get(key, "<unset>")
            if _canonical(old) != _canonical(new):
                lines.append(_describe(key, old, new))
        if len(lines) > limit:
            lines = [*lines[:limit], f"and {len(lines) - limit} more"]
        return lines


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _describe(key: str, old: Any, new: Any) -> str:
    if key == "upstream":
        return "its input stage was redone"
    if key == "code":
        return f"hybrid's code changed ({_short(old)} -> {_short(new)})"
    if key.startswith("file:"):
        return f"{key[5:]} contents changed"
    return f"{key} {_short(old)} -> {_short(new)}"


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else _canonical(value)
    return text if len(text) <= 40 else text[:37] + "..."


def flatten(tree: Any, prefix: str) -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"prefix.a.b": 1}``; lists stay values."""
    if isinstance(tree, Mapping):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: tree}


def config_values(config_dict: Mapping[str, Any], keys: Iterable[str]) -> dict[str, Any]:
    """The flattened values of ``keys`` (sections or dotted leaves) of a resolved config dict."""
    out: dict[str, Any] = {}
    for key in keys:
        node: Any = config_dict
        for part in key.split("."):
            node = node.get(part) if isinstance(node, Mapping) else None
        out.update(flatten(node, key) if isinstance(node, Mapping) else {key: node})
    return out


def path_signature(path: str | Path) -> str:
    """Signature of a file or directory tree: every file's relative path, size and modification time.

    Cheap (no file is read), and any rewrite of a data file changes it. A missing path has the
    signature ``missing``.
    """
    path = Path(path)
    if not path.exists():
        return "missing"
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    digest = hashlib.sha256()
    for file in files:
        stat = file.stat()
        rel = file.name if file == path else file.relative_to(path).as_posix()
        digest.update(f"{rel}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def code_version() -> str:
    """``hybrid.__version__`` plus a hash of the package's source files: results of other code are stale."""
    import hybrid

    root = Path(hybrid.__file__).parent
    digest = hashlib.sha256()
    for file in sorted(p for p in root.rglob("*") if p.suffix in _CODE_SUFFIXES):
        digest.update(file.relative_to(root).as_posix().encode() + b"\0" + file.read_bytes())
    return f"{hybrid.__version__}+{digest.hexdigest()[:12]}"


def stage_fingerprints(
    config: Any, *, input_files: Mapping[str, str | Path], code: str | None = None
) -> dict[str, Fingerprint]:
    """Fingerprints of every stage in :data:`STAGE_ORDER` for ``config`` (a :class:`~hybrid.config.Config`).

    Args:
        config: The resolved run config.
        input_files: Files each stage reads besides the config, by config key (``data.path``,
            ``tune.search_space``...); their signatures go into the reading stage's fingerprint.
        code: The code version (default: :func:`code_version`).
    """
    config_dict = config.to_dict() if hasattr(config, "to_dict") else to_dict(config)
    code = code or code_version()
    out: dict[str, Fingerprint] = {}
    upstream: str | None = None
    for stage in STAGE_ORDER:
        reads = READS[stage]
        inputs = config_values(config_dict, reads)
        for key, path in input_files.items():
            if any(key == r or key.startswith(f"{r}.") for r in reads):
                inputs[f"file:{key}"] = path_signature(path)
        inputs["code"] = code
        if upstream is not None:
            inputs["upstream"] = upstream
        out[stage] = Fingerprint(inputs=inputs)
        upstream = out[stage].digest
    return out


def input_files(config: Any) -> dict[str, str]:
    """The files a run reads besides its config, by the config key that names them."""
    files = {"data.path": config.data.path, "tune.search_space": config.tune.search_space}
    if config.data.test_path is not None:
        files["data.test_path"] = config.data.test_path
    if config.compression.search_space is not None:
        files["compression.search_space"] = config.compression.search_space
    pretrained = getattr(config.model, "pretrained_dir", None)
    if pretrained:
        files["model.pretrained_dir"] = pretrained
    return {key: os.fspath(value) for key, value in files.items()}


def stale_stages(current: Mapping[str, Fingerprint], recorded: Mapping[str, str | None]) -> Sequence[str]:
    """Stages whose recorded digest differs from the current one, in pipeline order."""
    return [s for s in STAGE_ORDER if s in current and recorded.get(s) != current[s].digest]
