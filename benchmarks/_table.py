"""What the benchmark scripts share: fixed-width tables, timed runs and progress lines
(run them as ``.venv/bin/python benchmarks/bench_*.py``)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass


@dataclass
class Timed:
    """The timed runs of one path at one size (scripts subclass it to add what they count)."""

    path: str
    rows: int
    seconds: list[float]
    """Wall time of every timed run."""

    @property
    def best_s(self) -> float:
        """Fastest run: the least disturbed by other load on the machine."""
        return min(self.seconds)

    @property
    def median_s(self) -> float:
        """Median run."""
        return statistics.median(self.seconds)


def progress(tag: str) -> Callable[[str], None]:
    """A function printing timestamped progress lines, flushed at once (Ray and Spark write to the same terminal)."""

    def log(message: str) -> None:
        print(f"[{tag} {time.strftime('%H:%M:%S')}] {message}", flush=True)

    return log


def render_table(lines: Sequence[Sequence[str]], *, left: Collection[int] = (0,)) -> str:
    """Header row, a rule, then the rows; columns in ``left`` are left-aligned, the rest right-aligned."""
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    out = []
    for n, line in enumerate(lines):
        cells = (c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
        out.append("  ".join(cells).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)
