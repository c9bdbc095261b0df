"""A driver killed with SIGKILL leaves no Ray or Java process and no auth token of its own behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]

_DRIVER = textwrap.dedent(
    """
    import sys, time
    from hybrid.config import RuntimeConfig
    from hybrid.runtime import start_ray
    runtime = start_ray(RuntimeConfig(num_cpus=1))
    print("SESSION", runtime.session_dir, flush=True)
    runtime.start_spark()
    print("SPARK-UP", flush=True)
    time.sleep(600)
    """
)


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _wait_for(driver: subprocess.Popen[str], marker: str) -> str:
    """The first line of the driver's output that starts with ``marker`` (the JVMs print there too)."""
    for line in driver.stdout:  # type: ignore[union-attr]
        if line.startswith(marker):
            return line.strip()
    raise AssertionError(f"the driver exited before printing {marker}")


def test_sigkilled_driver_leaves_no_ray_or_java_process(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home)}  # its own ~/.ray: the token it creates must go
    driver = subprocess.Popen([sys.executable, "-c", _DRIVER], stdout=subprocess.PIPE, text=True, env=env)
    try:
        session_dir = _wait_for(driver, "SESSION").split(" ", 1)[1]
        _wait_for(driver, "SPARK-UP")
        time.sleep(2)
        everything = _descendants(driver.pid)
        reapers = [p for p in everything if "hybrid._reaper" in " ".join(p.cmdline())]
        tree = [p for p in everything if p not in reapers]
        assert len(reapers) == 1
        names = {p.name() for p in tree}
        assert "raylet" in names and "java" in names, names
        assert (home / ".ray" / "auth_token").exists()
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        psutil.wait_procs(reapers, timeout=60)  # it has done its work when it exits
        left = [f"{p.pid} {p.name()}" for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert left == [], f"processes outlived the killed driver: {left}"
        assert not Path(session_dir).exists(), "the Ray session directory was not removed"
        assert not (home / ".ray" / "auth_token").exists(), "the auth token the driver created was left behind"
    finally:
        if driver.poll() is None:
            driver.kill()
        for proc in _descendants(driver.pid):
            proc.kill()
