"""Fixed-width tables for the benchmark scripts (run them as ``.venv/bin/python benchmarks/bench_*.py``)."""

from __future__ import annotations

from collections.abc import Collection, Sequence


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
