"""A scheduler plugin counting one client's tasks, for :mod:`cvplgraph.engine.progress`."""

from __future__ import annotations

from typing import Any

from distributed.diagnostics.plugin import SchedulerPlugin


class TaskCounter(SchedulerPlugin):
    """On the scheduler: this client's tasks and those finished."""

    def __init__(self, client_id: str) -> None:
        self.client_id = client_id
        self.keys: set[Any] = set()
        self.finished: set[Any] = set()

    def update_graph(self, scheduler: Any, *, client: str, tasks: list[Any], **kwargs: Any) -> None:
        if client == self.client_id:
            self.keys.update(tasks)

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        if key not in self.keys:
            return
        if finish == "memory":
            self.finished.add(key)
        elif finish == "waiting":  # computed again: its worker was lost
            self.finished.discard(key)


def tasks_of(dask_scheduler: Any, name: str) -> tuple[int, int] | None:
    plugin = dask_scheduler.plugins.get(name)
    return (len(plugin.finished), len(plugin.keys)) if plugin is not None else None
