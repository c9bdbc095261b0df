"""Multi-objective choice of the shipped model: objectives, the Pareto front, and the rule that picks one point.

Pure (no torch, no Ray): numbers in, a choice and plain records out. A *point* is a mapping of metric values
(``{"id": "t0003", "val_accuracy": 0.91, "latency_ms": 0.04, "size_bytes": 120_000}``); its optional ``id``
names it in messages and records. Which points exist and how they are measured (after int8) is the caller's.

- :func:`parse_objectives` reads ``tune.objectives`` (``[{metric: val_accuracy, mode: max}, ...]`` or the
  short ``[{val_accuracy: max}, ...]``).
- :func:`pareto_front` splits points into the non-dominated front, the dominated rest, and those it cannot
  place (a metric missing, NaN or infinite), each with its reasons: nothing is dropped silently.
- :func:`parse_selection` reads ``compression.select``; :func:`select` applies it and returns a
  :class:`Selection` whose records are ``summary.json``'s ``compression.pareto`` and ``compression.chosen``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from hybrid._dataclass_io import require, show
from hybrid.errors import ConfigError, SelectionError, did_you_mean

Mode = Literal["min", "max"]
Op = Literal["<=", "<", ">=", ">"]
_MODES = ("min", "max")
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_CONSTRAINT = re.compile(rf"\s*(<=|>=|<|>)\s*({_NUMBER})\s*")
_DIRECTIONS = {"maximize": "max", "minimize": "min"}
_KNEE_TOL = 1e-12


@dataclass(frozen=True)
class Objective:
    """One metric to optimise and its direction."""

    metric: str
    """Name of the metric in each point (``val_accuracy``, ``latency_ms``, ``size_bytes``, ``params``...)."""
    mode: Mode
    """``max``: higher is better; ``min``: lower is better."""

    def __post_init__(self) -> None:
        require(isinstance(self.metric, str) and bool(self.metric),
                f"metric must be a non-empty name, but got {show(self.metric)}")
        require(self.mode in _MODES, f"mode of {self.metric} must be one of {list(_MODES)}, but got {show(self.mode)}")

    def oriented(self, value: float) -> float:
        """``value`` turned so that higher is always better."""
        return value if self.mode == "max" else -value


def parse_objectives(raw: Any, *, key: str = "objectives") -> tuple[Objective, ...]:
    """Objectives from plain data: a list of ``{metric: m, mode: d}`` or ``{m: d}`` (also :class:`Objective`).

    An empty list gives ``()``: the caller's single-metric default.

    Raises:
        ConfigError: Naming ``key[i]`` for an entry that is not one of the two forms, a bad mode, or a metric
            given twice.
    """
    if isinstance(raw, str | bytes) or not isinstance(raw, Sequence):
        raise ConfigError(f"{key} must be a list such as [{{val_accuracy: max}}, {{latency_ms: min}}], "
                          f"but got {show(raw)}")
    out: list[Objective] = []
    for i, entry in enumerate(raw):
        where = f"{key}[{i}]"
        if isinstance(entry, Objective):
            out.append(entry)
            continue
        if not isinstance(entry, Mapping):
            raise ConfigError(
                f"{where} must be a mapping ({{metric: m, mode: max}} or {{m: max}}), but got {show(entry)}"
            )
        if "metric" in entry or "mode" in entry:
            extra = [k for k in entry if k not in ("metric", "mode")]
            if extra:
                hint = did_you_mean(str(extra[0]), ("metric", "mode"))
                raise ConfigError(f"unknown config key '{where}.{extra[0]}'{hint}")
            if "metric" not in entry or "mode" not in entry:
                raise ConfigError(f"{where} must give both metric and mode, but got {show(dict(entry))}")
            metric, mode = entry["metric"], entry["mode"]
        elif len(entry) == 1:
            ((metric, mode),) = entry.items()
        else:
            raise ConfigError(f"{where} must name one metric ({{m: max}}), but got {show(dict(entry))}")
        if not isinstance(metric, str) or not metric:
            raise ConfigError(f"{where}: the metric must be a non-empty name, but got {show(metric)}")
        if mode not in _MODES:
            raise ConfigError(f"{where}: the mode of {metric} must be one of {list(_MODES)}, but got {show(mode)}"
                              f"{did_you_mean(str(mode), _MODES)}")
        out.append(Objective(metric, mode))
    names = [o.metric for o in out]
    for name in names:
        require(names.count(name) == 1,
                f"{key} must name each metric once, but {name!r} appears {names.count(name)} times")
    return tuple(out)


# ---------------------------------------------------------------- the front


@dataclass(frozen=True)
class Excluded:
    """A point that could not be placed on or off the front."""

    index: int
    """Its position in the input."""
    reasons: tuple[str, ...]
    """One line per unusable metric (``latency_ms is missing``, ``val_accuracy is nan``)."""


@dataclass(frozen=True)
class ParetoFront:
    """Every input point, split three ways. Indices refer to :attr:`points` and keep input order."""

    objectives: tuple[Objective, ...]
    points: tuple[Mapping[str, Any], ...]
    front: tuple[int, ...]
    """Non-dominated points. Points with equal values on every objective are all on it (or all off)."""
    dominated: tuple[int, ...]
    """Points some other point beats on one objective while matching or beating it on the rest."""
    excluded: tuple[Excluded, ...]
    """Points with a missing or non-finite objective value: neither on the front nor dominated."""

    def values(self, index: int) -> tuple[float, ...]:
        """The objective values of point ``index`` (placed points only)."""
        return tuple(float(self.points[index][o.metric]) for o in self.objectives)

    def record(self) -> dict[str, Any]:
        """``summary.json``'s ``compression.pareto``: objectives, and the points of each group as plain data."""
        return {
            "objectives": [{"metric": o.metric, "mode": o.mode} for o in self.objectives],
            "front": [json_safe(self.points[i]) for i in self.front],
            "dominated": [json_safe(self.points[i]) for i in self.dominated],
            "excluded": [{"point": json_safe(self.points[e.index]), "reasons": list(e.reasons)} for e in self.excluded],
        }


def _problems(point: Mapping[str, Any], objectives: Sequence[Objective]) -> tuple[str, ...]:
    out = []
    for o in objectives:
        value = point.get(o.metric) if isinstance(point, Mapping) else None
        if value is None:
            out.append(f"{o.metric} is missing")
        elif isinstance(value, bool) or not isinstance(value, int | float):
            out.append(f"{o.metric} is not a number: {show(value)}")
        elif not math.isfinite(value):
            out.append(f"{o.metric} is {value}")
    return tuple(out)


def dominates(a: Sequence[float], b: Sequence[float], objectives: Sequence[Objective]) -> bool:
    """Whether values ``a`` are at least as good as ``b`` on every objective and better on one."""
    pairs = [(o.oriented(x), o.oriented(y)) for o, x, y in zip(objectives, a, b, strict=True)]
    return all(x >= y for x, y in pairs) and any(x > y for x, y in pairs)


def pareto_front(points: Sequence[Mapping[str, Any]], objectives: Sequence[Objective]) -> ParetoFront:
    """Split ``points`` into the non-dominated front, the dominated, and the excluded (with reasons).

    Args:
        points: Mappings holding at least every objective's metric (numbers); other keys are carried along.
        objectives: At least one.

    Raises:
        ValueError: If ``objectives`` is empty (a caller's bug, not a user's input).
    """
    if not objectives:
        raise ValueError("pareto_front needs at least one objective")
    objectives = tuple(objectives)
    points = tuple(points)
    excluded, placed = [], []
    for i, point in enumerate(points):
        problems = _problems(point, objectives)
        if problems:
            excluded.append(Excluded(i, problems))
        else:
            placed.append(i)
    values = {i: tuple(float(points[i][o.metric]) for o in objectives) for i in placed}
    front = tuple(i for i in placed if not any(dominates(values[j], values[i], objectives) for j in placed))
    dominated = tuple(i for i in placed if i not in front)
    return ParetoFront(objectives, points, front, dominated, tuple(excluded))


# ---------------------------------------------------------------- the rule


@dataclass(frozen=True)
class Constraint:
    """``metric op bound``, e.g. ``latency_ms <= 0.05``."""

    metric: str
    op: Op
    bound: float

    def holds(self, value: float) -> bool:
        """Whether ``value`` meets the constraint."""
        return {"<=": value <= self.bound, "<": value < self.bound,
                ">=": value >= self.bound, ">": value > self.bound}[self.op]

    @property
    def text(self) -> str:
        """The constraint as written in the config (``<= 0.05``)."""
        return f"{self.op} {self.bound!r}"  # repr: parses back to the same float

    def __str__(self) -> str:
        return f"{self.metric} {self.text}"


def parse_constraint(metric: str, raw: Any, *, key: str) -> Constraint:
    """``Constraint(metric, op, bound)`` from text such as ``"<= 0.05"``, ``">= 0.9"`` or ``"< 1e6"``.

    Raises:
        ConfigError: Naming ``key`` unless the text is exactly an operator (``<=``, ``<``, ``>=``, ``>``) and
            a finite number.
    """
    match = _CONSTRAINT.fullmatch(raw) if isinstance(raw, str) else None
    bound = float(match.group(2)) if match else math.nan
    if match is None or not math.isfinite(bound):
        hint = f" (write {show(f'<= {raw}')} or {show(f'>= {raw}')})" if isinstance(raw, int | float) else ""
        raise ConfigError(f"{key} must be a comparison, one of <=, <, >=, > then a finite number (such as "
                          f"'<= 0.05'; quote it in YAML), but got {show(raw)}{hint}")
    return Constraint(metric, match.group(1), bound)  # type: ignore[arg-type]


@dataclass(frozen=True)
class SelectionRule:
    """How one point of the front is picked to ship.

    ``optimize``: the best point on ``target`` among those meeting every constraint. ``knee``: the knee of a
    two-objective front (see :func:`knee`).
    """

    kind: Literal["optimize", "knee"]
    target: Objective | None = None
    """``optimize`` only: the metric and direction (``maximize`` is ``max``)."""
    constraints: tuple[Constraint, ...] = ()
    """``optimize`` only: every one must hold for a point to be chosen."""

    def to_config(self) -> str | dict[str, Any]:
        """The rule as plain config data (``knee`` or the ``maximize``/``subject_to`` mapping); it parses back."""
        if self.kind == "knee" or self.target is None:
            return "knee"
        out: dict[str, Any] = {"maximize" if self.target.mode == "max" else "minimize": self.target.metric}
        if self.constraints:
            out["subject_to"] = {c.metric: c.text for c in self.constraints}
        return out

    def metrics(self) -> list[tuple[str, str]]:
        """``(config key suffix, metric)`` of every metric the rule names."""
        if self.target is None:
            return []
        direction = "maximize" if self.target.mode == "max" else "minimize"
        return [(direction, self.target.metric), *((f"subject_to.{c.metric}", c.metric) for c in self.constraints)]

    def check(self, objectives: Sequence[Objective], *, key: str = "select") -> None:
        """The rule fits ``objectives``: it names only their metrics, in their direction; a knee has two.

        Raises:
            ConfigError: Naming ``key`` and the part of the rule that does not fit.
        """
        names = [o.metric for o in objectives]
        if self.kind == "knee":
            require(len(objectives) == 2,
                    f"{key}: knee needs exactly two objectives (tune.objectives), but got {len(objectives)} "
                    f"({names}); with more, use maximize/minimize with subject_to")
            return
        for suffix, metric in self.metrics():
            require(metric in names, f"{key}.{suffix} must name one of the objectives {names} "
                                     f"(tune.objectives), but got {metric!r}{did_you_mean(metric, names)}")
        target = self.target
        if target is not None:
            mode = next(o.mode for o in objectives if o.metric == target.metric)
            require(mode == target.mode, f"{key}: {target.metric} is an objective with mode {mode!r}, so the rule "
                                         f"must {'maximize' if mode == 'max' else 'minimize'} it, but got "
                                         f"{show(self.to_config())}")


def default_rule(objective: Objective) -> SelectionRule:
    """The rule when none is configured: the best point on ``objective`` (``tune.metric``, as today)."""
    return SelectionRule("optimize", objective)


def parse_selection(raw: Any, *, key: str = "select") -> SelectionRule:
    """``knee``, or ``{maximize|minimize: metric, subject_to: {metric: "<= 0.05", ...}}``.

    Raises:
        ConfigError: Naming ``key`` (or ``key.subject_to.<metric>``), the rule and the value.
    """
    if isinstance(raw, SelectionRule):
        return raw
    if raw == "knee":
        return SelectionRule("knee")
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{key} must be knee or a mapping such as {{maximize: val_accuracy, subject_to: "
                          f"{{latency_ms: '<= 0.05'}}}}, but got {show(raw)}{did_you_mean(str(raw), ['knee'])}")
    allowed = ("maximize", "minimize", "subject_to")
    for k in raw:
        if k not in allowed:
            raise ConfigError(f"unknown config key '{key}.{k}'{did_you_mean(str(k), allowed)}")
    directions = [k for k in _DIRECTIONS if k in raw]
    require(len(directions) == 1, f"{key} must have exactly one of maximize or minimize, but got {show(dict(raw))}")
    direction = directions[0]
    metric = raw[direction]
    require(isinstance(metric, str) and bool(metric),
            f"{key}.{direction} must name a metric, but got {show(metric)}")
    subject_to = raw.get("subject_to") or {}
    if not isinstance(subject_to, Mapping):
        raise ConfigError(f"{key}.subject_to must be a mapping of metric to comparison (latency_ms: '<= 0.05'), "
                          f"but got {show(subject_to)}")
    constraints = tuple(parse_constraint(str(m), text, key=f"{key}.subject_to.{m}") for m, text in subject_to.items())
    return SelectionRule("optimize", Objective(metric, _DIRECTIONS[direction]), constraints)  # type: ignore[arg-type]


# ---------------------------------------------------------------- choosing


@dataclass(frozen=True)
class Selection:
    """The chosen point, why, and the front it came from."""

    index: int
    """Position of the chosen point in ``front.points``."""
    rule: SelectionRule
    front: ParetoFront
    detail: str
    """One line saying why this point (for logs and the report)."""

    @property
    def point(self) -> Mapping[str, Any]:
        """The chosen point."""
        return self.front.points[self.index]

    def record(self) -> dict[str, Any]:
        """``summary.json``'s ``compression.chosen``: the point, the rule as configured, and why."""
        return {"point": json_safe(self.point), "rule": self.rule.to_config(), "on_front": self.index in self.front.front,
                "detail": self.detail}


def select(points: Sequence[Mapping[str, Any]], objectives: Sequence[Objective], rule: SelectionRule,
           *, key: str = "compression.select") -> Selection:
    """Build the front of ``points`` and pick one point by ``rule``.

    ``optimize`` considers every placed point (not only the front): among those meeting every constraint, the
    best on the target; ties go to a point no other feasible point dominates, then to the earliest in input
    order. With constraints that bound a metric on its good side (``latency_ms <= x`` for a minimised
    latency), the chosen point is always on the front; ``on_front`` in the record says whether it is.

    Raises:
        ConfigError: If ``rule`` does not fit ``objectives`` (see :meth:`SelectionRule.check`).
        SelectionError: If no point has every objective's metric, or none meets the constraints; the
            message names each constraint, how many points meet it and the best value seen. The error
            carries the front's record, so the caller can still write it.
    """
    rule.check(objectives, key=key)
    front = pareto_front(points, objectives)
    if not front.front:
        reasons = "; ".join(f"{_name(front.points[e.index], e.index)}: {', '.join(e.reasons)}"
                            for e in front.excluded[:3])
        raise SelectionError(f"{key}: no candidate can be chosen: none of the {len(front.points)} has every "
                             f"objective's metric{' (' + reasons + ')' if reasons else ''}", pareto=front.record())
    if rule.kind == "knee":
        return knee(front, rule)
    target = rule.target
    if target is None:
        raise ValueError("an optimize rule needs a target")  # a caller's bug: parse_selection always sets one
    placed = sorted(front.front + front.dominated)
    feasible = [i for i in placed if all(c.holds(float(front.points[i][c.metric])) for c in rule.constraints)]
    if not feasible:
        raise SelectionError(_infeasible(front, rule, placed, key), pareto=front.record())
    values = {i: front.values(i) for i in feasible}
    best = max(target.oriented(float(front.points[i][target.metric])) for i in feasible)
    tied = [i for i in feasible if target.oriented(float(front.points[i][target.metric])) == best]
    undominated = [i for i in tied if not any(dominates(values[j], values[i], objectives) for j in feasible)]
    chosen = (undominated or tied)[0]
    word = "highest" if target.mode == "max" else "lowest"
    among = (f"{len(feasible)} of {len(placed)} candidates meeting {', '.join(map(str, rule.constraints))}"
             if rule.constraints else f"{len(placed)} candidates")
    return Selection(chosen, rule, front, f"{word} {target.metric} among {among}")


def _infeasible(front: ParetoFront, rule: SelectionRule, placed: list[int], key: str) -> str:
    parts = []
    for c in rule.constraints:
        good = "min" if c.op in ("<=", "<") else "max"
        pick = (min if good == "min" else max)(placed, key=lambda i: float(front.points[i][c.metric]))
        met = sum(c.holds(float(front.points[i][c.metric])) for i in placed)
        parts.append(f"{c} is met by {met} of {len(placed)} (best seen {float(front.points[pick][c.metric]):g}, "
                     f"{_name(front.points[pick], pick)})")
    return (f"{key}: no candidate meets every constraint of subject_to: {'; '.join(parts)}; relax "
            f"{key}.subject_to or widen the search")


def knee(front: ParetoFront, rule: SelectionRule | None = None) -> Selection:
    """The knee of a two-objective front: the point farthest beyond the line joining its two extremes.

    Each objective is turned so that higher is better and scaled to [0, 1] over the front; the extremes are
    the front's best points on each objective. The knee is the point with the largest distance from the
    line on the side of the ideal point (best on both).

    - One point on the front: that point.
    - Two points, a straight front, or a concave one (no point beyond the line): no knee exists, and the
      choice falls back to the best point on the first objective (``val_accuracy``, usually: the safe one).
    - Ties (equal distance, or duplicate points): the earliest in input order.

    Raises:
        ConfigError: If the front has other than two objectives (a knee of more is not defined here: use
            ``maximize``/``minimize`` with ``subject_to``).
    """
    rule = rule or SelectionRule("knee")
    rule.check(front.objectives, key="compression.select")
    first, second = front.objectives
    ids = list(front.front)
    if len(ids) == 1:
        return Selection(ids[0], rule, front, "knee: the only point on the front")
    turned = {i: (first.oriented(front.values(i)[0]), second.oriented(front.values(i)[1])) for i in ids}
    lows = [min(v[k] for v in turned.values()) for k in (0, 1)]
    spans = [max(v[k] for v in turned.values()) - lows[k] for k in (0, 1)]
    norm = {i: tuple((v[k] - lows[k]) / spans[k] if spans[k] > 0 else 0.0 for k in (0, 1)) for i, v in turned.items()}
    a = max(ids, key=lambda i: (norm[i][0], norm[i][1], -i))  # best on the first objective
    b = max(ids, key=lambda i: (norm[i][1], norm[i][0], -i))
    (ax, ay), (bx, by) = norm[a], norm[b]
    length = math.hypot(bx - ax, by - ay)
    # Signed distance from the line a-b, positive on the side of the ideal point (1, 1).
    distance = {i: ((bx - ax) * (ay - norm[i][1]) - (by - ay) * (ax - norm[i][0])) / length if length > 0 else 0.0
                for i in ids}
    if (bx - ax) * (ay - 1.0) - (by - ay) * (ax - 1.0) < 0:
        distance = {i: -d for i, d in distance.items()}
    far = max(distance.values())
    if far <= _KNEE_TOL:
        return Selection(a, rule, front, f"knee: no point lies beyond the line joining the extremes ({len(ids)} on "
                                         f"the front), so the best on {first.metric}")
    chosen = min(i for i in ids if distance[i] == far)
    return Selection(chosen, rule, front, f"knee: farthest from the line joining the extremes (normalised distance "
                                          f"{far:.3f}, {len(ids)} points on the front)")


def _name(point: Mapping[str, Any], index: int) -> str:
    name = point.get("id") if isinstance(point, Mapping) else None
    return str(name) if name is not None else f"candidate #{index}"


def json_safe(value: Any) -> Any:
    """JSON-safe data: non-finite floats become ``None`` (strict JSON has no NaN), tuples lists."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


@dataclass(frozen=True)
class CompressionConfig:
    """The compression search (issue 11) and which compressed candidate ships.

    With ``search_space`` set, the distill stage becomes a search (:mod:`hybrid.compress`): Optuna proposes
    students and their compression (``distill.*`` and ``quantize.*`` keys), each candidate is distilled,
    quantized to int8 and scored after int8, and ``select`` picks the shipped one from the candidates' front.
    """

    search_space: str | None = None
    """YAML file of Optuna distributions over ``distill.*`` (``width_multiplier``, ``alpha``, ``temperature``,
    ``max_epochs``, ``student.<model field>``) and ``quantize.*`` keys (``backend``, ``mode``, ``per_channel``,
    ``calibration_samples``...), in the format of ``tune.search_space``; relative paths: from the config file.
    ``null``: no search; distill trains the one student of ``distill`` (as before)."""
    num_samples: int = 8
    """Candidates (each one student trained, quantized and measured)."""
    objectives: tuple[Any, ...] = ()
    """What the candidates are ranked on, all measured on the int8 model: ``val_<headline>`` (``val_accuracy``,
    or ``val_f1`` for span models; on the validation split), ``latency_ms`` (ms per sample at one thread, as
    tune trials time it), ``size_bytes`` (the int8 model file) and ``params``. Empty: the headline (max),
    ``latency_ms`` (min) and ``size_bytes`` (min)."""
    max_concurrent: int | None = None
    """Candidates at once; ``null`` sizes it from the cluster's free CPUs, as ``tune.max_concurrent``."""
    seed: int = 0
    """Seed of Optuna's sampler (multi-objective TPE, reseeded per candidate as the tune's)."""
    n_startup_trials: int = 4
    """Random candidates before TPE starts modelling."""
    time_budget_s: float | None = None
    """Stop starting new candidates after this many seconds (``null``: no limit)."""
    select: str | dict[str, Any] | None = None
    """``null``: the best on the first objective (the headline). ``knee``: the knee of a two-objective front.
    Or ``{maximize: val_accuracy, subject_to: {latency_ms: "<= 0.05"}}`` (``minimize`` also; constraints are
    ``<=``, ``<``, ``>=`` or ``>`` and a number, quoted in YAML). Every metric it names must be an objective
    (of the compression search; without one, of ``tune.objectives``). Applied only by a compression search."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "objectives", parse_objectives(self.objectives, key="objectives"))
        for i, objective in enumerate(self.objectives):
            require(objective.metric.startswith("val_") or objective.metric in CANDIDATE_METRICS,
                    f"objectives[{i}] must be val_<headline> or one of {list(CANDIDATE_METRICS)}, but got "
                    f"{objective.metric!r}{did_you_mean(objective.metric, CANDIDATE_METRICS)}")
            mode = "max" if objective.metric.startswith("val_") else "min"
            require(objective.mode == mode, f"objectives[{i}]: {objective.metric} can only be {mode}imised, but "
                                            f"got mode {objective.mode!r}")
        require(self.search_space is None or (isinstance(self.search_space, str) and bool(self.search_space)),
                f"search_space must be a path or null, but got {show(self.search_space)}")
        require(self.num_samples >= 1, f"num_samples must be >= 1, but got {self.num_samples}")
        require(self.max_concurrent is None or self.max_concurrent >= 1,
                f"max_concurrent must be >= 1, but got {self.max_concurrent}")
        require(self.n_startup_trials >= 1, f"n_startup_trials must be >= 1, but got {self.n_startup_trials}")
        require(self.time_budget_s is None or self.time_budget_s > 0,
                f"time_budget_s must be > 0, but got {self.time_budget_s}")
        if self.select is not None:
            parse_selection(self.select, key="select")

    @property
    def searching(self) -> bool:
        """Whether the distill stage runs the compression search."""
        return self.search_space is not None

    def resolved_objectives(self, headline: str) -> tuple[Objective, ...]:
        """``objectives``, or the default: ``val_<headline>`` (max), ``latency_ms`` and ``size_bytes`` (min)."""
        return self.objectives or (Objective(f"val_{headline}", "max"), Objective("latency_ms", "min"),
                                   Objective("size_bytes", "min"))

    def rule(self, objective: Objective) -> SelectionRule:
        """The configured rule, or the default (the best on ``objective``)."""
        return default_rule(objective) if self.select is None else parse_selection(self.select, key="select")


CANDIDATE_METRICS = ("latency_ms", "size_bytes", "params")
"""What a compressed candidate is measured on besides its validation headline (all minimised)."""
