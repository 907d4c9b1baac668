"""A scheduler plugin that makes a user's plugin module importable on the scheduler.

The scheduler unpickles task graphs, so it needs every module whose functions the graph refers to.
distributed's own ``SchedulerUploadFile`` writes into the scheduler's scratch folder, which another
cluster started in the same process may already have purged; this one writes into a folder of its
own. (Workers get the module from distributed's ``UploadFile`` worker plugin.)
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

from distributed.diagnostics.plugin import SchedulerPlugin
from distributed.utils import import_file


class SchedulerModule(SchedulerPlugin):
    """Write ``filename`` (a .py or .zip) with ``data`` into a fresh folder on the scheduler and import it."""

    def __init__(self, filename: str, data: bytes) -> None:
        self.filename = filename
        self.data = data

    async def start(self, scheduler: Any) -> None:
        loaded = sys.modules.get(Path(self.filename).stem)
        source = getattr(loaded, "__file__", None)
        if source and Path(source).is_file() and Path(source).read_bytes() == self.data:
            return  # a scheduler in the client's own process (LocalCluster) already has this very module
        path = Path(tempfile.mkdtemp(prefix="cvplgraph-plugin-")) / self.filename
        path.write_bytes(self.data)
        import_file(str(path))
