"""What the Ray cluster's nodes hold, and whether a request can be placed on one of them.

Ray places an actor (or a placement-group bundle) on ONE node. A request sized from the cluster's
total (``ray.cluster_resources()``) can fit no node, and then it waits forever: the autoscaler only
logs "No available node types can fulfill resource request". Every place hybrid asks Ray for
resources first calls :func:`check_fits`, which fails at once with one line instead.

The maths is pure (it takes a list of :class:`Node`); :func:`inventory` reads the live cluster. This
module imports no stage (pipeline, tune, train, distill) so that every stage can import it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from hybrid.errors import ClusterFitError

if TYPE_CHECKING:
    from hybrid.config import TrainConfig

_BYTES = ("memory", "object_store_memory")
"""Resources Ray counts in bytes (shown in GiB)."""


@dataclass(frozen=True)
class Node:
    """One alive Ray node: its id and what it holds in all (``total``) and right now (``free``)."""

    node_id: str
    total: dict[str, float]
    """Resources the node was started with (``CPU``, ``GPU``, ``memory`` in bytes, custom names)."""
    free: dict[str, float] = field(default_factory=dict)
    """Resources not held by any task, actor or placement group at the time of reading."""


def _plain(resources: Mapping[str, float]) -> dict[str, float]:
    # Ray's bookkeeping names (``node:<ip>``, ``node:__internal_head__``, ``<name>_group_<pg id>``) are not
    # something a user asks for.
    return {k: float(v) for k, v in resources.items() if not k.startswith("node:") and "_group_" not in k}


def inventory() -> list[Node]:
    """The alive nodes of the connected Ray cluster with their total and free resources.

    Raises:
        RuntimeError: If Ray is not initialised (from Ray).
    """
    import ray
    from ray._private.state import available_resources_per_node

    free = available_resources_per_node()
    return [
        Node(node_id=n["NodeID"], total=_plain(n.get("Resources", {})), free=_plain(free.get(n["NodeID"], {})))
        for n in ray.nodes()
        if n.get("Alive")
    ]


def worker_request(*, cpus: float, use_gpu: bool = False) -> dict[str, float]:
    """What one Ray Train worker asks for (``resources_per_worker``): ``cpus`` CPUs and one GPU if used."""
    return {"CPU": float(cpus), **({"GPU": 1.0} if use_gpu else {})}


def units_that_fit(request: Mapping[str, float], resources: Mapping[str, float]) -> int:
    """How many copies of ``request`` fit in ``resources`` (one node's); a request of only zeros fits once."""
    asked = {k: v for k, v in request.items() if v > 0}
    if not asked:
        return 1
    return min(math.floor(resources.get(k, 0.0) / v + 1e-9) for k, v in asked.items())


def _closeness(request: Mapping[str, float], resources: Mapping[str, float]) -> tuple[float, float]:
    # The share of the request the node could host (the scarcest resource decides), then its size.
    asked = {k: v for k, v in request.items() if v > 0}
    share = min((resources.get(k, 0.0) / v for k, v in asked.items()), default=math.inf)
    return share, sum(resources.get(k, 0.0) for k in asked)


def largest_node(nodes: Sequence[Node], request: Mapping[str, float], *, free: bool = False) -> Node | None:
    """The node that comes closest to holding ``request`` (by its scarcest resource); ``None`` if no node."""
    if not nodes:
        return None
    return max(nodes, key=lambda n: _closeness(request, n.free if free else n.total))


def largest_node_free(resource: str = "CPU", nodes: Sequence[Node] | None = None) -> float:
    """The most of ``resource`` free on any one node (0 when no node has any)."""
    nodes = inventory() if nodes is None else nodes
    return max((n.free.get(resource, 0.0) for n in nodes), default=0.0)


def cpus_per_node_free(nodes: Sequence[Node] | None = None) -> int:
    """The most CPUs free on any one node, at least 1: what one actor or one worker can be given."""
    return max(1, int(largest_node_free("CPU", nodes)))


def sets_that_fit(request: Mapping[str, float], *, count: int, nodes: Sequence[Node], free: bool = True) -> int:
    """How many sets of ``count`` x ``request`` the nodes hold at once (each copy on one node).

    Each copy must sit on a single node; a set's copies may span nodes (Ray Train's default PACK
    placement is a preference, not a rule), so this is the copies that fit, node by node, divided by
    ``count``.
    """
    if count < 1:
        raise ValueError(f"count must be >= 1, but got {count}")
    copies = sum(units_that_fit(request, n.free if free else n.total) for n in nodes)
    return copies // count


def _show(resources: Mapping[str, float]) -> str:
    shown = {k: (f"{v / 1024**3:.1f} GiB" if k in _BYTES else float(v)) for k, v in resources.items()}
    return repr(shown)


def check_workers_fit(
    stage: str, train: TrainConfig, *, what: str, nodes: Sequence[Node] | None = None,
    fix: str = "lower train.cpus_per_worker or train.num_workers",
) -> None:
    """:func:`check_fits` for ``train.num_workers`` Ray Train workers of ``train.cpus_per_worker`` CPUs (and a
    GPU each if ``train.use_gpu``)."""
    check_fits(stage, worker_request(cpus=train.cpus_per_worker, use_gpu=train.use_gpu), count=train.num_workers,
               what=what, nodes=nodes, fix=fix)


def check_fits(
    stage: str,
    request: Mapping[str, float],
    *,
    count: int = 1,
    what: str,
    nodes: Sequence[Node] | None = None,
    fix: str = "lower the request or add a node that large",
) -> None:
    """Fail at once if ``count`` copies of ``request`` cannot each be placed on one alive node.

    Checked against the nodes' totals (what they hold when idle), so a request that only waits for
    other work to finish passes; nodes an autoscaler could still add are not known here.

    Args:
        stage: The stage that asks (``tune``, ``distill``, ``spark``...), first in the message.
        request: Resources ONE actor, worker or bundle asks for, e.g. ``{"CPU": 2.0}``.
        count: How many such copies are needed at the same time.
        what: Who asks, e.g. ``"the teacher-logits actor"``.
        nodes: The cluster's nodes; ``None`` reads them from the connected Ray.
        fix: The advice at the end of the message.

    Raises:
        ClusterFitError: If no node holds one copy, or all nodes together hold fewer than ``count``.
    """
    nodes = inventory() if nodes is None else nodes
    asked = {k: float(v) for k, v in request.items() if v > 0}
    if not asked:
        return
    best = largest_node(nodes, asked)
    if best is None:
        raise ClusterFitError(f"{stage}: {what} asks {_show(asked)} but the Ray cluster has no alive node")
    biggest = {k: best.total.get(k, 0.0) for k in asked}
    if units_that_fit(asked, best.total) < 1:
        raise ClusterFitError(
            f"{stage}: {what} asks {_show(asked)} but the largest node has {_show(biggest)} "
            f"({len(nodes)} node{'s' if len(nodes) != 1 else ''}); {fix}"
        )
    held = sets_that_fit(asked, count=1, nodes=nodes, free=False)
    if held < count:
        raise ClusterFitError(
            f"{stage}: {what} needs {count} x {_show(asked)} at once but the {len(nodes)} "
            f"node{'s' if len(nodes) != 1 else ''} hold only {held} (largest {_show(biggest)}); {fix}"
        )
