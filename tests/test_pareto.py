"""hybrid.pareto: objectives, the front, the selection rule, their config keys, and the report's Pareto chart."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
import yaml

from hybrid.config import check_before_start, check_wired, config_from_dict
from hybrid.errors import ConfigError, SelectionError
from hybrid.pareto import (
    Objective,
    SelectionRule,
    default_rule,
    knee,
    parse_constraint,
    parse_objectives,
    parse_selection,
    pareto_front,
    select,
)

ACC, LAT, SIZE = Objective("val_accuracy", "max"), Objective("latency_ms", "min"), Objective("size_bytes", "min")


def pt(name: str, acc: float, lat: float, size: float = 1000.0) -> dict[str, Any]:
    return {"id": name, "val_accuracy": acc, "latency_ms": lat, "size_bytes": size}


def ids(front, group: str = "front") -> list[str]:
    return [front.points[i]["id"] for i in getattr(front, group)]


# ---------------------------------------------------------------- objectives


def test_both_forms_of_objectives_parse_to_the_same() -> None:
    long = parse_objectives([{"metric": "val_accuracy", "mode": "max"}, {"metric": "latency_ms", "mode": "min"}])
    short = parse_objectives([{"val_accuracy": "max"}, {"latency_ms": "min"}])
    assert long == short == (ACC, LAT)
    assert parse_objectives([]) == ()


@pytest.mark.parametrize(
    ("raw", "expect"),
    [
        ("val_accuracy", "must be a list"),
        ([["val_accuracy", "max"]], "objectives[0] must be a mapping"),
        ([{"val_accuracy": "max", "latency_ms": "min"}], "objectives[0] must name one metric"),
        ([{"metric": "val_accuracy"}], "must give both metric and mode"),
        ([{"metric": "val_accuracy", "mode": "max", "weight": 2}], "unknown config key 'objectives[0].weight'"),
        ([{"val_accuracy": "maximum"}], "mode of val_accuracy must be one of ['min', 'max'], but got 'maximum'"),
        ([{"val_accuracy": "max"}, {"val_accuracy": "max"}], "'val_accuracy' appears 2 times"),
    ],
)
def test_bad_objectives_name_the_entry_and_the_value(raw: Any, expect: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_objectives(raw)
    assert expect in str(err.value)


# ---------------------------------------------------------------- the front


def test_front_keeps_exactly_the_non_dominated_points() -> None:
    points = [pt("a", 0.90, 2.0), pt("b", 0.85, 1.0), pt("c", 0.84, 1.5), pt("d", 0.95, 4.0), pt("e", 0.90, 3.0)]
    front = pareto_front(points, [ACC, LAT])
    assert ids(front) == ["a", "b", "d"]  # c: b beats it on both; e: a ties accuracy and is faster
    assert ids(front, "dominated") == ["c", "e"] and front.excluded == ()


def test_modes_decide_the_direction() -> None:
    points = [pt("fast", 0.8, 1.0), pt("slow", 0.8, 2.0)]
    assert ids(pareto_front(points, [LAT])) == ["fast"]
    assert ids(pareto_front(points, [Objective("latency_ms", "max")])) == ["slow"]
    assert ids(pareto_front([pt("lo", 0.7, 1.0), pt("hi", 0.9, 1.0)], [ACC])) == ["hi"]
    assert ids(pareto_front([pt("lo", 0.7, 1.0), pt("hi", 0.9, 1.0)], [Objective("val_accuracy", "min")])) == ["lo"]


def test_duplicates_and_ties_stay_on_the_front_together() -> None:
    points = [pt("a", 0.9, 1.0), pt("a2", 0.9, 1.0), pt("b", 0.8, 0.5), pt("worse", 0.9, 1.5)]
    front = pareto_front(points, [ACC, LAT])
    assert ids(front) == ["a", "a2", "b"] and ids(front, "dominated") == ["worse"]


def test_missing_and_non_finite_metrics_are_excluded_with_reasons() -> None:
    points = [pt("ok", 0.9, 1.0), pt("nan", math.nan, 0.1), {"id": "missing", "val_accuracy": 0.99},
              pt("inf", 0.99, math.inf), {"id": "text", "val_accuracy": "high", "latency_ms": 0.1}]
    front = pareto_front(points, [ACC, LAT])
    assert ids(front) == ["ok"] and front.dominated == ()  # nan would otherwise dominate nothing and stay unseen
    reasons = {points[e.index]["id"]: e.reasons for e in front.excluded}
    assert reasons == {"nan": ("val_accuracy is nan",), "missing": ("latency_ms is missing",),
                       "inf": ("latency_ms is inf",), "text": ("val_accuracy is not a number: 'high'",)}
    record = front.record()
    json.dumps(record, allow_nan=False)  # strict JSON: NaN written as null
    assert [e["point"]["id"] for e in record["excluded"]] == ["nan", "missing", "inf", "text"]
    assert record["excluded"][0]["point"]["val_accuracy"] is None


def test_record_lists_objectives_and_every_point_once() -> None:
    points = [pt("a", 0.9, 2.0), pt("b", 0.8, 1.0), pt("c", 0.7, 3.0)]
    record = pareto_front(points, [ACC, LAT]).record()
    assert record["objectives"] == [{"metric": "val_accuracy", "mode": "max"}, {"metric": "latency_ms", "mode": "min"}]
    assert [p["id"] for p in record["front"]] == ["a", "b"] and [p["id"] for p in record["dominated"]] == ["c"]


# ---------------------------------------------------------------- constraints and the optimize rule


@pytest.mark.parametrize(
    ("text", "value", "holds"),
    [("<= 0.05", 0.05, True), ("<= 0.05", 0.051, False), ("< 0.05", 0.05, False), ("< 1e6", 999_999, True),
     (">= 0.9", 0.9, True), (">= 0.9", 0.89, False), ("> 0.9", 0.9, False), (">0.9", 0.91, True),
     ("  <=  -1.5e-2 ", -0.015, True)],
)
def test_each_operator(text: str, value: float, holds: bool) -> None:
    assert parse_constraint("m", text, key="k").holds(value) is holds


@pytest.mark.parametrize("text", ["0.05", 0.05, "<= abc", "=< 0.05", "== 0.05", "<= inf", "<= nan", "<= 0.05 ms",
                                  "<=", None, "<= 1e999"])
def test_bad_constraints_name_the_key_and_value(text: Any) -> None:
    with pytest.raises(ConfigError) as err:
        parse_selection({"maximize": "val_accuracy", "subject_to": {"latency_ms": text}}, key="compression.select")
    message = str(err.value)
    assert message.startswith("compression.select.subject_to.latency_ms must be a comparison")
    assert repr(text) in message
    if isinstance(text, float):
        assert "'<= 0.05'" in message  # the fix, spelled out


@pytest.mark.parametrize(
    ("raw", "expect"),
    [
        ("kne", "must be knee or a mapping"),
        ({"maximise": "val_accuracy"}, "unknown config key 'select.maximise' (did you mean 'maximize'?)"),
        ({"maximize": "val_accuracy", "minimize": "latency_ms"}, "exactly one of maximize or minimize"),
        ({"subject_to": {"latency_ms": "<= 1"}}, "exactly one of maximize or minimize"),
        ({"maximize": 3}, "select.maximize must name a metric, but got 3"),
        ({"maximize": "val_accuracy", "subject_to": ["latency_ms <= 1"]}, "select.subject_to must be a mapping"),
    ],
)
def test_bad_rules_name_the_key(raw: Any, expect: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_selection(raw)
    assert expect in str(err.value)


def test_rule_round_trips_through_plain_data() -> None:
    for raw in ("knee", {"maximize": "val_accuracy", "subject_to": {"latency_ms": "<= 0.05", "size_bytes": "< 1e6"}},
                {"minimize": "latency_ms"}):
        rule = parse_selection(raw)
        assert parse_selection(yaml.safe_load(yaml.safe_dump(rule.to_config()))) == rule


FRONT = [pt("t0", 0.93, 0.09, 4e6), pt("t1", 0.91, 0.05, 2e6), pt("t2", 0.88, 0.03, 1e6),
         pt("t3", 0.80, 0.01, 5e5), pt("t4", 0.90, 0.06, 3e6)]  # t4 is dominated by t1


def test_maximize_subject_to_constraints() -> None:
    rule = parse_selection({"maximize": "val_accuracy", "subject_to": {"latency_ms": "<= 0.05"}})
    chosen = select(FRONT, [ACC, LAT, SIZE], rule)
    assert chosen.point["id"] == "t1"
    assert chosen.detail == "highest val_accuracy among 3 of 5 candidates meeting latency_ms <= 0.05"
    record = chosen.record()
    json.dumps(record, allow_nan=False)
    assert record["rule"] == {"maximize": "val_accuracy", "subject_to": {"latency_ms": "<= 0.05"}}
    assert record["point"]["id"] == "t1" and record["on_front"] is True
    strict = parse_selection({"maximize": "val_accuracy", "subject_to": {"latency_ms": "< 0.05", "size_bytes": "< 1e6"}})
    assert select(FRONT, [ACC, LAT, SIZE], strict).point["id"] == "t3"
    assert select(FRONT, [ACC, LAT, SIZE], parse_selection({"minimize": "size_bytes"})).point["id"] == "t3"


def test_default_rule_is_the_best_on_the_tune_metric() -> None:
    assert select(FRONT, [ACC], default_rule(ACC)).point["id"] == "t0"
    loss = Objective("val_loss", "min")
    points = [{"id": "a", "val_loss": 0.3}, {"id": "b", "val_loss": 0.2}, {"id": "c", "val_loss": math.nan}]
    chosen = select(points, [loss], default_rule(loss))
    assert chosen.point["id"] == "b" and [e.index for e in chosen.front.excluded] == [2]


def test_ties_on_the_target_go_to_the_undominated_then_the_earliest() -> None:
    points = [pt("slow", 0.9, 0.04), pt("fast", 0.9, 0.03), pt("fast2", 0.9, 0.03)]
    rule = parse_selection({"maximize": "val_accuracy"})
    assert select(points, [ACC, LAT], rule).point["id"] == "fast"


def test_infeasible_rule_names_each_constraint_and_the_best_value_seen() -> None:
    rule = parse_selection({"maximize": "val_accuracy", "subject_to": {"latency_ms": "<= 0.005", "val_accuracy": ">= 0.9"}})
    with pytest.raises(SelectionError) as err:
        select(FRONT, [ACC, LAT], rule)
    message = str(err.value)
    assert "latency_ms <= 0.005 is met by 0 of 5 (best seen 0.01, t3)" in message
    assert "val_accuracy >= 0.9 is met by 3 of 5 (best seen 0.93, t0)" in message
    assert message.startswith("compression.select: no candidate meets every constraint")
    assert [p["id"] for p in err.value.pareto["front"]] == ["t0", "t1", "t2", "t3"]  # still writable to the summary


def test_no_usable_point_is_an_error_not_an_empty_choice() -> None:
    with pytest.raises(SelectionError, match="none of the 2 has every objective's metric .*a: latency_ms is missing"):
        select([{"id": "a", "val_accuracy": 0.9}, pt("b", math.nan, 1.0)], [ACC, LAT], parse_selection("knee"))


def test_rule_must_fit_the_objectives() -> None:
    with pytest.raises(ConfigError, match=r"select.subject_to.latncy_ms must name one of the objectives .* "
                                          r"but got 'latncy_ms' \(did you mean 'latency_ms'\?\)"):
        parse_selection({"maximize": "val_accuracy", "subject_to": {"latncy_ms": "<= 1"}}).check([ACC, LAT])
    with pytest.raises(ConfigError, match="must maximize it, but got {'minimize': 'val_accuracy'}"):
        parse_selection({"minimize": "val_accuracy"}).check([ACC, LAT])
    with pytest.raises(ConfigError, match=r"knee needs exactly two objectives \(tune.objectives\), but got 3"):
        select(FRONT, [ACC, LAT, SIZE], SelectionRule("knee"))


# ---------------------------------------------------------------- the knee


def test_knee_of_a_convex_front() -> None:
    # Accuracy gains flatten while latency doubles: the bend is at (2 ms, 0.90).
    points = [pt("p1", 0.80, 1.0), pt("p2", 0.90, 2.0), pt("p4", 0.93, 4.0), pt("p8", 0.94, 8.0), pt("bad", 0.85, 5.0)]
    chosen = knee(pareto_front(points, [ACC, LAT]))
    assert chosen.point["id"] == "p2" and chosen.detail.startswith("knee: farthest")
    assert chosen.record()["rule"] == "knee"
    # The same front with the objectives the other way round has the same knee.
    assert knee(pareto_front(points, [LAT, ACC])).point["id"] == "p2"


def test_knee_of_one_point_is_that_point() -> None:
    chosen = select([pt("only", 0.9, 1.0), pt("worse", 0.8, 2.0)], [ACC, LAT], parse_selection("knee"))
    assert chosen.point["id"] == "only" and chosen.detail == "knee: the only point on the front"


def test_knee_without_a_bend_falls_back_to_the_best_on_the_first_objective() -> None:
    two = [pt("fast", 0.8, 1.0), pt("accurate", 0.9, 2.0)]
    assert select(two, [ACC, LAT], parse_selection("knee")).point["id"] == "accurate"
    assert select(two, [LAT, ACC], parse_selection("knee")).point["id"] == "fast"
    straight = [pt("a", 0.8, 1.0), pt("b", 0.85, 1.5), pt("c", 0.9, 2.0)]
    assert select(straight, [ACC, LAT], parse_selection("knee")).point["id"] == "c"
    concave = [pt("a", 0.8, 1.0), pt("b", 0.81, 1.9), pt("c", 0.9, 2.0)]
    chosen = select(concave, [ACC, LAT], parse_selection("knee"))
    assert chosen.point["id"] == "c" and "no point lies beyond the line" in chosen.detail


def test_knee_of_duplicates_is_the_earliest() -> None:
    points = [pt("worse", 0.7, 3.0), pt("a", 0.9, 1.0), pt("a2", 0.9, 1.0)]
    assert select(points, [ACC, LAT], parse_selection("knee")).point["id"] == "a"


# ---------------------------------------------------------------- config keys


def test_single_metric_config_is_unchanged() -> None:
    config = config_from_dict({})
    assert config.tune.objectives == () and config.compression.select is None
    assert config.tune.resolved_objectives == (ACC,) and not config.tune.multi_objective
    loss = config_from_dict({"tune": {"metric": "val_loss"}})
    assert loss.tune.resolved_objectives == (Objective("val_loss", "min"),) and loss.tune.mode == "min"


def test_objectives_and_select_load_and_round_trip() -> None:
    raw = {"tune": {"objectives": [{"val_accuracy": "max"}, {"metric": "latency_ms", "mode": "min"},
                                   {"size_bytes": "min"}, {"params": "min"}]},
           "compression": {"select": {"maximize": "val_accuracy", "subject_to": {"latency_ms": "<= 0.05"}}}}
    config = config_from_dict(raw)
    assert config.tune.objectives[:2] == (ACC, LAT) and config.tune.multi_objective
    assert config.compression.rule(ACC).constraints[0].bound == 0.05
    data = yaml.safe_load(yaml.safe_dump(config.to_dict()))
    assert data["tune"]["objectives"][1] == {"metric": "latency_ms", "mode": "min"}
    assert config_from_dict(data) == config
    knee_config = config_from_dict({"tune": {"objectives": [{"val_accuracy": "max"}, {"latency_ms": "min"}]},
                                    "compression": {"select": "knee"}})
    assert knee_config.compression.rule(ACC) == SelectionRule("knee")


@pytest.mark.parametrize(
    ("raw", "expect"),
    [
        ({"tune": {"objectives": "val_accuracy"}}, "tune.objectives must be a list"),
        ({"tune": {"objectives": [{"latency": "min"}]}}, "tune.objectives[0] must name one of"),
        ({"tune": {"objectives": [{"val_accuracy": "max"}, {"latency_ms": "max"}]}},
         "tune.objectives[1]: latency_ms can only be minimised, but got mode 'max'"),
        ({"tune": {"objectives": [{"val_loss": "min"}, {"latency_ms": "min"}]}},
         "tune.objectives must include metric='val_accuracy' (ASHA stops trials on it)"),
        ({"tune": {"objectives": [{"val_accuracy": "max"}, {"val_f1": "max"}]}},
         "tune.objectives[1] must be one of ['val_accuracy', 'val_macro_f1'"),
        ({"compression": {"select": {"maximize": "val_accuracy", "subject_to": {"latency_ms": "<= 0.05"}}}},
         "compression.select.subject_to.latency_ms must name one of the objectives ['val_accuracy']"),
        ({"compression": {"select": {"maximize": "val_accuracy", "subject_to": {"latency_ms": "fast"}}}},
         "compression.select.subject_to.latency_ms must be a comparison"),
        ({"compression": {"select": "knee"}}, "compression.select: knee needs exactly two objectives"),
        ({"compression": {"selct": "knee"}}, "unknown config key 'compression.selct' (did you mean 'select'?)"),
    ],
)
def test_bad_objective_configs_name_the_key(raw: dict[str, Any], expect: str) -> None:
    with pytest.raises(ConfigError) as err:
        config_from_dict(raw)
    assert expect in str(err.value)


def test_a_run_refuses_what_it_would_ignore() -> None:
    multi = config_from_dict({"tune": {"objectives": [{"val_accuracy": "max"}, {"latency_ms": "min"}]}})
    check_wired(multi)  # several objectives are run by the tune
    chosen = config_from_dict({"compression": {"select": {"maximize": "val_accuracy"}}})
    with pytest.raises(ConfigError, match="compression.select picks among compressed candidates, which only a "
                                          "compression search makes"):
        check_before_start(chosen)
