"""Output targets that must not be written: one that is, holds or lies inside the input, an atlas
file or the cache; two outputs on one path; one below a file; and an existing path that is not an
earlier output of this same spec (every output is written with a ``<path>.cvplgraph.json``
provenance file naming the spec it came from). Checked when the spec is read, so `plan` reports it
and `run` touches nothing."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from cvplgraph.spec.model import AtlasSpec, InputSpec

#: Beside every output: the provenance file written with it (engine/execute.py writes it).
PROVENANCE_SUFFIX = ".cvplgraph.json"


def _local(url: str) -> Path | None:
    """A local path as an absolute, normalised Path (symlinks resolved); None for a remote URL."""
    if not url or ("://" in url and not url.startswith("file://")):
        return None
    return Path(os.path.realpath(url.removeprefix("file://")))


def _overlaps(a: Path, b: Path) -> bool:
    """``a`` is ``b``, lies inside it, or holds it."""
    return a == b or a in b.parents or b in a.parents


def protected(
    inp: InputSpec | None, atlases: Sequence[tuple[str, AtlasSpec]], cache_url: str
) -> list[tuple[str, Path]]:
    """(what, path) of everything an output must leave alone."""
    out: list[tuple[str, str]] = [("the input ([input] url)", inp.url if inp is not None else "")]
    for name, atlas in atlases:
        where = f"the atlas [inputs.{name}]"
        out += [(f"{where} url", atlas.url), (f"{where} structures", atlas.structures),
                (f"{where} hemispheres", atlas.hemispheres)]  # fmt: skip
    out.append(("the cache ([cache] url)", cache_url))
    return [(what, p) for what, url in out if (p := _local(url)) is not None]


def target_problems(outputs: Sequence[tuple[str, str]], keep: list[tuple[str, Path]], spec_source: str | None,
                    add: Callable[[str, str], None]) -> None:  # fmt: skip
    """Report (through ``add(field, message)``) every output target the module docstring forbids."""
    seen: dict[Path, str] = {}
    for node, target in outputs:
        field = f"outputs.{node}"
        path = _local(target)
        if path is None:
            continue
        clash = next(((what, p) for what, p in keep if _overlaps(path, p)), None)
        if clash is not None:
            what, p = clash
            relation = "is" if path == p else ("lies inside" if p in path.parents else "holds")
            add(field, f"{target!r} {relation} {what}, {str(p)!r}: writing it would destroy that; expected a path "
                       "of its own")  # fmt: skip
            continue
        if path in seen:
            add(field, f"{target!r} is also the output of {seen[path]}; expected one path per output")
            continue
        seen[path] = field
        blocking = next((a for a in path.parents if os.path.lexists(a) and not os.path.isdir(a)), None)
        if blocking is not None:
            add(field, f"{target!r} cannot be written: {str(blocking)!r} is a file, not a folder; expected a path "
                       "whose folders are folders")  # fmt: skip
            continue
        if not os.path.lexists(path):
            continue
        sidecar = Path(f"{str(path).rstrip('/')}{PROVENANCE_SUFFIX}")
        owner = _owner(sidecar)
        if owner is None:
            add(field, f"{target!r} exists and is not an output of cvplgraph (no {sidecar.name} beside it); "
                       "expected a new path, or move the existing one away first")  # fmt: skip
        elif spec_source is not None and owner != spec_source:
            add(field, f"{target!r} exists as an output of another spec ({owner}); expected a new path, or "
                       "move the existing one away first")  # fmt: skip


def _owner(sidecar: Path) -> str | None:
    """The spec a provenance file names (its absolute path), or None when there is no readable one."""
    try:
        document = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    spec = document.get("spec") if isinstance(document, dict) else None
    return os.path.realpath(spec) if isinstance(spec, str) and spec != "<spec>" else "<spec>" if spec else None
