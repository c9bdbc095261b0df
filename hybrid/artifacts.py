"""Self-describing model directories: safetensors weights, JSON config and a SHA-256 manifest.

Layout of a model directory::

    model.safetensors   weights (no pickle anywhere)
    model.json          {"family", "config", ...metadata: preprocessing, label names, metrics}
    manifest.json       {"files": {name: sha256}}

Loading checks every file against the manifest before reading it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from hybrid._dataclass_io import to_dict
from hybrid.errors import HybridError

WEIGHTS, META, MANIFEST = "model.safetensors", "model.json", "manifest.json"


class ArtifactError(HybridError):
    """A model directory is incomplete or does not match its manifest."""


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(directory: Path) -> dict[str, str]:
    """Hash every file under ``directory`` (sub-directories included, except the manifest) into ``manifest.json``."""
    files = {
        p.relative_to(directory).as_posix(): sha256_file(p)
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.relative_to(directory).as_posix() != MANIFEST
    }
    (directory / MANIFEST).write_text(json.dumps({"files": files}, indent=2) + "\n")
    return files


def verify_manifest(directory: Path, *, required: tuple[str, ...] = ()) -> None:
    """Raise :class:`ArtifactError` unless every file listed in the manifest has its recorded hash.

    Args:
        directory: The model directory.
        required: Files the manifest must list (a file left out of it would be read unchecked).
    """
    manifest = directory / MANIFEST
    if not manifest.is_file():
        raise ArtifactError(f"{directory}: no {MANIFEST}; not a hybrid model directory")
    try:
        files = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError, TypeError):
        raise ArtifactError(f"{directory}: {MANIFEST} is not a JSON object with a 'files' mapping") from None
    unlisted = [name for name in required if name not in files]
    if unlisted:
        raise ArtifactError(f"{directory}: {MANIFEST} does not list {unlisted}, so they cannot be verified")
    for name, expected in files.items():
        path = directory / name
        if not path.is_file():
            raise ArtifactError(f"{directory}: {name} is listed in the manifest but missing")
        actual = sha256_file(path)
        if actual != expected:
            raise ArtifactError(
                f"{directory}: {name} has SHA-256 {actual[:12]}..., but the manifest records {expected[:12]}...; "
                "the file was changed or corrupted"
            )


def save_model(directory: str | Path, model: Any, *, family: str, config: Any, **metadata: Any) -> Path:
    """Write ``model``'s weights, config and ``metadata`` to ``directory`` with a manifest.

    Args:
        directory: Created if missing; existing files of the same names are replaced.
        model: An ``nn.Module`` (a DDP wrapper is unwrapped).
        family: Registry name of the model family.
        config: The family's config dataclass (or plain dict).
        **metadata: JSON-serialisable extras (epoch, metrics, normaliser, label names...).
    """
    from safetensors.torch import save_file

    from hybrid.models import get_family

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    module = getattr(model, "module", model)
    exporter = get_family(family).export_assets
    if exporter is not None:
        config = exporter(module, config, directory)
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    save_file(state, str(directory / WEIGHTS))
    meta = {"family": family, "config": to_dict(config), **to_dict(metadata)}
    (directory / META).write_text(json.dumps(meta, indent=2) + "\n")
    write_manifest(directory)
    return directory


def read_metadata(directory: str | Path) -> dict[str, Any]:
    """The ``model.json`` of a model directory (after checking the manifest)."""
    directory = Path(directory)
    verify_manifest(directory, required=(WEIGHTS, META))
    return json.loads((directory / META).read_text())


def update_metadata(directory: str | Path, **fields: Any) -> dict[str, Any]:
    """Add ``fields`` to a model directory's ``model.json`` and re-hash the manifest."""
    directory = Path(directory)
    meta = read_metadata(directory)
    meta.update(to_dict(fields))
    (directory / META).write_text(json.dumps(meta, indent=2) + "\n")
    write_manifest(directory)
    return meta


def load_model(directory: str | Path) -> tuple[Any, dict[str, Any]]:
    """Rebuild the model saved in ``directory``; returns ``(model in eval mode, metadata)``.

    A float directory (``model.safetensors``) gives an ``nn.Module``; an int8 directory written by
    :func:`hybrid.quantize.save_quantized` gives its callable int8 model. Both map inputs to logits.

    Raises:
        ArtifactError: If the directory is incomplete or a file does not match the manifest.
    """
    from safetensors.torch import load_file

    from hybrid.models import create_model, model_config

    directory = Path(directory)
    if not (directory / WEIGHTS).exists():
        from hybrid.quantize import MODEL_FILES, load_quantized

        if any((directory / name).exists() for name in MODEL_FILES.values()):
            return load_quantized(directory)
    from hybrid.models import get_family

    meta = read_metadata(directory)
    localize = get_family(meta["family"]).localize
    params = localize(meta["config"], directory) if localize is not None else meta["config"]
    model = create_model(meta["family"], config=model_config(meta["family"], params))
    model.load_state_dict(load_file(str(directory / WEIGHTS)))
    return model.eval(), meta


def model_collate(directory: str | Path, meta: dict[str, Any] | None = None) -> Any:
    """The ``collate_fn`` that batches rows for the model saved in ``directory`` (None: Ray's default)."""
    from hybrid.models import collate_fn, get_family, model_config

    directory = Path(directory)
    meta = meta if meta is not None else json.loads((directory / META).read_text())
    family = get_family(meta["family"])
    if family.collate is None:
        return None
    params = family.localize(meta["config"], directory) if family.localize is not None else meta["config"]
    return collate_fn(meta["family"], model_config(meta["family"], params))
