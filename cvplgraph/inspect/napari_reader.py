"""cvplgraph's napari reader (npe2 manifest: ``cvplgraph/napari.yaml``): open a spec file or a cache folder.

*File → Open* on a spec (``*.toml`` with ``[nodes…]``) or on a cache folder (one holding ``CACHEDIR.TAG``
and ``manifest/``) adds the input and every cached node as layers, placed in micrometres with the scale
**and** the translation of their grid, named after their nodes: the layers ``cvplgraph view`` builds
(:func:`cvplgraph.inspect.view.layers`). Nothing is computed; nodes not cached yet are said in napari's
log. A cache folder opens with the spec of its newest run (the spec file if it is still there, else the
spec text the run record kept).

napari-ome-zarr (0.10) opens a single store but places it at the origin: it takes only the first
transformation of a dataset (the scale), not the translation, and names every label store ``labels/``
(docs/viewing.md). This reader is the way to see cvplgraph's stores where they lie.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the view module loads the engine: napari asks every reader at start-up, so not at import
    from cvplgraph.inspect.view import LayerData

log = logging.getLogger(__name__)


def get_reader(path: str | list[str]) -> Callable[[str | list[str]], list[LayerData]] | None:
    """The reader for ``path`` when it is a cvplgraph spec or cache folder, else None (napari tries others)."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    return read if _spec_source(Path(path)) is not None else None


def read(path: str | list[str]) -> list[LayerData]:
    """Layers of the spec or cache folder at ``path``: the input, then every cached node."""
    from cvplgraph.inspect.view import layers
    from cvplgraph.spec.parse import load_spec, parse_spec

    target = Path(path[0] if isinstance(path, list) else path)
    source = _spec_source(target)
    if source is None:
        raise ValueError(f"{target}: neither a cvplgraph spec nor a cache folder with a run record")
    spec_path, text = source
    spec = load_spec(spec_path) if text is None else parse_spec(text, spec_path)
    found = layers(spec)
    for name, why in found.missing.items():
        log.warning("cvplgraph: node %s not shown: %s", name, why)
    return found.data


def _spec_source(path: Path) -> tuple[str, str | None] | None:
    """(spec path, its text when the file is gone) for a spec file or a cache folder; None for anything else."""
    if path.is_dir():
        if not ((path / "CACHEDIR.TAG").is_file() and (path / "manifest").is_dir()):
            return None
        records = sorted((path / "runs").glob("*.json")) if (path / "runs").is_dir() else []
        for record in reversed(records):  # run ids sort by start time: the newest first
            try:
                spec = json.loads(record.read_text(encoding="utf-8")).get("spec") or {}
            except (OSError, ValueError):
                continue
            spec_path = spec.get("path")
            if not spec_path:
                continue
            if Path(spec_path).is_file():
                return spec_path, None
            if spec.get("text"):
                return spec_path, str(spec["text"])
        return None
    if path.suffix != ".toml" or not path.is_file():
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    return (str(path), None) if "[nodes." in text and ("[input]" in text or "[inputs." in text) else None


__all__ = ["get_reader", "read"]
