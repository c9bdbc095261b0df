"""Reap what a killed driver leaves behind: its local Ray's processes, temp files and auth token.

A driver that starts a local Ray owns a process tree (GCS, raylet, dashboard and its agents, workers,
Spark JVMs). Killed with SIGKILL it cannot clean up, and some of those processes (the dashboard agent,
the runtime-env agent) outlive it as orphans holding hundreds of MB; the ``~/.ray/auth_token`` it
created then breaks a later ``ray start`` on the same host.

``python -m hybrid._reaper --pid DRIVER ...`` runs in its own session beside the driver. It samples
the driver's descendants every half second; once the driver is gone it SIGKILLs every sampled process
still alive (matched by pid *and* start time, so a recycled pid is never hit) and every process whose
command line names the Ray session, then removes the session directory and the token if the driver
created it. After a clean shutdown it finds nothing left and exits.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

POLL_S = 0.5


def start(*, session_dir: Path | None, token: Path | None) -> subprocess.Popen[bytes]:
    """Start a reaper for this process; it lives in its own session so a kill of our group spares it."""
    args = [sys.executable, "-m", "hybrid._reaper", "--pid", str(os.getpid())]
    if session_dir is not None:
        args += ["--session-dir", str(session_dir)]
    if token is not None:
        args += ["--token", str(token)]
    return subprocess.Popen(args, start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def _alive(proc: object) -> bool:
    import psutil

    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE  # type: ignore[attr-defined]
    except psutil.Error:
        return False


def reap(pid: int, *, session_dir: str | None, token: str | None) -> int:
    """Watch ``pid``; when it is gone, kill what it left and remove its files. Returns processes killed."""
    import psutil

    try:
        driver = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return 0
    seen: dict[int, psutil.Process] = {}
    me = os.getpid()
    while _alive(driver):
        with contextlib.suppress(psutil.Error):
            for child in driver.children(recursive=True):
                if child.pid != me:
                    seen.setdefault(child.pid, child)
        time.sleep(POLL_S)
    victims = [p for p in seen.values() if _alive(p)]  # is_running() also compares the start time
    if session_dir:
        name = Path(session_dir).name
        for proc in psutil.process_iter(["cmdline"]):
            with contextlib.suppress(psutil.Error):
                if proc.pid != me and any(name in part for part in proc.info["cmdline"] or ()):
                    victims.append(proc)
    killed = 0
    for proc in {p.pid: p for p in victims}.values():
        with contextlib.suppress(psutil.Error):
            proc.send_signal(signal.SIGKILL)
            killed += 1
    psutil.wait_procs(victims, timeout=5)
    if session_dir:
        shutil.rmtree(session_dir, ignore_errors=True)
        # A dangling session_latest link makes the next RayDP fail to create its log dir.
        for entry in Path(session_dir).parent.iterdir():
            if entry.is_symlink() and not entry.exists():
                entry.unlink(missing_ok=True)
    if token and not _token_in_use(Path(token)):
        Path(token).unlink(missing_ok=True)
    return killed


def _token_in_use(token: Path) -> bool:
    """Whether another live Ray cluster on this host reads ``token`` (a gcs_server whose ``HOME`` holds it).

    A cluster whose environment cannot be read counts as a reader: the token is then kept.
    """
    import psutil

    for proc in psutil.process_iter(["name"]):
        if proc.info["name"] != "gcs_server":
            continue
        try:
            home = proc.environ().get("HOME")
        except psutil.Error:
            return True
        if home is None or (Path(home) / ".ray" / "auth_token") == token:
            return True
    return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pid", type=int, required=True)
    parser.add_argument("--session-dir")
    parser.add_argument("--token", help="remove this file at the end (the driver created it)")
    args = parser.parse_args()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C reaches the driver, not us
    reap(args.pid, session_dir=args.session_dir, token=args.token)
    return 0


if __name__ == "__main__":
    sys.exit(main())
