"""Which task of a failed compute raised: its key, which :func:`cvplgraph.engine.execute.task_owners`
maps to the node it belongs to.

dask reports a failed task by re-raising its exception, without the task's key. On dask's local
schedulers the key is read from the traceback: the frames of the task objects being called (a fused
task calls each of its parts, under their own keys) and of the scheduler's ``execute_task``. On a
distributed cluster the scheduler knows which task a failed result is to blame on.
"""

from __future__ import annotations

from typing import Any


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


__all__ = ["cluster_failed_keys", "local_failed_keys"]
