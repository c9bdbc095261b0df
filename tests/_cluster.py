"""``scripts/local_cluster.py`` as a module for the tests that start a multi-node Ray on this host."""

from __future__ import annotations

import contextlib
import os
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


_shared: dict[str, Any] = {}
_stack = contextlib.ExitStack()


def shared_cluster() -> dict[str, Any]:
    """The one cluster the multi-node test modules share (started on first use; see :func:`stop_shared`).

    ``HYBRID_TEST_CLUSTER=/tmp/hc-x`` uses a cluster started by hand (``scripts/local_cluster.py start --dir``)
    instead, and leaves it running.
    """
    if not _shared:
        reuse = os.environ.get("HYBRID_TEST_CLUSTER")
        if reuse:
            base = Path(reuse)
            _shared.update({**local_cluster.load(base), "base": base, "env": local_cluster.cluster_env(base)})
        else:
            _shared.update(_stack.enter_context(running_cluster()))
    return _shared


def stop_shared() -> None:
    """Stop the shared cluster, if this session started one."""
    _shared.clear()
    _stack.close()


def worker_node_ids(cluster: dict[str, Any]) -> set[str]:
    """The node ids of the cluster's live worker nodes now (a test before may have replaced one)."""
    return set(local_cluster.load(cluster["base"])["worker_node_ids"])
