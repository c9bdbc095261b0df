"""Resource and time accounting for a run: stage timers and the peak RSS of the whole process tree."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator


def tree_rss_bytes(pid: int | None = None) -> int:
    """Resident memory of process ``pid`` (default: this one) plus all its descendants.

    A local Ray started by this process (GCS, raylet, workers, Spark's JVMs) is among them.
    """
    import psutil

    try:
        root = psutil.Process(pid or os.getpid())
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            total += proc.memory_info().rss
    return total


class PeakRSS:
    """Context manager sampling :func:`tree_rss_bytes` in a daemon thread; ``peak_bytes`` after exit."""

    def __init__(self, *, interval_s: float = 1.0) -> None:
        self.interval_s = interval_s
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="hybrid-peak-rss", daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, tree_rss_bytes())
            self._stop.wait(self.interval_s)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class StageTimer:
    """Wall-clock seconds per named stage: ``with timer("ingest"): ...``."""

    def __init__(self) -> None:
        self.durations_s: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.durations_s[stage] = round(self.durations_s.get(stage, 0.0) + time.perf_counter() - start, 3)
