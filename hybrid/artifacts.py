"""Self-describing model directories: safetensors weights, JSON config and a SHA-256 manifest.

Layout of a model directory::

    model.safetensors   weights (no pickle anywhere); an int8 directory holds model.onnx or model.pt2 instead
    model.json          {"family", "config", ...metadata: preprocessing, label names, metrics}
    manifest.json       {"files": {relative path: sha256}}
    encoder/            files the family needs besides the weights (BERT: tokenizer and encoder config)

The manifest is the directory's contract, checked in full before any file is read:

* every entry is a relative, normalised POSIX path (no ``..``, ``.``, empty parts, backslashes or leading
  ``/``) with a SHA-256 of 64 lowercase hex digits, and every file matches its hash;
* every file in the directory is listed (``manifest.json`` aside), and nothing in it is a symbolic link;
* ``model.json`` names a registered family, and no value of its config names a path outside the directory
  (a saved model is self-contained: a BERT's encoder and tokenizer are copied into ``encoder/``).

Any breach raises :class:`ArtifactError` with one line. Writers build the whole directory under a temporary
name and swap it in (:func:`hybrid._atomic.replace_dir`), so a killed writer leaves the old directory or the
new one, never a mix.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from hybrid._atomic import replace_dir, write_json
from hybrid._dataclass_io import to_dict
from hybrid.errors import HybridError

WEIGHTS, META, MANIFEST = "model.safetensors", "model.json", "manifest.json"
INT8_FILES = {"torch": "model.pt2", "onnxruntime": "model.onnx"}
"""The model file of each int8 backend (see :mod:`hybrid.quantize`)."""
_SHA256 = re.compile(r"[0-9a-f]{64}")
_SHAPE = '{"files": {relative path: sha256}}'


class ArtifactError(HybridError):
    """A model directory is incomplete, malformed, not self-contained or does not match its manifest."""


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _show(value: Any, limit: int = 60) -> str:
    """A short one-line ``repr`` of a value found in a file."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- paths and the directory tree ------------------------------------------------------------------------


def path_problem(name: Any) -> str | None:
    """Why ``name`` is not a relative, normalised POSIX path inside a directory, or None when it is."""
    if not isinstance(name, str) or not name:
        return f"got {_show(name)}"
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return f"{_show(name)} is not valid UTF-8"
    if "\\" in name:
        return f"{_show(name)} has a backslash"
    if name.startswith("/"):
        return f"{_show(name)} is absolute"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return f"{_show(name)} has a control character"
    parts = name.split("/")
    if "" in parts:
        return f"{_show(name)} has an empty part (a doubled or trailing '/')"
    if "." in parts or ".." in parts:
        return f"{_show(name)} has a '.' or '..' part"
    return None


def list_files(directory: Path) -> list[str]:
    """Relative POSIX paths of every file under ``directory``, sorted.

    Raises:
        ArtifactError: If anything under ``directory`` is a symbolic link (to a file or a directory, pointing
            in or out) or neither a regular file nor a directory.
    """
    found: list[str] = []
    pending = [(directory, "")]
    while pending:
        folder, prefix = pending.pop()
        with os.scandir(folder) as entries:
            for entry in entries:
                name = prefix + entry.name
                if entry.is_symlink():
                    raise ArtifactError(
                        f"{directory}: a model directory must hold its files itself, but {_show(name)} is a "
                        "symbolic link; replace it with the file or directory it points to"
                    )
                if entry.is_dir(follow_symlinks=False):
                    pending.append((Path(entry.path), name + "/"))
                elif entry.is_file(follow_symlinks=False):
                    found.append(name)
                else:
                    raise ArtifactError(f"{directory}: {_show(name)} is neither a regular file nor a directory")
    return sorted(found)


def _inside(directory: Path, name: str) -> bool:
    return (directory / name).resolve().is_relative_to(directory.resolve())


# --- the manifest ----------------------------------------------------------------------------------------


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise _DuplicateKey(key)
        seen[key] = value
    return seen


def _read_json(directory: Path, name: str) -> Any:
    """The JSON in ``directory/name``; undecodable bytes, bad JSON and repeated keys are an ArtifactError."""
    path = directory / name
    if path.is_symlink():
        raise ArtifactError(f"{directory}: {name} must be a regular file, but it is a symbolic link")
    if not path.is_file():
        raise ArtifactError(f"{directory}: no {name}; not a hybrid model directory")
    data = path.read_bytes()
    try:
        return json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except UnicodeDecodeError as err:
        raise ArtifactError(f"{directory}: {name} must be UTF-8 JSON, but byte {err.start} is not UTF-8") from None
    except _DuplicateKey as err:
        key = _show(err.args[0])
        raise ArtifactError(f"{directory}: {name} must not repeat a key, but {key} appears twice") from None
    except ValueError as err:
        detail = f"{err.msg} at line {err.lineno} column {err.colno}" if isinstance(err, json.JSONDecodeError) else err
        raise ArtifactError(f"{directory}: {name} must be JSON, but it is not ({detail})") from None


def read_manifest(directory: str | Path) -> dict[str, str]:
    """The ``{relative path: sha256}`` entries of a directory's manifest, checked for shape (not yet for content).

    Raises:
        ArtifactError: If the manifest is missing, not UTF-8 JSON of the form ``{"files": {path: sha256}}``,
            or an entry is not a normalised relative path with 64 lowercase hex digits.
    """
    directory = Path(directory)
    data = _read_json(directory, MANIFEST)
    if not isinstance(data, dict) or set(data) != {"files"}:
        found = f"an object with keys {sorted(data)}" if isinstance(data, dict) else f"a JSON {type(data).__name__}"
        raise ArtifactError(f"{directory}: {MANIFEST} must be a JSON object {_SHAPE}, but it is {found}")
    files = data["files"]
    if not isinstance(files, dict):
        raise ArtifactError(
            f"{directory}: {MANIFEST}'s 'files' must be an object {{relative path: sha256}}, but it is a JSON "
            f"{type(files).__name__}"
        )
    for name, digest in files.items():
        problem = path_problem(name) or (f"{MANIFEST} lists itself" if name == MANIFEST else None)
        if problem is not None:
            raise ArtifactError(
                f"{directory}: every {MANIFEST} entry must be a relative, normalised POSIX path inside the "
                f"directory, but {problem}"
            )
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            raise ArtifactError(
                f"{directory}: {MANIFEST} entry {_show(name)} must have a SHA-256 of 64 lowercase hex digits, "
                f"but has {_show(digest)}"
            )
    return files


def verify_manifest(directory: str | Path, *, required: tuple[str, ...] = ()) -> dict[str, str]:
    """Raise :class:`ArtifactError` unless ``directory`` holds exactly the files its manifest lists, unchanged.

    Args:
        directory: The model directory.
        required: Files the manifest must list (a file left out of it would be read unchecked).

    Returns:
        The verified ``{relative path: sha256}`` entries.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise ArtifactError(f"model directory {directory} does not exist or is not a directory")
    files = read_manifest(directory)
    unlisted = [name for name in required if name not in files]
    if unlisted:
        raise ArtifactError(f"{directory}: {MANIFEST} does not list {unlisted}, so they cannot be verified")
    present = set(list_files(directory)) - {MANIFEST}
    extra = sorted(present - set(files))
    if extra:
        shown = ", ".join(_show(name) for name in extra[:5]) + (f" and {len(extra) - 5} more" if len(extra) > 5 else "")
        raise ArtifactError(
            f"{directory}: every file must be listed in {MANIFEST}, but {shown} is not; remove it, or re-save "
            "the model if it belongs there"
        )
    for name, expected in files.items():
        if name not in present:
            raise ArtifactError(f"{directory}: {name} is listed in the manifest but missing (or not a regular file)")
        if not _inside(directory, name):
            raise ArtifactError(f"{directory}: {MANIFEST} entry {_show(name)} resolves outside the directory")
        actual = sha256_file(directory / name)
        if actual != expected:
            raise ArtifactError(
                f"{directory}: {name} has SHA-256 {actual[:12]}..., but the manifest records {expected[:12]}...; "
                "the file was changed or corrupted"
            )
    return files


def _write_manifest(directory: Path, known: Mapping[str, str] | None = None) -> dict[str, str]:
    files = {}
    for name in list_files(directory):
        if name == MANIFEST:
            continue
        problem = path_problem(name)
        if problem is not None:
            raise ArtifactError(f"{directory}: cannot list a file in {MANIFEST}: {problem}")
        # A file copied from a verified directory keeps the hash verified there: if it changed since, the new
        # manifest must not bless the change.
        files[name] = known[name] if known is not None and name in known else sha256_file(directory / name)
    write_json(directory / MANIFEST, {"files": files})
    return files


def write_manifest(directory: str | Path) -> dict[str, str]:
    """Hash every file under ``directory`` (sub-directories included, except the manifest) into ``manifest.json``.

    Raises:
        ArtifactError: If the directory holds a symbolic link, a special file, or a name that is not UTF-8.
    """
    return _write_manifest(Path(directory))


# --- model.json ------------------------------------------------------------------------------------------


def _outside_paths(value: Any, key: str) -> Iterator[tuple[str, str]]:
    """``(key, value)`` of every string in a config that names a path outside the model directory."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _outside_paths(v, f"{key}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _outside_paths(v, f"{key}[{i}]")
    elif isinstance(value, str) and value:
        path = value.replace("\\", "/")
        if path.startswith(("/", "~")) or re.match(r"[A-Za-z]:/|[A-Za-z][A-Za-z0-9+.-]*://", path) \
                or ".." in path.split("/"):
            yield key, value


def check_metadata(directory: str | Path, meta: Any) -> dict[str, Any]:
    """Return ``meta`` (a parsed ``model.json``) if it is well formed and self-contained.

    Raises:
        ArtifactError: If it is not an object with a registered ``family`` and a ``config`` object, or a
            value of the config names a path outside the directory (absolute, ``~``, a URL, or with ``..``).
    """
    from hybrid.models import list_models

    directory = Path(directory)
    if not isinstance(meta, dict):
        raise ArtifactError(f"{directory}: {META} must be a JSON object, but it is a JSON {type(meta).__name__}")
    family = meta.get("family")
    if family not in list_models():
        from hybrid.errors import did_you_mean

        hint = did_you_mean(family, list_models()) if isinstance(family, str) else ""
        raise ArtifactError(
            f"{directory}: {META}'s 'family' must be one of {list_models()}, but it is {_show(family)}{hint}"
        )
    config = meta.get("config")
    if not isinstance(config, dict):
        raise ArtifactError(f"{directory}: {META}'s 'config' must be an object, but it is {_show(config)}")
    for key, value in _outside_paths(config, "config"):
        raise ArtifactError(
            f"{directory}: a model directory must be self-contained, but {META}'s {key} names {_show(value)}, "
            "outside it; save the model with hybrid, which copies what the model needs into its directory"
        )
    return meta


def _model_file(directory: Path) -> str:
    """The one model file of a directory (``model.safetensors`` when there is none, for the error)."""
    present = [name for name in (WEIGHTS, *INT8_FILES.values()) if (directory / name).is_file()]
    if len(present) > 1:
        raise ArtifactError(f"{directory}: a model directory holds one model file, but it has {present}")
    return present[0] if present else WEIGHTS


def _verified(directory: Path) -> tuple[dict[str, str], dict[str, Any]]:
    files = verify_manifest(directory, required=(_model_file(directory), META))
    return files, check_metadata(directory, _read_json(directory, META))


def read_metadata(directory: str | Path) -> dict[str, Any]:
    """The ``model.json`` of a float or int8 model directory, after checking the manifest and its shape.

    Raises:
        ArtifactError: See :func:`verify_manifest` and :func:`check_metadata`.
    """
    return _verified(Path(directory))[1]


# --- writing ---------------------------------------------------------------------------------------------


def _check_replaceable(directory: Path) -> None:
    """Only a missing directory, an empty one or a model directory may be replaced by a new model directory."""
    if directory.is_symlink() or (directory.exists() and not directory.is_dir()):
        raise ArtifactError(f"{directory}: a model directory is written to a directory, but this is a link or a file")
    if directory.is_dir() and not (directory / MANIFEST).is_file() and any(directory.iterdir()):
        raise ArtifactError(
            f"{directory} holds files but no {MANIFEST}: it is not a model directory, and saving would replace "
            "it whole; choose a new or empty directory"
        )


@contextlib.contextmanager
def build_model_dir(directory: str | Path) -> Iterator[Path]:
    """Build a model directory under a temporary name; on success hash it and swap it in for ``directory``.

    Yields the empty temporary directory to fill. On an exception (or a kill) ``directory`` keeps its old
    content; a kill leaves a temporary sibling that :func:`hybrid._atomic.remove_debris` clears.
    """
    with replace_dir(directory) as tmp:
        yield tmp
        _write_manifest(tmp)


def link_or_copy(source: Path, target: Path, *, link: bool = True) -> None:
    """Hard-link ``source`` to ``target`` (parents created), or copy it where the filesystem cannot link.

    Link only while rebuilding a directory in place (the old copy is deleted by the swap): two directories
    left sharing a file would both change if one were edited in place.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    if link:
        with contextlib.suppress(OSError):
            os.link(source, target)
            return
    shutil.copyfile(source, target)


def save_model(directory: str | Path, model: Any, *, family: str, config: Any, **metadata: Any) -> Path:
    """Write ``model``'s weights, config and ``metadata`` to ``directory`` with a manifest, atomically.

    Args:
        directory: Created if missing; an empty directory or an earlier model directory is replaced whole.
        model: An ``nn.Module`` (a DDP wrapper is unwrapped).
        family: Registry name of the model family.
        config: The family's config dataclass (or plain dict).
        **metadata: JSON-serialisable extras (epoch, metrics, normaliser, label names...).

    Raises:
        ArtifactError: If ``directory`` holds other files, or the model would not be self-contained.
    """
    from safetensors.torch import save_file

    from hybrid.models import get_family

    directory = Path(directory)
    _check_replaceable(directory)
    module = getattr(model, "module", model)
    spec = get_family(family)
    with build_model_dir(directory) as tmp:
        if spec.export_assets is not None:
            config = spec.export_assets(module, config, tmp)
        state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS))
        meta = check_metadata(directory, {"family": family, "config": to_dict(config), **to_dict(metadata)})
        if spec.localize is not None:
            spec.localize(meta["config"], tmp)  # refuses what loading would refuse, before the swap
        write_json(tmp / META, meta)
    return directory


def copy_model(source: str | Path, target: str | Path, **fields: Any) -> dict[str, Any]:
    """Copy a verified model directory to ``target`` atomically, adding ``fields`` to its ``model.json``.

    Files keep the hashes verified in ``source`` (a file changed since fails the new manifest too).
    ``target`` may be ``source`` itself (see :func:`update_metadata`); its files are then hard-linked into
    the new directory rather than copied.

    Returns:
        The new ``model.json``.

    Raises:
        ArtifactError: If ``source`` does not verify, or ``target`` holds files but is not a model directory.
    """
    source, target = Path(source), Path(target)
    files, meta = _verified(source)
    meta = check_metadata(target, {**meta, **to_dict(fields)})
    in_place = target.resolve() == source.resolve()
    if not in_place:
        _check_replaceable(target)
    with replace_dir(target) as tmp:
        for name in files:
            if name != META:
                link_or_copy(source / name, tmp / name, link=in_place)
        write_json(tmp / META, meta)
        _write_manifest(tmp, known={k: v for k, v in files.items() if k != META})
    return meta


def update_metadata(directory: str | Path, **fields: Any) -> dict[str, Any]:
    """Add ``fields`` to a model directory's ``model.json`` and re-hash the manifest, atomically."""
    return copy_model(directory, directory, **fields)


# --- loading ---------------------------------------------------------------------------------------------


def _model_config(directory: Path, meta: dict[str, Any]) -> Any:
    """The family's config dataclass of a checked ``model.json``, its paths resolved against ``directory``."""
    from hybrid.errors import ConfigError
    from hybrid.models import get_family, model_config

    family = meta["family"]
    localize = get_family(family).localize
    params = localize(meta["config"], directory) if localize is not None else meta["config"]
    try:
        return model_config(family, params)
    except ConfigError as err:
        raise ArtifactError(f"{directory}: {META}'s config does not build a {family} model: {_one_line(err)}") from None


def _one_line(err: BaseException, limit: int = 300) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def load_model(directory: str | Path) -> tuple[Any, dict[str, Any]]:
    """Rebuild the model saved in ``directory``; returns ``(model in eval mode, metadata)``.

    A float directory (``model.safetensors``) gives an ``nn.Module``; an int8 directory written by
    :func:`hybrid.quantize.save_quantized` gives its callable int8 model. Both map inputs to logits.

    Raises:
        ArtifactError: If the directory is incomplete, malformed, not self-contained, a file does not match
            the manifest, or the weights do not fit the recorded config.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from hybrid.errors import ConfigError
    from hybrid.models import create_model

    directory = Path(directory)
    if not (directory / WEIGHTS).exists() and any((directory / name).exists() for name in INT8_FILES.values()):
        from hybrid.quantize import load_quantized

        return load_quantized(directory)
    _, meta = _verified(directory)
    family = meta["family"]
    try:
        model = create_model(family, config=_model_config(directory, meta))
    except ConfigError as err:
        raise ArtifactError(f"{directory}: {META}'s config does not build a {family} model: {_one_line(err)}") from None
    try:
        model.load_state_dict(load_file(str(directory / WEIGHTS)))
    except (SafetensorError, RuntimeError) as err:
        raise ArtifactError(f"{directory}: {WEIGHTS} does not fit the config in {META}: {_one_line(err)}") from None
    return model.eval(), meta


def model_collate(directory: str | Path, meta: dict[str, Any] | None = None) -> Any:
    """The ``collate_fn`` that batches rows for the model saved in ``directory`` (None: Ray's default).

    Args:
        directory: A float or int8 model directory.
        meta: Its ``model.json`` as :func:`load_model` returned it; ``None`` reads (and verifies) it.
    """
    from hybrid.models import collate_fn

    directory = Path(directory)
    meta = check_metadata(directory, meta) if meta is not None else read_metadata(directory)
    return collate_fn(meta["family"], _model_config(directory, meta))
