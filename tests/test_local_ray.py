"""``runtime.ray_address: null`` starts hybrid's own Ray, whatever else runs on the host.

A ``ray start --head`` cluster runs beside the test (its own ports and ``--temp-dir``); hybrid must not
join it through ``/tmp/ray/ray_current_cluster`` or ``RAY_ADDRESS``, must leave it running with its
files in place, and must start just as well when that file names a cluster that is gone.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from hybrid._reaper import _token_in_use
from hybrid.config import RuntimeConfig
from hybrid.runtime import _AUTH_TOKEN, _RAY_TMP, _free_port, running

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.cluster]

RAY = str(Path(sys.executable).with_name("ray"))
ADDRESS_FILE = _RAY_TMP / "ray_current_cluster"


@dataclass
class Head:
    """A ``ray start --head`` cluster this test started (found again by its unique temp dir)."""

    address: str
    port: int
    node_manager_port: int
    temp_dir: Path

    def processes(self) -> list[psutil.Process]:
        found = []
        for proc in psutil.process_iter(["cmdline"]):
            if any(str(self.temp_dir) in part for part in proc.info["cmdline"] or ()):
                found.append(proc)
        return found

    def serving(self) -> bool:
        with socket.socket() as sock:
            sock.settimeout(2)
            return sock.connect_ex(("127.0.0.1", self.port)) == 0


def _snapshot(path: Path) -> bytes | None:
    return path.read_bytes() if path.exists() else None


def _restore(path: Path, content: bytes | None) -> None:
    if content is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    elif path.exists() and not (path == _AUTH_TOKEN and _token_in_use(path)):
        path.unlink(missing_ok=True)


@pytest.fixture
def host_state() -> Iterator[None]:
    """Put ``/tmp/ray/ray_current_cluster``, ``~/.ray/auth_token`` and ``RAY_ADDRESS`` back as found."""
    address, token, env = _snapshot(ADDRESS_FILE), _snapshot(_AUTH_TOKEN), os.environ.get("RAY_ADDRESS")
    try:
        yield
    finally:
        _restore(ADDRESS_FILE, address)
        _restore(_AUTH_TOKEN, token)
        if env is None:
            os.environ.pop("RAY_ADDRESS", None)
        else:
            os.environ["RAY_ADDRESS"] = env


@pytest.fixture(scope="module")
def head() -> Iterator[Head]:
    """A one-CPU ``ray start --head`` on free ports, in its own temp dir; only its own processes are killed."""
    temp_dir = Path(tempfile.mkdtemp(prefix="hyb-head-", dir="/tmp"))  # short: Ray's socket paths have a limit
    port, nm_port = _free_port(), _free_port()
    token = _snapshot(_AUTH_TOKEN)
    ports = {
        "--port": port, "--node-manager-port": nm_port, "--object-manager-port": _free_port(),
        "--dashboard-agent-listen-port": _free_port(), "--dashboard-agent-grpc-port": _free_port(),
        "--runtime-env-agent-port": _free_port(), "--metrics-export-port": _free_port(),
        "--ray-client-server-port": _free_port(),
    }
    args = [RAY, "start", "--head", "--num-cpus", "1", "--temp-dir", str(temp_dir), "--include-dashboard", "false",
            "--disable-usage-stats", *(f"{k}={v}" for k, v in ports.items())]
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_GCS_SERVER_PORT")}
    started = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    cluster = Head(address=f"127.0.0.1:{port}", port=port, node_manager_port=nm_port, temp_dir=temp_dir)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        deadline = time.monotonic() + 30
        while not cluster.serving() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert cluster.serving(), f"the head's GCS never listened on {port}"
        yield cluster
    finally:
        victims = cluster.processes()
        for proc in victims:
            try:
                proc.send_signal(signal.SIGKILL)
            except psutil.Error:
                pass
        psutil.wait_procs(victims, timeout=10)
        shutil.rmtree(temp_dir, ignore_errors=True)
        _restore(_AUTH_TOKEN, token)


def _check_own_cluster(rt: object, head: Head) -> None:
    import ray

    nodes = [n for n in ray.nodes() if n["Alive"]]
    assert len(nodes) == 1, nodes
    assert nodes[0]["NodeManagerPort"] != head.node_manager_port
    gcs = ray.get_runtime_context().gcs_address
    assert not gcs.endswith(f":{head.port}"), gcs
    assert ray.cluster_resources().get("CPU") == 2.0  # what hybrid asked for; the head has 1
    assert rt.owns_cluster  # type: ignore[attr-defined]


def _check_head_untouched(head: Head, files_before: set[Path]) -> None:
    assert head.serving()
    names = {p.name() for p in head.processes() if p.is_running()}
    assert {"gcs_server", "raylet"} <= names, names
    assert files_before <= set(head.temp_dir.rglob("*")), files_before - set(head.temp_dir.rglob("*"))


def _head_files(head: Head) -> set[Path]:
    # The session's layout (dirs, sockets, address file); log files come and go with the head's workers.
    return {p for p in head.temp_dir.rglob("*") if p.is_dir() or p.name == "ray_current_cluster"}


def test_local_start_beside_a_head_named_in_the_address_file(head: Head, host_state: None) -> None:
    ADDRESS_FILE.parent.mkdir(parents=True, exist_ok=True)
    ADDRESS_FILE.write_text(head.address)  # what `ray start --head` writes in the default temp dir
    before = _head_files(head)
    with running(RuntimeConfig(ray_address=None, num_cpus=2), with_spark=False) as rt:
        _check_own_cluster(rt, head)
    _check_head_untouched(head, before)
    assert ADDRESS_FILE.read_text() == head.address  # hybrid's local start leaves the user's pointer alone


def test_local_start_ignores_ray_address_and_puts_it_back(head: Head, host_state: None) -> None:
    os.environ["RAY_ADDRESS"] = head.address
    before = _head_files(head)
    with running(RuntimeConfig(ray_address=None, num_cpus=2), with_spark=False) as rt:
        _check_own_cluster(rt, head)
        assert os.environ.get("RAY_ADDRESS") != head.address  # nothing started now can follow it
    assert os.environ["RAY_ADDRESS"] == head.address
    _check_head_untouched(head, before)


def test_local_start_with_a_stale_address_file(host_state: None) -> None:
    import ray

    ADDRESS_FILE.parent.mkdir(parents=True, exist_ok=True)
    ADDRESS_FILE.write_text(f"127.0.0.1:{_free_port()}")  # a head killed with SIGKILL leaves this behind
    with running(RuntimeConfig(ray_address=None, num_cpus=1), with_spark=False) as rt:
        assert rt.owns_cluster
        assert ray.cluster_resources().get("CPU") == 1.0
    assert not ray.is_initialized()
