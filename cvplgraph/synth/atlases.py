"""Atlases to build synthetic brains from: the Allen CCFv3 files of ``../shared/data``, or a
procedural brain made in code, held in memory in sample orientation (z, y, x)."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cvplgraph.values import OUTSIDE_ATLAS, Geometry

__all__ = [
    "ALLEN_STRUCTURE_COLUMNS",
    "BrainAtlas",
    "Crop",
    "find_atlas_folder",
    "load_allen_atlas",
    "procedural_atlas",
    "resolve_atlas",
    "write_atlas_folder",
]

#: Columns of a structures table (the Allen ``structures.csv`` layout).
ALLEN_STRUCTURE_COLUMNS: tuple[str, ...] = (
    "id",
    "acronym",
    "name",
    "parent_structure_id",
    "depth",
    "graph_order",
    "structure_id_path",
    "color_hex_triplet",
)
ALLEN_CITATION = "Wang et al. 2020, https://doi.org/10.1016/j.cell.2020.04.007"
Crop = tuple[tuple[float, float], tuple[float, float], tuple[float, float]]


# --------------------------------------------------------------------------- atlases


@dataclass(frozen=True)
class BrainAtlas:
    """An annotated atlas in sample orientation (z, y, x), at translation 0.

    Attributes
    ----------
    annotation : (Z, Y, X) uint32 array
        Region ids, 0 outside the brain.
    hemispheres : (Z, Y, X) uint8 array
        1 = left, 2 = right (BrainGlobe convention).
    structures : DataFrame
        The structure table (columns at least ``STRUCTURE_COLUMNS``).
    resolution_um : (3,) tuple of float
        Voxel size along (z, y, x).
    name : str
    citation : str
    source : str
        The folder it was read from, or ``"procedural"``.
    default_crop_um : three (start, stop) pairs of float
        The crop (µm, atlas space) that :func:`write_synthetic_brain` uses by default.
    structures_csv : Path or None
        The file ``structures`` was read from (copied verbatim when writing).
    """

    annotation: np.ndarray
    hemispheres: np.ndarray
    structures: pd.DataFrame
    resolution_um: tuple[float, float, float]
    name: str
    citation: str
    source: str
    default_crop_um: Crop
    structures_csv: Path | None = None

    @property
    def geometry(self) -> Geometry:
        """The atlas voxel grid in µm (translation 0)."""
        shape = tuple(int(s) for s in self.annotation.shape)
        return Geometry(shape, self.resolution_um, (0.0, 0.0, 0.0))  # type: ignore[arg-type]

    def lookup(self, um: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Region id and hemisphere of each point.

        Parameters
        ----------
        um : (N, 3) array of float
            Points in atlas space (µm, z y x).

        Returns
        -------
        region_id : (N,) int64 array
            Atlas id at the nearest voxel (:meth:`Geometry.to_voxel`); ``-1``
            outside the atlas volume.
        hemisphere : (N,) int64 array
            1 / 2, or 0 outside the atlas volume.
        """
        index, inside = self.geometry.to_voxel(um)
        iz, iy, ix = index.T
        region = self.annotation[iz, iy, ix].astype(np.int64)
        hemisphere = self.hemispheres[iz, iy, ix].astype(np.int64)
        region[~inside] = OUTSIDE_ATLAS
        hemisphere[~inside] = 0
        return region, hemisphere


def find_atlas_folder(name: str = "atlas_ccf2017") -> Path | None:
    """The shared Allen atlas folder ``../shared/data/<name>``, if it exists.

    Looked for relative to the current directory and to every parent folder of
    this package (so it is found from the project root and from an installed
    checkout next to ``shared``).

    Parameters
    ----------
    name : str
        Folder name inside ``shared/data``.

    Returns
    -------
    folder : Path or None
    """
    candidates = [Path.cwd() / ".." / "shared" / "data" / name, Path.cwd() / "shared" / "data" / name]
    candidates += [parent / "shared" / "data" / name for parent in Path(__file__).resolve().parents]
    for folder in candidates:
        if (folder / "structures.csv").is_file():
            return folder.resolve()
    return None


def load_allen_atlas(folder: str | Path, resolution_um: int = 100) -> BrainAtlas:
    """Read an Allen CCFv3 folder (``annotation_<r>um.tif``, ``hemispheres_<r>um.tif``, ``structures.csv``).

    The files' axes are (left → right, anterior → posterior, dorsal → ventral);
    they are transposed ``(2, 1, 0)`` into sample orientation (z, y, x).

    Parameters
    ----------
    folder : str or Path
    resolution_um : int
        Which files to read (100 or 50 in the shared data).

    Returns
    -------
    atlas : BrainAtlas
        With a default crop that is a slab through dorsal cortex around the
        midline, starting 400 µm above the atlas volume.
    """
    import tifffile

    folder = Path(folder)
    annotation = tifffile.imread(folder / f"annotation_{resolution_um}um.tif")
    hemispheres = tifffile.imread(folder / f"hemispheres_{resolution_um}um.tif")
    if annotation.dtype != np.uint32:
        raise ValueError(f"{folder}: annotation must be uint32 region ids, got {annotation.dtype}")
    r = float(resolution_um)
    return BrainAtlas(
        annotation=np.ascontiguousarray(np.transpose(annotation, (2, 1, 0))),
        hemispheres=np.ascontiguousarray(np.transpose(hemispheres, (2, 1, 0)).astype(np.uint8)),
        structures=pd.read_csv(folder / "structures.csv"),
        resolution_um=(r, r, r),
        name=f"allen_mouse_{resolution_um}um",
        citation=ALLEN_CITATION,
        source=str(folder),
        # 2 mm deep from 400 µm above the volume, 1.5 mm anterior-posterior, 1.92 mm across the midline (5650 µm).
        default_crop_um=((-400.0, 1600.0), (4500.0, 6000.0), (4690.0, 6610.0)),
        structures_csv=folder / "structures.csv",
    )


#: Ids of the procedural atlas; CB needs more than 24 bits, like many Allen ids.
PROCEDURAL_IDS: dict[str, int] = {"CTX1": 1001, "CTX2": 1002, "NUC": 2001, "BS": 3001, "CB": 2**24 + 100}


def _procedural_structures() -> pd.DataFrame:
    """The structure table of :func:`procedural_atlas` (Allen column layout)."""
    i = PROCEDURAL_IDS
    rows = [  # id, acronym, name, parent, colour
        (997, "root", "root", None, "FFFFFF"),
        (8, "grey", "Basic cell groups and regions", 997, "BFDAE3"),
        (567, "CH", "Cerebrum", 8, "B0F0FF"),
        (315, "Isocortex", "Isocortex", 567, "70FF71"),  # a parent without voxels of its own
        (i["CTX1"], "CTX1", "Isocortex, layer 1", 315, "68C86C"),
        (i["CTX2"], "CTX2", "Isocortex, layer 2", 315, "5FB862"),
        (i["NUC"], "NUC", "Deep nucleus", 567, "98D6F9"),
        (i["BS"], "BS", "Brain stem", 8, "FF7080"),
        (i["CB"], "CB", "Cerebellum", 8, "F0F080"),
    ]
    path: dict[int, str] = {}
    depth: dict[int, int] = {}
    records = []
    for order, (sid, acronym, name, parent, colour) in enumerate(rows):
        path[sid] = (path[parent] if parent is not None else "/") + f"{sid}/"
        depth[sid] = depth[parent] + 1 if parent is not None else 0
        records.append((sid, acronym, name, parent, float(depth[sid]), float(order), path[sid], colour))
    frame = pd.DataFrame.from_records(records, columns=list(ALLEN_STRUCTURE_COLUMNS))
    frame["parent_structure_id"] = frame["parent_structure_id"].astype("float64")
    return frame


def procedural_atlas(resolution_um: float = 100.0) -> BrainAtlas:
    """A small atlas built in code: an ellipsoid brain (4 × 6 × 5 mm, z y x) in a 5 × 7 × 6 mm volume.

    Regions, by the normalised ellipsoid radius ``r`` (1 on the brain surface)
    of each voxel centre: the posterior 25 % of the brain along y is the
    cerebellum ``CB`` (id above 2**24); elsewhere ``0.9 < r <= 1`` is cortex
    layer 1 ``CTX1``, ``0.8 < r <= 0.9`` layer 2 ``CTX2``, ``r <= 0.35`` a deep
    nucleus ``NUC`` and the rest brain stem ``BS``. Both layers are children of
    ``Isocortex`` (315), which owns no voxels. Hemispheres: 1 (left) for x
    below the midline, 2 above.

    Parameters
    ----------
    resolution_um : float
        Isotropic voxel size of the atlas.

    Returns
    -------
    atlas : BrainAtlas
        With a default crop through the dorsal posterior brain (cortex, brain
        stem, cerebellum) starting 300 µm above the atlas volume.
    """
    r = float(resolution_um)
    shape = tuple(int(round(mm * 1000.0 / r)) for mm in (5.0, 7.0, 6.0))
    centre = [(n - 1) / 2.0 * r for n in shape]  # µm
    semi = (2000.0, 3000.0, 2500.0)
    z, y, x = (np.arange(n, dtype=np.float64) * r for n in shape)
    radius = np.sqrt(
        ((z[:, None, None] - centre[0]) / semi[0]) ** 2
        + ((y[None, :, None] - centre[1]) / semi[1]) ** 2
        + ((x[None, None, :] - centre[2]) / semi[2]) ** 2
    )
    ids = PROCEDURAL_IDS
    annotation = np.zeros(shape, dtype=np.uint32)
    annotation[radius <= 1.0] = ids["BS"]
    annotation[radius <= 0.35] = ids["NUC"]
    annotation[(radius > 0.8) & (radius <= 0.9)] = ids["CTX2"]
    annotation[(radius > 0.9) & (radius <= 1.0)] = ids["CTX1"]
    posterior = np.broadcast_to((y > centre[1] + 0.5 * semi[1])[None, :, None], shape)
    annotation[(radius <= 1.0) & posterior] = ids["CB"]
    hemispheres = np.where(x[None, None, :] < centre[2], 1, 2).astype(np.uint8) * np.ones(shape, dtype=np.uint8)
    top = centre[0] - semi[0]  # dorsal surface, µm
    return BrainAtlas(
        annotation=annotation,
        hemispheres=hemispheres,
        structures=_procedural_structures(),
        resolution_um=(r, r, r),
        name=f"cvplgraph_procedural_{r:g}um",
        citation="cvplgraph procedural atlas (synthetic, no publication)",
        source="procedural",
        default_crop_um=(
            (top - 750.0, top + 1250.0),
            (centre[1] + 750.0, centre[1] + 2250.0),
            (centre[2] - 960.0, centre[2] + 960.0),
        ),
    )


def resolve_atlas(atlas: BrainAtlas | str | Path | None = None, resolution_um: int = 100) -> BrainAtlas:
    """The atlas named by ``atlas``.

    Parameters
    ----------
    atlas : BrainAtlas, str, Path or None
        A :class:`BrainAtlas` (returned as is); ``"procedural"`` for
        :func:`procedural_atlas`; a folder holding Allen files for
        :func:`load_allen_atlas`; None for the shared Allen folder when
        :func:`find_atlas_folder` finds it, else the procedural atlas.
    resolution_um : int
        Resolution of the Allen files to read.

    Returns
    -------
    atlas : BrainAtlas
    """
    if isinstance(atlas, BrainAtlas):
        return atlas
    if atlas is None:
        folder = find_atlas_folder()
        return load_allen_atlas(folder, resolution_um) if folder is not None else procedural_atlas()
    if str(atlas) == "procedural":
        return procedural_atlas()
    folder = Path(atlas)
    if not folder.is_dir():
        raise FileNotFoundError(f"atlas folder {folder} does not exist")
    return load_allen_atlas(folder, resolution_um)


def write_atlas_folder(atlas: BrainAtlas, folder: str | Path) -> Path:
    """Write ``atlas`` as a BrainGlobe-style folder in sample orientation.

    Files: ``annotation.tiff`` (uint32), ``hemispheres.tiff`` (uint8, 1 left /
    2 right), ``structures.csv`` (a verbatim copy of the source table when
    there is one) and ``metadata.json`` (name, citation, resolution, shape,
    orientation ``"sal"``, symmetric false, ...).

    Parameters
    ----------
    atlas : BrainAtlas
    folder : str or Path

    Returns
    -------
    folder : Path
    """
    import tifffile

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(folder / "annotation.tiff", np.ascontiguousarray(atlas.annotation, dtype=np.uint32))
    tifffile.imwrite(folder / "hemispheres.tiff", np.ascontiguousarray(atlas.hemispheres, dtype=np.uint8))
    if atlas.structures_csv is not None:
        shutil.copyfile(atlas.structures_csv, folder / "structures.csv")
    else:
        atlas.structures.to_csv(folder / "structures.csv", index=False)
    metadata = {
        "name": atlas.name,
        "citation": atlas.citation,
        "atlas_link": "https://atlas.brain-map.org" if atlas.source != "procedural" else "",
        "species": "Mus musculus",
        "symmetric": False,
        "resolution": list(atlas.resolution_um),
        "orientation": "sal",
        "version": "1.0",
        "shape": [int(s) for s in atlas.annotation.shape],
        "transform_to_bg": np.eye(4).tolist(),
        "additional_references": [],
        "source": atlas.source,
    }
    (folder / "metadata.json").write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
    return folder
