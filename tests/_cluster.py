"""``scripts/local_cluster.py`` as a module for the tests that start a multi-node Ray on this host."""

from __future__ import annotations

import contextlib
import importlib.util
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _load() -> Any:
    spec = importlib.util.spec_from_file_location("local_cluster", ROOT / "scripts" / "local_cluster.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


local_cluster = _load()


@contextlib.contextmanager
def running_cluster(*, workers: int = 2, worker_cpus: int = 1) -> Iterator[dict[str, Any]]:
    """A head with no CPUs and ``workers`` worker nodes, stopped and removed on exit.

    Its directory is short (``/tmp/hc-*``), not pytest's tmp_path: Ray's unix sockets live under it and
    AF_UNIX paths stop at 107 bytes (under /tmp/pytest-of-root/pytest-NN/... the dashboard fails to start).
    """
    base = Path(tempfile.mkdtemp(prefix="hc-", dir="/tmp"))
    try:
        state = local_cluster.start(base, workers=workers, worker_cpus=worker_cpus)
        yield {**state, "base": base, "env": local_cluster.cluster_env(base)}
    finally:
        local_cluster.stop(base)
        shutil.rmtree(base, ignore_errors=True)
