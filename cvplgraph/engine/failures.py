"""Which task of a failed compute raised: its key, which :func:`task_owners` maps to the node it belongs
to, and the one-line error that names that node (:func:`node_failure`).

dask reports a failed task by re-raising its exception, without the task's key. On dask's local
schedulers the key is read from the traceback: the frames of the task objects being called (a fused
task calls each of its parts, under their own keys) and of the scheduler's ``execute_task``. On a
distributed cluster the scheduler knows which task a failed result is to blame on.
"""

from __future__ import annotations

from typing import Any

import dask
import xarray as xr

from cvplgraph.engine.compile import nodes_in_order
from cvplgraph.engine.lower import Lowered
from cvplgraph.engine.plan import Plan
from cvplgraph.engine.status import Status
from cvplgraph.errors import CvplError, OpFailed, one_line


def _key(key: Any) -> str:
    return str(tuple(key) if isinstance(key, list) else key)  # a key sent as msgpack comes back a list


def local_failed_keys(exc: BaseException) -> list[str]:
    """Keys of the tasks whose frames are in ``exc``'s traceback, innermost first.

    The traceback must not have been shortened (dask's ``admin.traceback.shorten`` removes these frames).
    """
    try:
        from dask._task_spec import GraphNode
    except ImportError:  # pragma: no cover - another dask: the failure is reported without its node
        return []
    keys = []
    tb = exc.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        task = frame.f_locals.get("self")
        if isinstance(task, GraphNode):
            keys.append(_key(task.key))
        elif frame.f_code.co_name == "execute_task" and "key" in frame.f_locals:
            keys.append(_key(frame.f_locals["key"]))
        tb = tb.tb_next
    return keys[::-1]


def cluster_failed_keys(client: Any, futures: list[Any]) -> list[str]:
    """The key of the task the failed ``futures`` are to blame on, as the scheduler says; [] if unknown."""
    failed = [f.key for f in futures if getattr(f, "status", None) == "error"]
    if not failed:
        return []
    try:
        key = client.sync(client.scheduler.get_error_cause, keys=failed)
    except Exception:  # noqa: BLE001 - a scheduler without the handler: the failure is reported without its node
        return []
    return [] if key is None else [_key(key)]


def task_owners(plan: Plan, lowered: Lowered) -> dict[str, str]:
    """Task key (as a string) → the node whose value or cache writes introduced it.

    Nodes are visited upstream first, so a task belongs to the first node whose
    graph holds it (a node's graph includes everything upstream of it). Each
    graph layer is walked once: every block's write shares the whole graph.
    """
    owners: dict[str, str] = {}
    seen: set[str] = set()
    for node in nodes_in_order(plan.graph):
        value = lowered.values.get(node.name)
        if value is None:
            continue
        parts: list[Any] = [value.data if isinstance(value, xr.DataArray) else getattr(value, "frame", None)]
        parts += [getattr(value, "counts", None), *lowered.writes.get(node.name, [])]
        for part in parts:
            if not dask.is_dask_collection(part):
                continue
            graph = part.__dask_graph__()
            for name, layer in getattr(graph, "layers", {"": graph}).items():
                if name and name in seen:
                    continue
                seen.add(name)
                # a layer lists its keys without building its tasks (iterating a Blockwise layer builds them)
                for key in layer.get_output_keys() if hasattr(layer, "get_output_keys") else layer:
                    owners.setdefault(str(key), node.name)
    return owners


def node_failure(plan: Plan, lowered: Lowered, keys: list[str], exc: Exception) -> CvplError:
    """The one-line error for a compute whose task raised ``exc``: the node the task belongs to (the
    first of ``keys``, innermost first, that :func:`task_owners` knows) and what it was doing."""
    owners = task_owners(plan, lowered)
    name = next((owners[k] for k in keys if k in owners), None)
    if name is None:
        return CvplError(f"a task of the run failed: {one_line(exc)} (--debug shows the traceback)")
    node = plan.node(name)
    if node.is_input:
        return CvplError(f"reading {name!r} failed: {one_line(exc)}")
    if plan.nodes[name].status is Status.CACHED:
        return CvplError(
            f"reading node {name!r} from the cache failed: {one_line(exc)}; `cvplgraph cache verify --deep` checks "
            "its store and moves a damaged entry away, so that the next run computes it again"
        )
    return OpFailed(name, node.opdef.name, exc)


__all__ = ["cluster_failed_keys", "local_failed_keys", "node_failure", "task_owners"]
