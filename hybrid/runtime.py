"""Start and stop Ray and Spark-on-Ray (RayDP) with the settings the stack needs.

This is an edge module: it owns processes and temp files. Library functions elsewhere take a
``SparkSession`` or ``ray.data.Dataset`` and never start anything themselves.

Required settings (see the README's "Stack" section):
- JDK 17 ``--add-opens`` flags on the RayDP app master, executors and driver, or the first
  Spark -> Ray conversion kills the app master and the next call hangs;
- the Ray dashboard on, because Ray Train V2 frees a stopped trial's placement group through it;
- loopback addresses for the Spark driver, and ``PYSPARK_PYTHON`` set to this interpreter.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hybrid.config import RuntimeConfig
from hybrid.errors import RuntimeStartError

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

_OPENS = (
    "java.lang",
    "java.lang.invoke",
    "java.io",
    "java.net",
    "java.nio",
    "java.math",
    "java.text",
    "java.util",
    "java.util.concurrent",
    "java.util.concurrent.atomic",
    "sun.nio.ch",
    "sun.nio.cs",
    "sun.security.action",
    "sun.util.calendar",
)
JAVA_OPTIONS = " ".join(
    ["-XX:+IgnoreUnrecognizedVMOptions", *(f"--add-opens=java.base/{pkg}=ALL-UNNAMED" for pkg in _OPENS)]
)


def spark_configs(config: RuntimeConfig) -> dict[str, str]:
    """Spark settings for RayDP: JDK 17 module flags, loopback networking, Arrow, quiet UI."""
    return {
        "spark.ray.raydp_app_master.extraJavaOptions": JAVA_OPTIONS,
        "spark.executor.extraJavaOptions": JAVA_OPTIONS,
        "spark.driver.extraJavaOptions": JAVA_OPTIONS,
        "spark.driver.host": "127.0.0.1",
        "spark.driver.bindAddress": "127.0.0.1",
        "spark.driver.memory": config.spark_driver_memory,
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.shuffle.partitions": str(max(2, config.spark_executors * config.spark_executor_cores * 2)),
        "spark.executorEnv.PYSPARK_PYTHON": sys.executable,
    }


def _set_process_env() -> None:
    # Spark reads these from the environment of the driver process; they are not user knobs.
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable

    # Ray would otherwise warn on every worker start that it overrides this.
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")


@dataclass
class Runtime:
    """Handles to a running Ray and, while it is up, Spark-on-Ray."""

    config: RuntimeConfig
    connected: bool = False
    """This runtime called ``ray.init`` (and so calls ``ray.shutdown``)."""
    owns_cluster: bool = False
    """This runtime started the local Ray cluster (and so removes its temp files)."""
    spark: SparkSession | None = None
    session_dir: Path | None = None
    _tmp_before: set[Path] = field(default_factory=set)
    _token_existed: bool = True
    _reaper: Any = None
    """The watcher that reaps this local Ray's processes if this process is killed (see hybrid._reaper)."""
    _latest_before: Path | None = None
    """Where ``/tmp/ray/session_latest`` pointed before our local Ray moved it (another cluster's session)."""
    _user_ray_address: str | None = None
    """A ``RAY_ADDRESS`` the user had set, held out of the environment while our local Ray runs."""

    def start_spark(self, app_name: str = "hybrid") -> SparkSession:
        """Start Spark on Ray through RayDP (no-op if already running) and return the session."""
        if self.spark is not None:
            return self.spark
        import raydp
        from raydp.utils import parse_memory_size

        from hybrid import cluster

        # Each executor is a Ray actor holding its cores and its JVM's memory on one node.
        executor = {"CPU": float(self.config.spark_executor_cores),
                    "memory": float(parse_memory_size(self.config.spark_executor_memory))}
        cluster.check_fits("spark", executor, count=self.config.spark_executors, what="each Spark executor",
                           fix="lower runtime.spark_executor_cores, spark_executor_memory or spark_executors")
        t0 = time.perf_counter()
        try:
            self.spark = raydp.init_spark(
                app_name=app_name,
                num_executors=self.config.spark_executors,
                executor_cores=self.config.spark_executor_cores,
                executor_memory=self.config.spark_executor_memory,
                configs=spark_configs(self.config),
            )
        except Exception as err:  # RayDP raises bare Exceptions; keep the cause chained
            raise RuntimeStartError(f"could not start Spark on Ray through RayDP: {err}") from err
        self.spark.sparkContext.setLogLevel("ERROR")
        log.info("Spark on Ray started in %.1f s", time.perf_counter() - t0)
        return self.spark

    def stop_spark(self) -> None:
        """Stop Spark-on-Ray; Ray datasets that were materialised beforehand stay valid."""
        if self.spark is None:
            return
        import raydp

        import ray

        # A total on purpose: the executors' CPUs come back on whichever nodes they ran.
        freed = float(self.config.spark_executors * self.config.spark_executor_cores)
        target = min(ray.available_resources().get("CPU", 0.0) + freed, ray.cluster_resources().get("CPU", 0.0))
        with _quiet_stderr_fd():
            raydp.stop_spark(cleanup_data=True)
        self.spark = None
        # Executors are Ray actors that exit asynchronously: wait until their CPUs are back, so
        # that whatever is sized next from the free resources (Tune's concurrency) sees them.
        deadline = time.monotonic() + 30
        while ray.available_resources().get("CPU", 0.0) < target and time.monotonic() < deadline:
            time.sleep(0.2)

    def spark_executor_pids(self) -> list[int]:
        """Process ids of the live Spark executors (RayDP runs each as a Ray actor, a JVM), sorted."""
        import ray
        from ray.util.state import list_actors

        # Our cluster by address: with another Ray on the host the state API refuses to guess.
        address = ray.get_runtime_context().gcs_address
        actors = list_actors(address=address, detail=True, filters=[("state", "=", "ALIVE")], limit=10_000,
                             raise_on_missing_output=False)
        return sorted(int(a.pid) for a in actors if "RayDPExecutor" in (a.class_name or "") and a.pid)

    def cluster_resources(self) -> dict[str, float]:
        """Total resources of the Ray cluster (CPU, GPU, memory...)."""
        import ray

        return dict(ray.cluster_resources())

    def shutdown(self) -> None:
        """Stop Spark, then Ray if this runtime started it, and remove the temp files they made."""
        try:
            self.stop_spark()
        finally:
            if self.connected:
                import ray

                ray.shutdown()
            if self.owns_cluster:
                self._remove_temp_files()
            if self._reaper is not None:  # a clean shutdown: nothing left to reap
                self._reaper.terminate()
                with contextlib.suppress(Exception):
                    self._reaper.wait(timeout=5)
                self._reaper = None
            if self._user_ray_address is not None:
                os.environ[_RAY_ADDRESS_ENV] = self._user_ray_address
                self._user_ray_address = None

    def _remove_temp_files(self) -> None:
        # What our local Ray and RayDP left: our session dir, the Java core-worker library RayDP
        # unpacks (~40 MB per start, in a numbered dir), and links that now dangle (a dangling
        # session_latest is kept by the next Ray, and RayDP then fails to create its log dir).
        # Another Ray may run beside us: only remove numbered dirs no live process has mapped.
        if self.session_dir is not None:
            shutil.rmtree(self.session_dir, ignore_errors=True)
        new = [p for p in _ray_tmp_entries() - self._tmp_before if p.name.isdigit() and p.is_dir()]
        deadline = time.monotonic() + 10  # our JVMs may still be exiting right after ray.shutdown()
        while new:
            mapped = _mapped_paths()
            in_use = [p for p in new if any(m.startswith(f"{p}/") for m in mapped)]
            for path in set(new) - set(in_use):
                shutil.rmtree(path, ignore_errors=True)
            new = in_use
            if not new or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        for path in _ray_tmp_entries():
            if path.is_symlink() and not path.exists():
                path.unlink(missing_ok=True)
        # Our start moved session_latest off another cluster's live session: point it back.
        latest = _RAY_TMP / "session_latest"
        if self._latest_before is not None and self._latest_before.is_dir() and not latest.exists():
            with contextlib.suppress(OSError):
                latest.unlink(missing_ok=True)
                latest.symlink_to(self._latest_before)
        if not self._token_existed and not _other_ray_running():
            _AUTH_TOKEN.unlink(missing_ok=True)


def _other_ray_running() -> bool:
    """Whether some Ray cluster is still up on this machine (it may read the auth token)."""
    import psutil

    return any(p.info["name"] == "gcs_server" for p in psutil.process_iter(["name"]))


def _free_port() -> int:
    """A TCP port free on this machine right now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("", 0))
        return int(sock.getsockname()[1])


def _mapped_paths() -> set[str]:
    """Files under /tmp/ray memory-mapped by live processes other than this one and its children.

    Our own Spark gateway JVM keeps RayDP's library mapped until this process exits; on Linux a
    mapped file can be unlinked safely, so only other processes' mappings keep a directory.
    """
    import psutil

    ours = {os.getpid(), *(p.pid for p in psutil.Process().children(recursive=True))}
    paths: set[str] = set()
    for maps in Path("/proc").glob("[0-9]*/maps"):
        if int(maps.parent.name) in ours:
            continue
        with contextlib.suppress(OSError):
            for line in maps.read_text().splitlines():
                if "/tmp/ray/" in line:
                    paths.add(line.split(maxsplit=5)[-1])
    return paths


_RAY_TMP = Path("/tmp/ray")
_AUTH_TOKEN = Path.home() / ".ray" / "auth_token"
_RAY_ADDRESS_ENV = "RAY_ADDRESS"
_LOCAL = (None, "local")
"""``runtime.ray_address`` values that start hybrid's own local Ray."""


def _session_latest() -> Path | None:
    """The session directory ``/tmp/ray/session_latest`` points at now, if it is a live link."""
    latest = _RAY_TMP / "session_latest"
    with contextlib.suppress(OSError):
        if latest.is_symlink() and latest.exists():
            return latest.resolve()
    return None


def _ray_tmp_entries() -> set[Path]:
    return set(_RAY_TMP.iterdir()) if _RAY_TMP.is_dir() else set()


@contextlib.contextmanager
def _quiet_stderr_fd() -> Iterator[None]:
    """Silence the JVM's shutdown chatter (log4j "Reconfiguration failed") on file descriptor 2."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def quiet_ray_data() -> None:
    """Turn off Ray Data's progress bars in this process's ``DataContext``, which every dataset made here copies
    and carries to the processes that run it: with a pass per split per epoch they flood the log."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.enable_operator_progress_bars = False
    ctx.print_on_execution_start = False


def start_ray(config: RuntimeConfig) -> Runtime:
    """Connect to ``config.ray_address`` or start a local Ray sized by ``config.num_cpus``.

    ``ray_address: null`` (or ``local``) always starts hybrid's own Ray, whatever else runs on the
    host: Ray's ``address="local"``. A plain ``ray.init()`` would instead join the cluster named by a
    ``RAY_ADDRESS`` variable or by ``/tmp/ray/ray_current_cluster`` (which ``ray start --head`` writes
    and a killed head leaves behind), and then refuse ``num_cpus``. A ``RAY_ADDRESS`` the user set is
    held out of the environment while the local Ray runs (so no process it starts can follow it) and
    put back at shutdown; to run on that cluster, set ``runtime.ray_address: auto`` or its address.

    Raises:
        RuntimeStartError: If Ray cannot be started or reached.
    """
    import ray

    _set_process_env()
    if ray.is_initialized():
        return Runtime(config=config)
    local = config.ray_address in _LOCAL
    tmp_before, token_existed, latest_before = _ray_tmp_entries(), _AUTH_TOKEN.exists(), _session_latest()
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": True}
    # For every Ray worker of this job: no Ray Data progress bars (Train re-runs a split per epoch
    # and each draws bars from an actor the driver cannot configure otherwise); locally, also
    # Spark's Python.
    env_vars = {"RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    os.environ.update(env_vars)
    kwargs["runtime_env"] = {"env_vars": env_vars}
    gcs_port = None
    user_address = None
    if local:
        env_vars["PYSPARK_PYTHON"] = sys.executable  # a cluster's nodes have their own interpreter path
        kwargs["include_dashboard"] = True  # Train V2 cleans up stopped trials through the state API
        # Train V2 starts a preemption watcher actor per run to notice nodes being drained; a one-node Ray of
        # hybrid's own has none to drain, and each actor is a Python process that costs seconds to start.
        env_vars["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] = "0"
        kwargs["num_cpus"] = config.num_cpus or os.cpu_count() or 1
        # Train V2's placement-group cleaner finds "its" cluster by scanning for GCS processes; with
        # a second Ray on the machine it gives up, a stopped trial leaks its CPUs and the next trial
        # waits forever. Fixing the GCS port lets every worker be told the address up front.
        gcs_port = _free_port()
        env_vars["RAY_ADDRESS"] = f"{ray.util.get_node_ip_address()}:{gcs_port}"
        os.environ["RAY_GCS_SERVER_PORT"] = str(gcs_port)
        user_address = os.environ.pop(_RAY_ADDRESS_ENV, None) or None
        if user_address is not None:
            log.warning("RAY_ADDRESS=%s is set but runtime.ray_address is null: starting a local Ray; "
                        "set runtime.ray_address to auto or that address to run on that cluster", user_address)
    elif ":" in str(config.ray_address) and "://" not in str(config.ray_address):
        # Tell this job's workers which cluster is theirs (Train V2's placement-group cleaner and the
        # state API otherwise scan the host for GCS processes, and give up when they find several).
        env_vars["RAY_ADDRESS"] = config.ray_address
    t0 = time.perf_counter()
    try:
        ray.init(address="local" if local else config.ray_address, **kwargs)
    except Exception as err:
        if user_address is not None:
            os.environ[_RAY_ADDRESS_ENV] = user_address
        where = "a local Ray" if local else config.ray_address
        raise RuntimeStartError(f"could not start or reach {where}: {err}") from err
    finally:
        if gcs_port is not None:  # never leak into subprocesses, which start Rays of their own
            os.environ.pop("RAY_GCS_SERVER_PORT", None)
    # RAY_DATA_DISABLE_PROGRESS_BARS reaches the processes Ray starts; this one read it when it imported Ray Data.
    quiet_ray_data()
    session_dir = None
    if local:
        with contextlib.suppress(Exception):
            session_dir = Path(ray._private.worker._global_node.get_session_dir_path())
    log.info("Ray ready in %.1f s: %s", time.perf_counter() - t0, ray.cluster_resources())
    reaper = None
    if local:
        from hybrid import _reaper

        reaper = _reaper.start(session_dir=session_dir, token=None if token_existed else _AUTH_TOKEN)
    return Runtime(
        config=config,
        connected=True,
        owns_cluster=local,
        session_dir=session_dir,
        _tmp_before=tmp_before,
        _token_existed=token_existed,
        _reaper=reaper,
        _latest_before=latest_before if local else None,
        _user_ray_address=user_address,
    )


@contextlib.contextmanager
def running(config: RuntimeConfig, *, with_spark: bool = True) -> Iterator[Runtime]:
    """Context manager: Ray (and Spark on it) up inside, shut down and cleaned up on exit.

    Ctrl-C (SIGINT) and SIGTERM both unwind through the ``finally`` so nothing is left running.
    """
    previous = signal.getsignal(signal.SIGTERM)

    def _on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
        signal.signal(signal.SIGTERM, _on_term)
    runtime = start_ray(config)
    try:
        if with_spark:
            runtime.start_spark()
        yield runtime
    finally:
        runtime.shutdown()
        with contextlib.suppress(ValueError):
            signal.signal(signal.SIGTERM, previous)
