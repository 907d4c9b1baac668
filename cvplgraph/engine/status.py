"""The status of a node in a plan: what a run does with it.

Defined apart from :mod:`cvplgraph.engine.plan` (which re-exports it) so that what only reads
statuses — drawing a run record's DAG, the HTML report — imports neither the ops nor dask.
"""

from __future__ import annotations

import enum


class Status(enum.StrEnum):
    """What a run does with a node.

    A ``str`` enum: each member equals its value (``Status.CACHED == "cached"``), so plans printed
    as JSON, run records and the HTML report hold the same strings as before, and statuses read
    back from an old run record compare equal to the members.
    """

    INPUT = "input"  # a source (the image, an atlas): read, never computed
    CACHED = "cached"  # its key is in the cache: read from there
    COMPUTE = "compute"  # its op runs (and, unless cache = false, its value is stored)
    SKIP = "skip"  # cache = false and nothing to compute or output needs it
