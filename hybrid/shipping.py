"""Directories a Ray worker needs, carried through Ray's object store instead of a shared disk.

On a multi-node cluster a path on the driver's disk (a pretrained encoder, a teacher model) does not
exist on the other nodes. :func:`ship_dir` reads such a directory on the driver and puts its files in
the object store once; the :class:`ShippedDir` it returns is small, pickles into a Ray Train
``train_loop_config`` or a Ray Data actor's constructor arguments, and in the worker
:meth:`ShippedDir.local` writes the files into a node-local cache keyed by their content digest, once
per node, and returns that path. Configs, fingerprints and saved models keep recording the user's
path: only what the worker opens changes.

Why the object store and not ``runtime_env={"working_dir": ...}``: a runtime env is per job or per
actor and unpacks into a per-job directory; the object store needs no extra setup, moves the bytes
node to node once, and a content-addressed cache lets every process on a node share one copy.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Any

from hybrid.errors import ConfigError

_CACHE_LOCK = threading.Lock()
_SHIPPED: dict[tuple[str, str, tuple[tuple[str, int, int], ...]], ShippedDir] = {}
"""Driver side: what was already put, by (Ray job, directory, its files' names, sizes and mtimes)."""
_LOCAL: dict[str, Path] = {}
"""Worker side: digest -> the materialised directory, so a process checks the disk once."""


class ShippedDir:
    """A directory whose files sit in Ray's object store; :meth:`local` gives a path to them on any node.

    Pickles with a reference to the object (Ray counts it as borrowed), never with the files.
    """

    __slots__ = ("name", "source", "digest", "ref", "size_bytes")

    def __init__(self, *, name: str, source: str, digest: str, ref: Any, size_bytes: int) -> None:
        self.name = name
        """The directory's own name (kept, so a materialised copy is named as the original)."""
        self.source = source
        """The absolute path on the driver that was shipped (for messages; never opened by a worker)."""
        self.digest = digest
        """SHA-256 over the name, the files' relative paths and contents: the cache key on every node."""
        self.ref = ref
        """``ray.ObjectRef`` of ``{relative path: bytes}``."""
        self.size_bytes = size_bytes

    def __getstate__(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__}

    def __setstate__(self, state: dict[str, Any]) -> None:
        for k, v in state.items():
            setattr(self, k, v)

    def __repr__(self) -> str:
        return f"ShippedDir({self.source!r}, digest={self.digest[:12]}, {self.size_bytes} bytes)"

    def local(self) -> Path:
        """This directory on the calling process's node: materialised once per node, then reused.

        The files are written under a temporary name and renamed into place, so concurrent workers on
        one node never see a half-written copy; the loser of a race drops its own copy.

        Raises:
            RuntimeError: If the bytes fetched do not hash to :attr:`digest`.
        """
        with _CACHE_LOCK:
            cached = _LOCAL.get(self.digest)
            if cached is not None and cached.is_dir():
                return cached
            target = cache_root() / self.digest[:32]
            if not target.is_dir():
                self._materialise(target)
            path = target / self.name
            _LOCAL[self.digest] = path
            return path

    def _materialise(self, target: Path) -> None:
        import ray

        files: dict[str, bytes] = ray.get(self.ref)
        found = _digest(self.name, files)
        if found != self.digest:
            raise RuntimeError(
                f"shipped directory {self.source}: the files fetched hash to {found[:12]}, but the driver put "
                f"{self.digest[:12]}; the object store handed back something else"
            )
        tmp = target.with_name(f".tmp-{target.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            for rel, data in files.items():
                path = tmp / self.name / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
            try:
                os.rename(tmp, target)
            except OSError:
                if not target.is_dir():  # not a lost race: a real failure
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def cache_root() -> Path:
    """This node's cache of shipped directories: ``<tmp>/hybrid-shipped-<uid>``, private to the user."""
    root = Path(tempfile.gettempdir()) / f"hybrid-shipped-{os.getuid()}"
    root.mkdir(mode=0o700, exist_ok=True)
    if root.stat().st_uid != os.getuid():
        raise RuntimeError(f"{root} belongs to another user; hybrid will not read shipped files from it")
    return root


def _listing(directory: Path) -> list[Path]:
    """Every regular file under ``directory`` (symlinked files followed), sorted by relative path."""
    out = []
    for parent, dirs, names in os.walk(directory):
        dirs.sort()
        out += [Path(parent) / n for n in names if (Path(parent) / n).is_file()]
    return sorted(out, key=lambda p: p.relative_to(directory).as_posix())


def _digest(name: str, files: dict[str, bytes]) -> str:
    h = hashlib.sha256(f"{name}\0".encode())
    for rel in sorted(files):
        data = files[rel]
        h.update(f"{rel}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()


def ship_dir(path: str | Path, *, what: str = "directory") -> ShippedDir:
    """Put the files of the local directory ``path`` into Ray's object store (once per content and job).

    Call it on the driver, with Ray initialised. A second call for an unchanged directory (same file
    names, sizes and modification times) in the same Ray job returns the same :class:`ShippedDir`
    without reading the files again.

    Args:
        path: A directory on this machine.
        what: How messages name it (a config key such as ``model.pretrained_dir``).

    Returns:
        The handle to pass to Ray workers in place of ``path``.

    Raises:
        ConfigError: If ``path`` is not a directory.
    """
    import ray

    directory = Path(path).expanduser().resolve()
    if not directory.is_dir():
        raise ConfigError(f"{what}: {str(path)!r} must be a local directory, but it does not exist or is a file")
    listing = _listing(directory)
    signature = tuple(
        (p.relative_to(directory).as_posix(), (st := p.stat()).st_size, st.st_mtime_ns) for p in listing
    )
    key = (ray.get_runtime_context().get_job_id(), str(directory), signature)
    with _CACHE_LOCK:
        shipped = _SHIPPED.get(key)
        if shipped is None:
            files = {p.relative_to(directory).as_posix(): p.read_bytes() for p in listing}
            shipped = ShippedDir(name=directory.name, source=str(directory), digest=_digest(directory.name, files),
                                 ref=ray.put(files), size_bytes=sum(len(b) for b in files.values()))
            # Drop what an earlier version of this directory, or an earlier Ray job, put: its object is freed.
            for old in [k for k in _SHIPPED if k[1] == key[1] or k[0] != key[0]]:
                del _SHIPPED[old]
            _SHIPPED[key] = shipped
    return shipped


def local_path(value: str | Path | ShippedDir) -> str:
    """The path a worker opens: a :class:`ShippedDir` materialised on this node, a path as it is."""
    return str(value.local()) if isinstance(value, ShippedDir) else str(value)
