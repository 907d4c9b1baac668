"""User ops: modules a spec names, and the ``cvplgraph.ops`` entry-point group.

A plugin is an importable module whose functions are decorated with
:func:`cvplgraph.registry.op`; importing it registers them. A spec imports only
the modules it lists in ``plugins = [...]`` (its own folder is searched first);
installed packages can also announce modules in the ``cvplgraph.ops``
entry-point group, loaded once, the first time ops are looked up.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import sys
from pathlib import Path

log = logging.getLogger(__name__)
ENTRY_POINT_GROUP = "cvplgraph.ops"
_entry_points_loaded = False


def import_plugin(module: str, folder: Path | None = None) -> str | None:
    """Import ``module`` (looking in ``folder`` first); None on success, else why it failed."""
    added = folder is not None and str(folder) not in sys.path
    if added:
        sys.path.insert(0, str(folder))
    try:
        importlib.import_module(module)
    except Exception as exc:  # a plugin may fail in any way; report it, do not crash the spec check
        return f"cannot import plugin module {module!r}: {type(exc).__name__}: {exc}"
    finally:
        if added:
            sys.path.remove(str(folder))
    return None


def load_entry_points() -> None:
    """Import every module announced in the ``cvplgraph.ops`` entry-point group (once)."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
        except Exception as exc:  # a broken installed plugin must not break the built-in ops
            log.warning("cvplgraph plugin %s (%s) failed to load: %s", ep.name, ep.value, exc)
