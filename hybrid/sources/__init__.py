"""Data sources: read a user's table (or a packaged data set) into a Spark DataFrame.

Every source returns DataFrames shaped as a user would have them: one row per example, a
``pixels`` array column and a ``label`` column. Validation happens later, in :mod:`hybrid.ingest`.
"""

from __future__ import annotations

from hybrid.sources.images import ImageTables, read_image_tables

__all__ = ["ImageTables", "read_image_tables"]
