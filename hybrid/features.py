"""Feature layouts: the shapes in which Spark users hold an image's values, turned into ingest's ``pixels`` column.

Ingest and scoring read one canonical column, ``pixels``: an array of numbers per row. Spark users hold
features in other layouts, and each maps to that array in Spark SQL (in the JVM, no Python UDF):

``array``
    An ``array<number>`` column (today's layout, ``pixels`` by default): used as it is.
``vector``
    A ``pyspark.ml.linalg`` Vector column, dense or sparse (what ``VectorAssembler`` writes): turned into
    ``array<double>`` by ``pyspark.ml.functions.vector_to_array``. A vector of the wrong size breaks the
    ``pixel_count`` rule row by row, as a short array does.
``columns``
    One numeric column per value (``label,pixel0,...,pixel783`` in a CSV), named by ``feature_columns`` or by
    a ``pixel_prefix`` plus a number: ``F.array(*columns)``, in the listed order, or in numeric order of the
    number for a prefix (``pixel2`` before ``pixel10``). Their count is part of the schema, so a wrong count
    fails on the driver rather than quarantining every row.

:func:`resolve_layout` decides the layout from a schema alone (no Spark job) and fails with one line that
names the key, the rule and the value; :meth:`FeatureLayout.pixels` is the expression. Ingest
(:func:`hybrid.ingest.tag_images`) and scoring (:func:`hybrid.score.score`) both call these two, so the
array a model is trained on and the array it scores cannot drift apart.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from hybrid.errors import ConfigError, DataError, did_you_mean

if TYPE_CHECKING:
    from pyspark.sql import Column
    from pyspark.sql.types import DataType, StructType

PIXELS = "pixels"
"""The canonical column: one array of numbers per row."""
LayoutKind = Literal["array", "vector", "columns"]
_SHOWN_COLUMNS = 8


@dataclass(frozen=True)
class FeatureLayout:
    """Where a table holds each row's features (see the module docstring)."""

    kind: LayoutKind
    columns: tuple[str, ...]
    """The source columns, in feature order: one for ``array`` and ``vector``, one per value for ``columns``."""

    def pixels(self) -> Column:
        """The features as one array column (``array<double>`` for a Vector, the columns' common type for
        ``columns``)."""
        from pyspark.sql import functions as F

        if self.kind == "vector":
            from pyspark.ml.functions import vector_to_array

            vector = quoted(self.columns[0])
            # vector_to_array fails the task on a null; a null array is the pixels_null rule's to report
            return F.when(vector.isNotNull(), vector_to_array(vector, dtype="float64"))
        if self.kind == "columns":
            return F.array(*(quoted(c) for c in self.columns))
        return quoted(self.columns[0])

    def culprit(self, rule: Column, *, pixels: Column) -> Column:
        """The name of the source column that made a row break a pixel rule (``rule`` holds the rule's name;
        ``pixels`` is :meth:`pixels`' value): for ``columns``, the first column holding a null
        (``pixel_null``) or a NaN or infinity (``pixel_not_finite``); else the one source column."""
        from pyspark.sql import functions as F

        if self.kind != "columns":
            return F.lit(self.columns[0])
        names = F.array(*(F.lit(c) for c in self.columns))

        def first(broken: object) -> Column:
            return F.element_at(names, F.array_position(F.transform(pixels, broken), True).cast("int"))

        as_double = lambda x: x.cast("double")  # noqa: E731
        return (F.when(rule == "pixel_null", first(lambda x: x.isNull()))
                .when(rule == "pixel_not_finite",
                      first(lambda x: F.isnan(as_double(x)) | (F.abs(as_double(x)) == float("inf")))))

    def describe(self) -> str:
        """The layout in a few words, for logs and messages."""
        if self.kind == "columns":
            return f"{len(self.columns)} numeric columns {show_columns(self.columns)}"
        return f"{'Vector' if self.kind == 'vector' else 'array'} column {self.columns[0]!r}"


def quoted(name: str) -> Column:
    """The column called ``name``, even when the name holds dots or backticks."""
    from pyspark.sql import functions as F

    return F.col("`" + name.replace("`", "``") + "`")


def show_columns(names: Sequence[str]) -> str:
    """``['pixel0', 'pixel1', ..., 'pixel783']``: a long list of names cut to its ends."""
    if len(names) <= _SHOWN_COLUMNS:
        return str(list(names))
    head, tail = ", ".join(repr(n) for n in names[:3]), repr(names[-1])
    return f"[{head}, ..., {tail}]"


def prefixed_columns(names: Sequence[str], prefix: str, *, key: str = "data.pixel_prefix") -> tuple[str, ...]:
    """The names that are ``prefix`` followed by a number, in numeric order of the number. Pure: names only.

    Raises:
        ConfigError: If no name matches, or two names carry the same number (``pixel1`` and ``pixel01``).
    """
    pattern = re.compile(re.escape(prefix) + r"(\d+)")
    found = sorted((int(m.group(1)), name) for name in names if (m := pattern.fullmatch(name)))
    if not found:
        raise ConfigError(
            f"{key}: columns named {prefix!r} followed by a number ({prefix}0, {prefix}1, ...) hold the features, "
            f"but no column matches {prefix!r}; the columns are {show_columns(sorted(names))}"
            f"{did_you_mean(prefix, names)}"
        )
    numbers = [n for n, _ in found]
    twice = sorted({name for n, name in found if numbers.count(n) > 1})
    if twice:
        raise ConfigError(f"{key}: each number after {prefix!r} must name one column, but {twice} share one")
    return tuple(name for _, name in found)


def feature_names(
    names: Sequence[str], *, feature_columns: Sequence[str] = (), pixel_prefix: str | None = None,
    default: str = PIXELS, key_prefix: str = "data.",
) -> tuple[str, ...]:
    """The columns of a table (``names``) that hold its features, in feature order. Pure: names only.

    Args:
        names: The table's column names.
        feature_columns: Columns named by the user (``data.feature_columns``).
        pixel_prefix: A column-name prefix (``data.pixel_prefix``).
        default: The column used when neither is given.
        key_prefix: Put before the keys in messages (``data.`` for a run config, empty for :func:`hybrid.score.score`).

    Raises:
        ConfigError: If both are given, a named column is missing, or the prefix matches no column.
    """
    fc, pp = f"{key_prefix}feature_columns", f"{key_prefix}pixel_prefix"
    if feature_columns and pixel_prefix is not None:
        raise ConfigError(f"{fc} and {pp} each choose the feature columns, so at most one may be set, but got "
                          f"{fc}={list(feature_columns)} and {pp}={pixel_prefix!r}")
    if pixel_prefix is not None:
        return prefixed_columns(names, pixel_prefix, key=pp)
    if not feature_columns:
        return (default,)
    for i, name in enumerate(feature_columns):
        if name not in names:
            raise ConfigError(f"{fc}[{i}]: column {name!r} is required, but the table has no such column; the "
                              f"columns are {show_columns(sorted(names))}{did_you_mean(name, names)}")
    return tuple(feature_columns)


def resolve_layout(
    schema: StructType, *, feature_columns: Sequence[str] = (), pixel_prefix: str | None = None,
    default: str = PIXELS, length: int | None = None, length_rule: str = "", key_prefix: str = "data.",
    table: str = "train",
) -> FeatureLayout:
    """The layout of ``schema``'s features (driver only: reads the schema, runs no Spark job).

    One column that holds an array or a Vector is that layout; otherwise every feature column must be a number.

    Args:
        schema: The table's schema.
        feature_columns: See :func:`feature_names`.
        pixel_prefix: See :func:`feature_names`.
        default: See :func:`feature_names`.
        length: Values each row must hold; a ``columns`` layout of another count fails here.
        length_rule: Where ``length`` comes from, for the message (``data.image_size=28``).
        key_prefix: See :func:`feature_names`.
        table: The table's name, for messages.

    Raises:
        ConfigError: As :func:`feature_names`; or a column the keys name is not numeric (nor, alone, an array
            of numbers or a Vector); or a ``columns`` layout has other than ``length`` columns.
        DataError: Without the keys: if the ``default`` column is missing or not an array of numbers or a Vector.
    """
    from pyspark.sql import types as T

    types = {f.name: f.dataType for f in schema.fields}
    names = feature_names(list(types), feature_columns=feature_columns, pixel_prefix=pixel_prefix, default=default,
                          key_prefix=key_prefix)
    key = (f"{key_prefix}pixel_prefix" if pixel_prefix is not None
           else f"{key_prefix}feature_columns" if feature_columns else None)
    if len(names) == 1 and pixel_prefix is None:
        (name,) = names
        if name not in types:  # the default column (feature_columns were checked above)
            raise DataError(
                f"table {table!r}: column {name!r} is required (an array of numbers or a Vector), or set "
                f"{key_prefix}feature_columns or {key_prefix}pixel_prefix; the columns are "
                f"{show_columns(sorted(types))}{did_you_mean(name, types)}"
            )
        dtype = types[name]
        if _is_vector(dtype):
            return FeatureLayout("vector", names)
        if isinstance(dtype, T.ArrayType):
            if not isinstance(dtype.elementType, T.NumericType):
                raise (ConfigError if key else DataError)(f"{_where(key, table)}column {name!r} must be an array of numbers, a Vector or a "
                                  f"number, but has type {dtype.simpleString()}")
            return FeatureLayout("array", names)
        if key is None:
            raise DataError(f"table {table!r}: column {name!r} must be an array of numbers, but has type "
                            f"{dtype.simpleString()} (a Vector column is read too; to read other columns set "
                            f"{key_prefix}feature_columns or {key_prefix}pixel_prefix)")
    for name in names:
        dtype = types[name]
        if not isinstance(dtype, T.NumericType):
            raise ConfigError(f"{_where(key, table)}column {name!r} must be numeric (one value per column), but has "
                              f"type {dtype.simpleString()}")
    if length is not None and len(names) != length:
        raise ConfigError(f"{_where(key, table)}{len(names)} columns {show_columns(names)} hold the features, but "
                          f"{length_rule or 'the model'} needs {length} per row")
    return FeatureLayout("columns", names)


def _where(key: str | None, table: str) -> str:
    return f"{key}: table {table!r}: " if key else f"table {table!r}: "


def _is_vector(dtype: DataType) -> bool:
    from pyspark.ml.linalg import VectorUDT
    from pyspark.mllib.linalg import VectorUDT as OldVectorUDT

    return isinstance(dtype, VectorUDT | OldVectorUDT)
