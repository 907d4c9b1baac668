"""A worker plugin: a worker forgets what it no longer needs of the tasks it finished, which a large run's graph
made it keep until the run's end.

A distributed worker keeps the state of a task it computed (``WorkerState.tasks``) until every task that
depends on it, on that worker, is forgotten; a run is one graph ending in one task, so a worker kept nearly
every task it ran until the run ended, each with its ``run_spec``: the call, its arguments and, for a fused
block task, the nested chunk reads. On a 100 GB volume that was 16,000 tasks on one worker (docs/scale.md).

Both are read only while the task waits and executes. Once a task's result is in memory the worker never
reads its call again, and it needs its links to the tasks it depended on only to forget them when it is
itself forgotten: a task computed again (a lost result) comes with its call and its dependencies once more in
the scheduler's ``compute-task`` message. :class:`LeanTasks` drops both there, so a finished task's
dependencies are forgotten as soon as the scheduler releases them (every task depending on them has run),
not when the run ends.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin


class LeanTasks(WorkerPlugin):
    """On a worker: once a task's result is in memory, forget its call and unlink it from its dependencies."""

    def setup(self, worker: Any) -> None:
        self.state = worker.state

    def transition(self, key: Any, start: str, finish: str, **kwargs: Any) -> None:
        if finish != "memory":
            return
        ts = self.state.tasks.get(key)
        if ts is None:
            return
        ts.run_spec = None
        for dep in ts.dependencies:  # both sides of each link, as distributed's own checks expect
            dep.dependents.discard(ts)
        ts.dependencies.clear()


@contextlib.contextmanager
def lean_workers(client: Any) -> Iterator[bool]:
    """:class:`LeanTasks` on ``client``'s workers (those there and those that join) for the block's duration.
    Yields whether every worker took it: one that cannot load it (cvplgraph missing there, which the run's own
    tasks then report) holds what distributed holds, which is never worth failing a run for."""
    name = f"cvplgraph-lean-{client.id}"
    try:
        client.register_plugin(LeanTasks(), name=name)
        taken = True
    except Exception:  # noqa: BLE001 - see above
        taken = False
    try:
        yield taken
    finally:
        with contextlib.suppress(Exception):  # the scheduler keeps a plugin some workers refused: remove it too
            client.unregister_worker_plugin(name)
