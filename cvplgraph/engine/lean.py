"""A worker plugin: a worker forgets the call of a task it finished, which a large run's graph made it keep.

A distributed worker keeps the state of a task it computed (``WorkerState.tasks``) until every task that
depends on it, on that worker, is forgotten; a run is one graph ending in one task, so a worker keeps nearly
every task it ran until the run ends. Each kept task keeps its ``run_spec``: the call, its arguments and, for a
fused block task, the nested chunk reads (1.4 KB pickled, more once unpickled). The two workers of a 100 GB
volume (≈ 4,000 tasks each) peaked at 343 and 328 MiB with them, 305 and 307 MiB without, on 28 GB
(docs/scale.md).

A task's ``run_spec`` is read only while the task executes: once its result is in memory the worker never
reads it again, and a task computed again (a lost result) comes with its ``run_spec`` once more in the
scheduler's ``compute-task`` message. :class:`DropRunSpecs` drops it there. What stays is distributed's own
bookkeeping of the task (≈ 3 KB, measured on a graph of 60,000 trivial tasks), until the run ends.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin


class DropRunSpecs(WorkerPlugin):
    """On a worker: forget a task's call once its result is in memory."""

    def setup(self, worker: Any) -> None:
        self.state = worker.state

    def transition(self, key: Any, start: str, finish: str, **kwargs: Any) -> None:
        if finish != "memory":
            return
        ts = self.state.tasks.get(key)
        if ts is not None:
            ts.run_spec = None


@contextlib.contextmanager
def lean_workers(client: Any) -> Iterator[bool]:
    """:class:`DropRunSpecs` on ``client``'s workers (those there and those that join) for the block's duration.
    Yields whether every worker took it: one that cannot load it (cvplgraph missing there, which the run's own
    tasks then report) holds what distributed holds, which is never worth failing a run for."""
    name = f"cvplgraph-lean-{client.id}"
    try:
        client.register_plugin(DropRunSpecs(), name=name)
        taken = True
    except Exception:  # noqa: BLE001 - see above
        taken = False
    try:
        yield taken
    finally:
        with contextlib.suppress(Exception):  # the scheduler keeps a plugin some workers refused: remove it too
            client.unregister_worker_plugin(name)
