"""Start, inspect and stop a multi-node Ray cluster on ONE host, the way the README's cluster recipe does.

Each node is a separate ``ray start --block`` process (its own session, temp dir and ports): a head that
runs no work (``--num-cpus 0``) and ``--workers`` worker nodes with ``--worker-cpus`` CPUs each and a
custom resource ``worker``. It is the cluster recipe of the README's "On a cluster" section with the
ports every node needs when several share one host, and what the simulated-cluster tests start.

    python scripts/local_cluster.py start --dir /tmp/hybrid-cluster --workers 2 --worker-cpus 1
    source /tmp/hybrid-cluster/env.sh   # the cluster's auth token, for every driver
    hybrid run configs/fashion_mnist.yaml --set runtime.ray_address=$(cat /tmp/hybrid-cluster/address)
    python scripts/local_cluster.py kill-node --dir /tmp/hybrid-cluster --node worker-1   # SIGKILL one node
    python scripts/local_cluster.py stop --dir /tmp/hybrid-cluster

``stop`` and ``kill-node`` touch only the processes of nodes this script started (each node's process
group), never another Ray on the host: ``ray stop`` would stop every Ray of the user.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

STATE = "cluster.json"
_PORT_FLAGS = ("--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port",
               "--dashboard-agent-grpc-port", "--runtime-env-agent-port", "--metrics-export-port")


_RANGE = [random.randrange(100)]


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        socks.append(sock)
        ports.append(sock.getsockname()[1])
    for sock in socks:
        sock.close()
    return ports


def _node_ip() -> str:
    out = subprocess.run([sys.executable, "-c", "import ray.util; print(ray.util.get_node_ip_address())"],
                         capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


def _ray() -> str:
    return str(Path(sys.executable).with_name("ray"))


def _node_args(temp_dir: Path) -> list[str]:
    ports = _free_ports(len(_PORT_FLAGS) + 1)
    args = [f"{flag}={port}" for flag, port in zip(_PORT_FLAGS, ports)]
    # A worker-port range per node below Linux's ephemeral range (32768-60999), where every port above was
    # picked: a range there could hold the GCS's or another component's port.
    # Never 10000-10199: a worker node still checks its range against the default Ray client port 10001
    # ("trying to use a port number 10001 that is used by other components"); once in 100 nodes that failed.
    _RANGE[0] = (_RANGE[0] + 1) % 99  # consecutive nodes of one cluster never share a range
    low = 10200 + _RANGE[0] * 200
    return [*args, f"--min-worker-port={low}", f"--max-worker-port={low + 199}", f"--temp-dir={temp_dir}",
            "--disable-usage-stats", "--block"]


def cluster_env(base: Path) -> dict[str, str]:
    """What every node and every driver of this cluster needs in its environment: the cluster's own auth
    token (a file of its own, not ``~/.ray/auth_token``, which other Rays on the host create and remove)."""
    token = base / "auth_token"
    if not token.exists():
        token.write_text(secrets.token_hex(32))
        token.chmod(0o600)
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}


def _spawn(name: str, args: list[str], base: Path) -> dict:
    temp_dir = base / name
    temp_dir.mkdir(parents=True, exist_ok=True)
    log = open(base / f"{name}.log", "wb")
    env = {**os.environ, **cluster_env(base)}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen([_ray(), "start", *args, *_node_args(temp_dir)], stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True, cwd=temp_dir, env=env)
    return {"name": name, "pid": proc.pid, "pgid": proc.pid, "temp_dir": str(temp_dir)}


def _wait_nodes(base: Path, address: str, count: int, timeout_s: float, *, named: str = "") -> list[dict]:
    """Wait until ``count`` nodes are alive (and one carries the resource ``named``, if given); returns their
    rows (asked from a child: no ray.init in this process)."""
    code = f"""
import json, time, ray
ray.init(address={address!r}, logging_level="ERROR", log_to_driver=False)
deadline = time.monotonic() + {timeout_s}
while True:
    nodes = [{{"node_id": n["NodeID"], "resources": n["Resources"]}} for n in ray.nodes() if n["Alive"]]
    named_up = {named!r} == "" or any({named!r} in n["resources"] for n in nodes)
    if (len(nodes) >= {count} and named_up) or time.monotonic() > deadline:
        print(json.dumps(nodes)); break
    time.sleep(1)
"""
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout_s + 60,
                             env={**os.environ, "RAY_ADDRESS": "", **cluster_env(base)})
    except subprocess.TimeoutExpired:
        raise SystemExit(f"local_cluster: no answer from the cluster at {address} in {timeout_s:.0f} s") from None
    lines = out.stdout.strip().splitlines()
    if out.returncode != 0 or not lines:
        tail = out.stderr.strip().splitlines()[-1:] or [f"rc {out.returncode}"]
        raise SystemExit(f"local_cluster: could not reach the cluster at {address}: {tail[0]}")
    nodes = json.loads(lines[-1])
    if len(nodes) < count or (named and not any(named in n["resources"] for n in nodes)):
        what = f"node {named}" if named else f"{count} nodes ({len(nodes)} up)"
        raise SystemExit(f"local_cluster: {what} did not come up at {address} in {timeout_s:.0f} s")
    return nodes


class HeadStartError(SystemExit):
    """The head's ``ray start`` died (seen under heavy load: a dashboard module timing out)."""


def _wait_started(log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace") if log.exists() else ""
        if "Ray runtime started" in text:
            return
        if "Traceback" in text:
            raise HeadStartError(f"local_cluster: the head failed to start ({log}):\n{text[-3000:]}")
        time.sleep(0.5)
    raise SystemExit(f"local_cluster: the head did not start in {timeout_s:.0f} s; see {log}")


def start(base: Path, *, workers: int, worker_cpus: int, timeout_s: float = 180) -> dict:
    """Start a head (no CPUs) and ``workers`` worker nodes; returns the state written to ``base/cluster.json``.

    Keep ``base`` short (``/tmp/hc-x``): Ray's unix sockets live under each node's temp dir and a socket path
    may not exceed 107 bytes.
    """
    base.mkdir(parents=True, exist_ok=True)
    for attempt in (1, 2):  # a head that dies while starting (its dashboard, under load) gets one more try
        try:
            return _start(base, workers=workers, worker_cpus=worker_cpus, timeout_s=timeout_s)
        except HeadStartError:
            if attempt == 2:
                raise
            stop(base, keep_logs=True)
    raise AssertionError("unreachable")


def _start(base: Path, *, workers: int, worker_cpus: int, timeout_s: float) -> dict:
    gcs_port, dash_port, client_port = _free_ports(3)
    address = f"{_node_ip()}:{gcs_port}"  # Ray binds the GCS to the host's address, not loopback
    nodes = [_spawn("head", ["--head", f"--port={gcs_port}", "--num-cpus=0",
                             "--include-dashboard=true", f"--dashboard-port={dash_port}",
                             f"--ray-client-server-port={client_port}", '--resources={"head": 1}'], base)]
    state = {"address": address, "nodes": nodes}
    (base / STATE).write_text(json.dumps(state, indent=2))
    _wait_started(base / "head.log", timeout_s)  # workers give up if the head's GCS is not up yet
    state["worker_cpus"] = worker_cpus
    for i in range(1, workers + 1):
        nodes.append(_spawn_worker(base, state, f"worker-{i}"))
    _record_node_ids(base, state, _wait_nodes(base, address, workers + 1, timeout_s))
    (base / "address").write_text(address)
    (base / "env.sh").write_text("".join(f"export {k}={v}\n" for k, v in cluster_env(base).items()))
    return state


def _spawn_worker(base: Path, state: dict, name: str) -> dict:
    # Each worker carries "worker" (every worker) and its own name as custom resources: a request can
    # target workers, and a node id can be mapped back to the node (and its process group) by name.
    node = _spawn(name, [f"--address={state['address']}", f"--num-cpus={state['worker_cpus']}",
                         f"--resources={json.dumps({'worker': 1, name: 1})}"], base)
    (base / STATE).write_text(json.dumps(state, indent=2))
    return node


def _record_node_ids(base: Path, state: dict, alive: list[dict]) -> None:
    names = [n["name"] for n in state["nodes"]]
    # Ray reports a killed node alive until its heartbeats time out: it keeps its id -> name entry (so it can
    # be named again) but is no longer one of the workers.
    killed = {n["name"] for n in state["nodes"] if n.get("killed")}
    ids = {row["node_id"]: next((n for n in names if n in row["resources"]), "?") for row in alive}
    state["node_ids"] = {**state.get("node_ids", {}), **ids}
    state["worker_node_ids"] = [row["node_id"] for row in alive
                                if "worker" in row["resources"] and ids[row["node_id"]] not in killed]
    (base / STATE).write_text(json.dumps(state, indent=2))


def add_worker(base: Path, *, timeout_s: float = 180) -> dict:
    """Start one more worker node (as a cluster manager replaces a lost VM); returns the new state."""
    state = load(base)
    taken = {n["name"] for n in state["nodes"]}
    name = next(f"worker-{i}" for i in range(1, 100) if f"worker-{i}" not in taken)
    state["nodes"].append(_spawn_worker(base, state, name))
    _record_node_ids(base, state, _wait_nodes(base, state["address"], 1, timeout_s, named=name))
    return state


def load(base: Path) -> dict:
    return json.loads((base / STATE).read_text())


def kill_node(base: Path, name: str) -> None:
    """SIGKILL every process of one node started here (its process group), the way a lost VM takes them.

    ``name`` is the node's name (``worker-1``) or its Ray node id.
    """
    state = load(base)
    name = state.get("node_ids", {}).get(name, name)
    for node in state["nodes"]:
        if node["name"] == name:
            _killpg(node["pgid"])
            node["killed"] = True
            state["worker_node_ids"] = [i for i in state.get("worker_node_ids", [])
                                        if state["node_ids"].get(i) != name]
            (base / STATE).write_text(json.dumps(state, indent=2))
            return
    raise SystemExit(f"local_cluster: no node named {name!r}")


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def stop(base: Path, *, keep_logs: bool = False) -> None:
    """Kill every node started here, then remove their temp dirs (and their logs unless ``keep_logs``)."""
    if not (base / STATE).exists():
        return
    state = load(base)
    for node in reversed(state["nodes"]):
        _killpg(node["pgid"])
    time.sleep(1)
    for node in state["nodes"]:
        shutil.rmtree(node["temp_dir"], ignore_errors=True)
        if keep_logs:
            log = base / f"{node['name']}.log"
            if log.exists():
                log.rename(log.with_suffix(f".{int(time.time())}.log"))
    (base / STATE).unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("start", "stop", "kill-node", "status"))
    parser.add_argument("--dir", type=Path, default=Path("/tmp/hybrid-cluster"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--worker-cpus", type=int, default=1)
    parser.add_argument("--node", default=None)
    args = parser.parse_args()
    if args.command == "start":
        state = start(args.dir, workers=args.workers, worker_cpus=args.worker_cpus)
        print(state["address"])
    elif args.command == "stop":
        stop(args.dir)
    elif args.command == "kill-node":
        kill_node(args.dir, args.node)
    else:
        print(json.dumps(load(args.dir), indent=2))


if __name__ == "__main__":
    main()
