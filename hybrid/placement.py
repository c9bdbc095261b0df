"""Where the work of a run ran, by Ray node id: the ``cluster`` block of ``summary.json``.

On a cluster every stage's work lands on some nodes: Spark executors (RayDP actors), Ray Train
workers, Tune trials. Nodes on one host share an IP, so placement is told by node id only
(``ray.get_runtime_context().get_node_id()``). Three sources:

- each trial's record keeps the node of every epoch (rank 0's ``node_id``, reported by the training
  loop), so ``trials_by_node`` counts the node each trial's last epoch ran on;
- actors a stage started (Spark executors, training workers) are listed from Ray's state API: a
  snapshot of the job's actor ids before the stage, the new ones after it (dead ones included, the
  GCS keeps them);
- the alive nodes with their resources at the end of the run.

The state API needs the Ray dashboard (``ray[default]``); without it, placement is recorded as
unknown with one warning, never a failed run.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from typing import Any

log = logging.getLogger(__name__)

HEAD_RESOURCE = "node:__internal_head__"
"""Ray's own marker resource of the head node (what its state actors ask for to stay on the head)."""
ACTOR_KINDS = {"spark_executors": "RayDPExecutor", "train_workers": "RayTrainWorker"}
"""Placement keys and the actor class name (a substring: RayDP's are Java classes) they count."""
_LIST_LIMIT = 10_000  # the most the state API serves (RAY_MAX_LIMIT_FROM_API_SERVER)


def node_id() -> str:
    """This process's Ray node id (hex)."""
    import ray

    return ray.get_runtime_context().get_node_id()


def nodes() -> list[dict[str, Any]]:
    """The cluster's alive nodes: ``node_id``, ``head`` and ``resources`` (custom ones included)."""
    import ray

    out = []
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        resources = {k: float(v) for k, v in node.get("Resources", {}).items() if not k.startswith("node:")}
        out.append({"node_id": node["NodeID"], "head": HEAD_RESOURCE in node.get("Resources", {}),
                    "resources": dict(sorted(resources.items()))})
    return sorted(out, key=lambda n: (not n["head"], n["node_id"]))


def job_actors() -> dict[str, tuple[str, str]] | None:
    """The actors this job's work made, dead or alive: ``{actor_id: (class_name, node_id)}``; None if the
    state API fails.

    This job's own actors, plus RayDP's executors of any job: RayDP starts Spark's app master and executors
    from a Java driver of its own, a job of its own (callers count only the executors new since a snapshot).
    """
    import ray
    from ray.util.state import list_actors

    context = ray.get_runtime_context()
    job = context.get_job_id()
    try:  # the address: with several Rays on one host the state API cannot guess which is ours
        actors = list_actors(address=context.gcs_address, limit=_LIST_LIMIT, detail=True,
                             raise_on_missing_output=False)
    except Exception as err:  # the dashboard is down or absent: placement is unknown, the run goes on
        log.warning("placement: Ray's state API did not answer (%s); node placement not recorded", err)
        return None
    executor = ACTOR_KINDS["spark_executors"]
    return {a.actor_id: (a.class_name or "", a.node_id or "") for a in actors
            if a.job_id == job or executor in (a.class_name or "")}


def count_by_node(actors: Iterable[tuple[str, str]]) -> dict[str, dict[str, int]]:
    """``{placement key: {node_id: n}}`` for the actor kinds of :data:`ACTOR_KINDS`."""
    actors = list(actors)  # read once per kind below
    out: dict[str, dict[str, int]] = {}
    for key, cls in ACTOR_KINDS.items():
        counts = Counter(node for name, node in actors if cls in name and node)
        if counts:
            out[key] = dict(sorted(counts.items()))
    return out


class StagePlacement:
    """What one stage started between :meth:`start` and :meth:`stop`: actors by kind and node, and the nodes."""

    def __init__(self) -> None:
        self.before: dict[str, tuple[str, str]] | None = None

    def start(self) -> None:
        self.before = job_actors()

    def stop(self) -> dict[str, Any]:
        """``{"nodes": [...], "spark_executors": {node: n}, "train_workers": {...}}``; counts None if unknown."""
        after = job_actors()
        out: dict[str, Any] = {"nodes": nodes()}
        if self.before is None or after is None:
            return {**out, "actors": None}
        return {**out, "actors": count_by_node(v for k, v in after.items() if k not in self.before)}


def epoch_nodes(history: Iterable[dict[str, Any]]) -> list[str]:
    """The nodes a trial's epochs ran on, in order, each run of epochs on one node named once."""
    out: list[str] = []
    for row in history:
        node = row.get("node_id")
        if node and (not out or out[-1] != node):
            out.append(node)
    return out


def trials_by_node(trials: Iterable[dict[str, Any]]) -> dict[str, int]:
    """How many trials ran their last epoch on each node (``nodes`` of each trial, see :func:`epoch_nodes`)."""
    counts = Counter(trial["nodes"][-1] for trial in trials if trial.get("nodes"))
    return dict(sorted(counts.items()))


def cluster_block(stage_placements: dict[str, dict[str, Any]], trials: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The ``cluster`` block of ``summary.json`` from each stage's :meth:`StagePlacement.stop` (in run order).

    ``nodes`` are those alive when the last stage ran; ``<kind>_by_node`` sum the stages (None when
    Ray's state API could not tell); ``trials_by_node`` comes from the trial records.
    """
    block: dict[str, Any] = {"nodes": None}
    for placement in stage_placements.values():
        if placement.get("nodes"):
            block["nodes"] = placement["nodes"]
    block["trials_by_node"] = trials_by_node(trials)
    for key in ACTOR_KINDS:
        known = [p["actors"] for p in stage_placements.values() if p.get("actors") is not None]
        total: Counter[str] = Counter()
        for actors in known:
            total.update(actors.get(key, {}))
        block[f"{key}_by_node"] = dict(sorted(total.items())) if known else None
    block["by_stage"] = {stage: p.get("actors") for stage, p in stage_placements.items()}
    return block
