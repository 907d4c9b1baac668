"""Named BrainGlobe atlases, found in the local BrainGlobe folder and never downloaded.

``[inputs.atlas] name = "allen_mouse_25um"`` names an atlas installed by BrainGlobe (``brainglobe install -a
NAME``). The folder is the one BrainGlobe itself uses: ``brainglobe_dir`` of its configuration file
(``$BRAINGLOBE_CONFIG_DIR/bg_config.conf``, default ``~/.config/brainglobe``), else ``~/.brainglobe``. Two
layouts are found there:

- **brainglobe-atlasapi ≥ 3** keeps ``brainglobe-atlasapi/atlases/NAME/VERSION/manifest.json`` whose
  components (terminology CSV, annotation and hemisphere OME-Zarr pyramids) lie in sibling folders. The
  manifest gives the resolution, shape, orientation and symmetry; the volumes are read lazily, chunk by
  chunk, from the pyramid level of the atlas's resolution; a level whose chunks are not on disk (BrainGlobe
  fetches them on first use) is an error, not a download. The tests compare every value with what
  brainglobe-atlasapi's ``BrainGlobeAtlas`` reads from the same folder.
- **brainglobe-atlasapi ≤ 2** kept ``NAME_vVERSION/`` folders with ``annotation.tiff``, ``hemispheres.tiff``,
  ``structures.json`` and ``metadata.json``; many users' folders still hold them, and the folder reader of
  :mod:`cvplgraph.io.atlas` reads them.

A symmetric atlas ships no hemisphere volume: BrainGlobe splits it at the middle of its left–right axis
(indices from ``round(n / 2)`` on are the left hemisphere, 1; the others the right, 2). The same split is
made here, lazily.
"""

from __future__ import annotations

import configparser
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import pandas as pd

from cvplgraph.errors import InputError
from cvplgraph.values import LEFT, RIGHT

#: Where brainglobe-atlasapi ≥ 3 keeps atlases inside the BrainGlobe folder.
V3_ROOT = ("brainglobe-atlasapi", "atlases")
#: The install command a missing atlas names.
INSTALL = "brainglobe install -a {name}"


@dataclass(frozen=True)
class LocalAtlas:
    """An installed BrainGlobe atlas: what the atlas reader needs, with every file it reads listed."""

    name: str
    version: str
    layout: str  # "v3" or "classic"
    annotation: str  # an OME-Zarr array (v3: the pyramid level) or a TIFF
    hemispheres: str  # the same kind, or "" when the atlas is symmetric
    structures: str  # the terminology CSV (v3) or structures.json
    metadata: str  # manifest.json (v3) or metadata.json
    resolution: tuple[float, float, float]  # µm along the atlas's own axes
    shape: tuple[int, int, int]
    orientation: str  # BrainGlobe code of the atlas's axes, e.g. "asr"
    symmetric: bool
    frame: pd.DataFrame | None = None  # v3: the terminology in the structure reader's columns

    @property
    def files(self) -> dict[str, str]:
        """Every file or store the atlas is read from (the cache key lists them)."""
        return {"annotation": self.annotation, "hemispheres": self.hemispheres, "structures": self.structures,
                "metadata": self.metadata}  # fmt: skip


def brainglobe_dir() -> Path:
    """The BrainGlobe folder: ``brainglobe_dir`` of BrainGlobe's configuration file, else ``~/.brainglobe``.

    Read here rather than through brainglobe-atlasapi's ``read_config``, which writes a default file when
    there is none; the environment variable is read at each call (BrainGlobe reads it at import)."""
    config_dir = Path(os.environ.get("BRAINGLOBE_CONFIG_DIR", Path.home() / ".config" / "brainglobe"))
    parser = configparser.ConfigParser()
    try:
        parser.read(config_dir / "bg_config.conf", encoding="utf-8")
    except configparser.Error as exc:
        raise InputError(f"{config_dir / 'bg_config.conf'}: not a readable BrainGlobe configuration ({exc})") from None
    folder = parser.get("default_dirs", "brainglobe_dir", fallback="")
    return Path(folder).expanduser() if folder else Path.home() / ".brainglobe"


def _version_key(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.split(r"[._]", text) if p.isdigit())


def installed(root: Path | None = None) -> dict[str, list[str]]:
    """Atlas name → the versions installed under ``root`` (both layouts), oldest first."""
    root = root or brainglobe_dir()
    found: dict[str, set[str]] = {}
    for manifest in root.joinpath(*V3_ROOT).glob("*/*/manifest.json"):
        found.setdefault(manifest.parent.parent.name, set()).add(manifest.parent.name.replace("_", "."))
    for meta in root.glob("*_v*/metadata.json"):
        name, _, version = meta.parent.name.rpartition("_v")
        found.setdefault(name, set()).add(version)
    return {name: sorted(v, key=_version_key) for name, v in sorted(found.items())}


def find_atlas(name: str, version: str = "") -> LocalAtlas:
    """The installed atlas ``name`` (``version``, or the newest installed): one line naming the install
    command when it is not there."""
    root = brainglobe_dir()
    versions = installed(root).get(name, [])
    if version:
        versions = [v for v in versions if _version_key(v) == _version_key(version)]
    if not versions:
        everything = installed(root)
        shown = ", ".join(f"{n} {'/'.join(v)}" for n, v in everything.items()) or "none"
        what = f"BrainGlobe atlas {name!r}" + (f" version {version}" if version else "")
        raise InputError(f"{root}: {what} is not installed (installed: {shown}); expected it installed once with "
                         f"`{INSTALL.format(name=name)}` (cvplgraph never downloads atlases) or another folder set "
                         "as brainglobe_dir in BrainGlobe's bg_config.conf")  # fmt: skip
    newest = versions[-1]
    v3 = root.joinpath(*V3_ROOT, name, newest.replace(".", "_"), "manifest.json")
    if v3.is_file():
        return _open_v3(root, name, newest, v3)
    return _open_classic(root / f"{name}_v{newest}", name, newest)


def _open_classic(folder: Path, name: str, version: str) -> LocalAtlas:
    meta_path = folder / "metadata.json"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{meta_path}: not readable JSON ({exc})") from None
    hemispheres = folder / "hemispheres.tiff"
    symmetric = bool(meta.get("symmetric", not hemispheres.exists()))
    table = folder / "structures.json"
    return LocalAtlas(
        name=name,
        version=version,
        layout="classic",
        annotation=str(folder / "annotation.tiff"),
        hemispheres="" if symmetric or not hemispheres.exists() else str(hemispheres),
        structures=str(table if table.exists() else folder / "structures.csv"),
        metadata=str(meta_path),
        resolution=_triple(meta, "resolution", meta_path, float),  # type: ignore[arg-type]
        shape=_triple(meta, "shape", meta_path, int),  # type: ignore[arg-type]
        orientation=str(meta.get("orientation", "asr")),
        symmetric=symmetric,
    )


def _triple(meta: dict[str, Any], key: str, path: Path, kind: type) -> tuple[Any, ...]:
    value = meta.get(key)
    if not (isinstance(value, list) and len(value) == 3):
        raise InputError(f"{path}: expected {key} = [three numbers], got {value!r}")
    return tuple(kind(v) for v in value)


def _open_v3(root: Path, name: str, version: str, manifest: Path) -> LocalAtlas:
    """An atlas of brainglobe-atlasapi ≥ 3 from its manifest, read here rather than by ``BrainGlobeAtlas``:
    its constructor reads the terminology's parent ids as 16-bit integers and fails on Allen's (several
    parents, e.g. VISrll 480149202, exceed 65535); and opening it never touches the network this way."""
    try:
        meta = json.loads(manifest.read_text(encoding="utf-8"))
        annotation_set = root / V3_ROOT[0] / str(meta["annotation_set"]["location"]).lstrip("/")
        terminology = root / V3_ROOT[0] / str(meta["terminology"]["location"]).lstrip("/") / "terminology.csv"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{manifest}: not a readable BrainGlobe atlas manifest ({exc}); expected a complete "
                         f"install (`{INSTALL.format(name=name)}` again)") from None  # fmt: skip
    resolution = _triple(meta, "resolution", manifest, float)
    annotation = _level(annotation_set / "annotations_compressed.ome.zarr", resolution, name)
    symmetric = bool(meta.get("symmetric", False))
    hemispheres = "" if symmetric else _level(annotation_set / "hemispheres.ome.zarr", resolution, name)
    return LocalAtlas(
        name=name,
        version=version,
        layout="v3",
        annotation=annotation,
        hemispheres=hemispheres,
        structures=str(terminology),
        metadata=str(manifest),
        resolution=resolution,  # type: ignore[arg-type]
        shape=_triple(meta, "shape", manifest, int),  # type: ignore[arg-type]
        orientation=str(meta.get("orientation") or "asr"),
        symmetric=symmetric,
        frame=_terminology(terminology),
    )


def _terminology(path: Path) -> pd.DataFrame:
    """BrainGlobe's terminology CSV (``identifier, abbreviation, name, root_identifier_path`` such as
    ``[997, 8, 567]``) in the columns the structure reader takes."""
    try:
        terms = pd.read_csv(path, keep_default_na=False)
        paths = ["/".join(p.strip() for p in str(v).strip("[]").split(",") if p.strip())
                 for v in terms["root_identifier_path"]]  # fmt: skip
        return pd.DataFrame({"id": terms["identifier"], "acronym": terms["abbreviation"], "name": terms["name"],
                             "structure_id_path": paths})  # fmt: skip
    except FileNotFoundError:
        raise InputError(f"{path}: the atlas's terminology does not exist; expected a complete install") from None
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(f"{path}: not a readable BrainGlobe terminology ({exc})") from None


def _level(store: Path, resolution: tuple[float, ...], name: str) -> str:
    """The array of the OME-Zarr pyramid ``store`` at ``resolution`` µm (BrainGlobe stores millimetres)."""
    try:
        if (store / "zarr.json").is_file():  # OME-Zarr 0.5 (zarr v3): the metadata under attributes.ome
            attrs = json.loads((store / "zarr.json").read_text(encoding="utf-8")).get("attributes", {})
        else:  # OME-Zarr 0.4 (zarr v2)
            attrs = json.loads((store / ".zattrs").read_text(encoding="utf-8"))
        multiscales = (attrs.get("ome") or attrs)["multiscales"][0]
    except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise InputError(f"{store}: not a readable OME-Zarr pyramid ({exc}); expected a complete install of "
                         f"{name!r} (`{INSTALL.format(name=name)}`)") from None  # fmt: skip
    unit = {"millimeter": 1000.0, "micrometer": 1.0}
    axes = multiscales.get("axes", [])[-3:]
    factors = [unit.get(str(a.get("unit", "millimeter")), 1000.0) for a in axes] or [1000.0] * 3
    for dataset in multiscales.get("datasets", []):
        transforms = dataset.get("coordinateTransformations", [])
        scale = next((t["scale"] for t in transforms if t.get("type") == "scale"), None)
        if scale is not None and np.allclose(np.asarray(scale[-3:]) * factors, resolution):
            level = store / str(dataset["path"])
            if not (level / "c").is_dir() and not any(level.glob("[0-9]*")):
                raise InputError(f"{level}: the atlas's chunks at {resolution[0]:g} µm are not on disk (BrainGlobe "
                                 f"fetches them on first use); expected them installed: open the atlas once with "
                                 f"brainglobe-atlasapi or run `{INSTALL.format(name=name)}`")  # fmt: skip
            return str(level)
    raise InputError(f"{store}: no pyramid level at {list(resolution)} µm; expected the atlas's own resolution")


def symmetric_hemispheres(shape: tuple[int, int, int], orientation: str, chunks: tuple[int, ...]) -> da.Array:
    """BrainGlobe's hemispheres of a symmetric atlas, lazily: split at ``round(n / 2)`` of the left–right axis."""
    axis = next(i for i, c in enumerate(orientation.lower()) if c in "lr")
    n = shape[axis]
    line = da.where(da.arange(n, chunks=chunks[axis]) >= round(n / 2), LEFT, RIGHT).astype(np.uint8)
    reshaped = line.reshape(tuple(n if a == axis else 1 for a in range(3)))
    return da.broadcast_to(reshaped, shape, chunks=tuple(chunks[a] if a != axis else chunks[axis] for a in range(3)))


__all__ = ["LocalAtlas", "brainglobe_dir", "find_atlas", "installed", "symmetric_hemispheres"]
