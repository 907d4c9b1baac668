"""Ground truth: true cell centres and true counts per region, read from the files other tools write.

Cell centres come back as one frame in µm, whatever the file held:

- a CSV with ``z_um, y_um, x_um`` (µm), such as the truth ``cvplgraph synth``
  writes (see :func:`cvplgraph.synth.volume.make_cells`; it also has voxel ``z, y, x``);
- a CSV with voxel ``z, y, x`` only (needs the voxel size);
- a napari points layer saved as CSV (``index, axis-0, axis-1, axis-2`` and
  any feature columns after them; a leading fourth axis, such as a channel, is
  ignored). napari saves the layer's **data** coordinates, not its world
  coordinates: for a layer made by cvplgraph, or one added in the viewer while
  a cvplgraph image layer was selected (napari then copies that layer's scale),
  these are voxels. A layer added with nothing selected has scale 1, so its data
  are world coordinates, µm for cvplgraph images: pass ``napari_units="um"``;
- an ImageJ CellCounter XML file as BrainGlobe writes it (``MarkerX`` = column
  x, ``MarkerY`` = row y, ``MarkerZ`` = plane z, all voxels). ``MarkerZ`` is
  kept as written: older CellCounter versions write 1-based slice numbers,
  BrainGlobe writes 0-based planes; shift the ``z`` column yourself for the
  former.

Voxels become µm as ``voxel * voxel_size``: the origin of the image is taken
to be 0 µm, as in the synthetic truth.
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from cvplgraph.errors import InputError

UM_COLUMNS = ["z_um", "y_um", "x_um"]
VOXEL_COLUMNS = ["z", "y", "x"]
_AXIS = re.compile(r"axis-(\d+)")
_EXPECTED = "z_um, y_um, x_um (µm), or z, y, x (voxels), or napari's index, axis-0, axis-1, axis-2"


def read_points(
    path: str | Path,
    *,
    voxel_size: tuple[float, float, float] | None = None,
    cell_type: int = 2,
    napari_units: Literal["um", "voxel"] = "voxel",
) -> pd.DataFrame:
    """True cell centres from a CSV or CellCounter XML file, in µm.

    The format is chosen by content: a file whose first character is ``<`` (or
    whose name ends in ``.xml``) is CellCounter XML; anything else is a CSV,
    recognised by its columns (see the module docstring).

    Parameters
    ----------
    path : str or Path
    voxel_size : (3,) tuple of float, optional
        (z, y, x) µm per voxel. Needed when the file holds voxels (voxel CSV,
        napari CSV in voxels, CellCounter XML); when given, voxel columns are
        added to files in µm that lack them.
    cell_type : int
        CellCounter marker type to read (BrainGlobe: 2 = cell, 1 = non-cell).
    napari_units : {"voxel", "um"}
        Unit of the coordinates in a napari CSV (see the module docstring).

    Returns
    -------
    points : (n, 3 or 6) DataFrame
        ``z_um, y_um, x_um`` (float64), then ``z, y, x`` (voxels, float64) when
        the file has them or ``voxel_size`` is given. RangeIndex, file order.

    Raises
    ------
    InputError
        Missing or unreadable file, unrecognised columns, non-numeric or
        non-finite coordinates, voxels without ``voxel_size``, a marker type
        absent from the XML, or a bad ``voxel_size`` / ``napari_units``.
    """
    path = Path(path)
    size = _voxel_size(voxel_size, path)
    if napari_units not in ("um", "voxel"):
        raise InputError(f"{path}: napari_units {napari_units!r}: expected 'um' or 'voxel'")
    if not path.is_file():
        raise InputError(f"{path}: no such file; expected a CSV or CellCounter XML file of cell centres")
    if path.suffix.lower() == ".xml" or _starts_with(path, b"<"):
        return _frame(path, None, _cellcounter(path, cell_type), size, "its CellCounter markers are voxels")
    table = _read_csv(path)
    columns = list(table.columns)
    axes = sorted((int(m.group(1)), c) for c in columns if (m := _AXIS.fullmatch(c)))
    if set(UM_COLUMNS) <= set(columns):
        voxels = _coordinates(path, table, VOXEL_COLUMNS) if set(VOXEL_COLUMNS) <= set(columns) else None
        return _frame(path, _coordinates(path, table, UM_COLUMNS), voxels, size, "")
    if axes:
        if [a for a, _ in axes] not in ([0, 1, 2], [0, 1, 2, 3]):
            raise InputError(
                f"{path}: napari axis columns {[c for _, c in axes]}: expected axis-0 … axis-2 (z, y, x) "
                "or axis-0 … axis-3 (a leading axis, ignored, then z, y, x)"
            )
        coords = _coordinates(path, table, [c for _, c in axes[-3:]])
        if napari_units == "um":
            return _frame(path, coords, None, size, "")
        return _frame(path, None, coords, size, "its napari coordinates are voxels (napari_units='voxel')")
    if set(VOXEL_COLUMNS) <= set(columns):
        return _frame(path, None, _coordinates(path, table, VOXEL_COLUMNS), size, "its z, y, x columns are voxels")
    raise InputError(f"{path}: no coordinate columns; found {columns}, expected {_EXPECTED}")


def read_marked_points(
    path: str | Path,
    *,
    voxel_size: tuple[float, float, float] | None = None,
    cell_type: int = 2,
    non_cell_type: int = 1,
    napari_units: Literal["um", "voxel"] = "voxel",
) -> pd.DataFrame:
    """Annotated points with their class: cells, and non-cells where the file marks them.

    A CellCounter XML file gives both: markers of ``cell_type`` are cells, of
    ``non_cell_type`` non-cells (cellfinder's training files: 2 and 1); other
    types are ignored, and either type may be absent, not both. Any file
    :func:`read_points` reads as CSV gives cells only.

    Returns
    -------
    points : DataFrame
        ``z_um, y_um, x_um`` (float64) and ``cell`` (bool), plus voxel ``z, y, x``
        when known (as :func:`read_points`); cells first, then non-cells.

    Raises
    ------
    InputError
        As :func:`read_points`; an XML file with neither marker type.
    """
    path = Path(path)
    if not (path.is_file() and (path.suffix.lower() == ".xml" or _starts_with(path, b"<"))):
        cells = read_points(path, voxel_size=voxel_size, napari_units=napari_units)
        return cells.assign(cell=np.ones(len(cells), dtype=bool))
    size = _voxel_size(voxel_size, path)
    markers = _cellcounter_types(path)
    if cell_type not in markers and non_cell_type not in markers:
        present = ", ".join(f"{t} ({len(m)} markers)" for t, m in sorted(markers.items())) or "none"
        raise InputError(f"{path}: no marker Type {cell_type} (cells) or {non_cell_type} (non-cells); "
                         f"types present: {present}")  # fmt: skip
    parts = []
    for kind, is_cell in ((cell_type, True), (non_cell_type, False)):
        voxels = markers.get(kind, np.empty((0, 3)))
        frame = _frame(path, None, voxels, size, "its CellCounter markers are voxels")
        parts.append(frame.assign(cell=np.full(len(frame), is_cell)))
    return pd.concat(parts, ignore_index=True)


def read_region_truth(
    path: str | Path, *, key: Literal["id", "acronym"] | None = None, hemisphere: str | None = None
) -> pd.Series:
    """True cell counts per region from a CSV with a region column and a count column.

    Parameters
    ----------
    path : str or Path
        CSV with ``id`` and/or ``acronym``, and ``cells`` (or ``count``), other
        columns ignored. Without a ``hemisphere`` column: one row per region.
        With one (as in the synthetic brain's ``regions_truth.csv`` or a
        cvplgraph region table): one row per (region, hemisphere).
    key : {"id", "acronym"}, optional
        The region column to use; default ``id`` when present, else ``acronym``.
    hemisphere : str, optional
        Keep only the rows of this hemisphere (such as ``left``). Default: the
        total over hemispheres, i.e. the ``both`` rows when the file has them
        (cvplgraph region tables), else the sum of all rows of the region.

    Returns
    -------
    truth : Series of int64
        Named ``true``, indexed by region (index named ``id``, int64, or
        ``acronym``, str), in order of first appearance.

    Raises
    ------
    InputError
        Missing or unreadable file, missing columns, a hemisphere absent from
        the file, empty or duplicated regions, counts that are not whole numbers ≥ 0.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file; expected a CSV of true counts per region")
    table = _read_csv(path)
    columns = list(table.columns)
    keys = [key] if key else ["id", "acronym"]
    key_column = next((c for c in keys if c in columns), None)
    count_column = next((c for c in ("cells", "count") if c in columns), None)
    if key_column is None or count_column is None:
        raise InputError(f"{path}: found columns {columns}, expected {' or '.join(keys)} and cells (or count)")
    sides = table["hemisphere"].astype(str) if "hemisphere" in columns else None
    if hemisphere is not None or (sides is not None and (sides == "both").any()):
        wanted = hemisphere or "both"
        if sides is None or not (sides == wanted).any():
            present = sorted(set(sides)) if sides is not None else "no hemisphere column"
            raise InputError(f"{path}: hemisphere {wanted!r}: not in the file; expected one of {present}")
        table, sides = table[sides == wanted].reset_index(drop=True), None
    if key_column == "id":
        regions = pd.Series(_whole(path, table, "id", minimum=None))
    else:
        regions = table["acronym"].astype("string").str.strip()
        empty = regions.isna() | (regions == "")
        if empty.any():
            raise InputError(
                f"{path}: acronym is empty in data row {int(np.argmax(empty)) + 1}; expected a region name"
            )
        regions = regions.astype(object)
    rows = regions if sides is None else pd.Series(list(zip(regions, sides)))
    duplicated = rows[rows.duplicated()]
    if len(duplicated):
        what = "region" if sides is None else "(region, hemisphere)"
        raise InputError(f"{path}: {what} {_show(duplicated.iloc[0])} appears more than once; expected one row each")
    counts = pd.Series(
        _whole(path, table, count_column, minimum=0), index=pd.Index(regions.to_numpy(), name=key_column)
    )
    return counts.groupby(level=0, sort=False).sum().astype(np.int64).rename("true")


# --------------------------------------------------------------------------- helpers


def _voxel_size(value: Sequence[float] | None, path: Path) -> np.ndarray | None:
    if value is None:
        return None
    try:
        size = [float(v) for v in value]
    except (TypeError, ValueError):
        size = []
    if len(size) != 3 or not all(math.isfinite(v) and v > 0 for v in size):
        raise InputError(f"{path}: voxel_size {value!r}: expected three positive (z, y, x) sizes in µm")
    return np.asarray(size)


def _show(value: object) -> str:
    """repr of a cell of a table, without numpy's wrapping (``2.5``, not ``np.float64(2.5)``)."""
    if isinstance(value, tuple):
        return repr(tuple(v.item() if isinstance(v, np.generic) else v for v in value))
    return repr(value.item() if isinstance(value, np.generic) else value)


def _starts_with(path: Path, prefix: bytes) -> bool:
    with path.open("rb") as f:
        return f.read(1024).lstrip().removeprefix(b"\xef\xbb\xbf").startswith(prefix)


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        table = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InputError(
            f"{path}: unreadable CSV ({reason}); expected a header row and comma-separated values"
        ) from None
    table.columns = [str(c).strip() for c in table.columns]
    return table


def _coordinates(path: Path, table: pd.DataFrame, columns: list[str]) -> np.ndarray:
    """(n, 3) float64 from three columns; the first non-numeric or non-finite value is named."""
    out = np.empty((len(table), len(columns)))
    for k, column in enumerate(columns):
        values = pd.to_numeric(table[column], errors="coerce").to_numpy(dtype=np.float64)
        bad = ~np.isfinite(values)
        if bad.any():
            row = int(np.argmax(bad))
            raise InputError(
                f"{path}: {column} = {_show(table[column].iloc[row])} in data row {row + 1}; expected a finite number"
            )
        out[:, k] = values
    return out


def _whole(path: Path, table: pd.DataFrame, column: str, *, minimum: int | None) -> np.ndarray:
    """int64 from a column of whole numbers (``2.0`` is accepted), each ≥ ``minimum``."""
    values = pd.to_numeric(table[column], errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values) | (values != np.round(values))
    if minimum is not None:
        bad |= values < minimum
    if bad.any():
        row = int(np.argmax(bad))
        expected = "a whole number" + (f" ≥ {minimum}" if minimum is not None else "")
        raise InputError(
            f"{path}: {column} = {_show(table[column].iloc[row])} in data row {row + 1}; expected {expected}"
        )
    return values.astype(np.int64)


def _cellcounter(path: Path, cell_type: int) -> np.ndarray:
    """(n, 3) voxel (z, y, x) of the markers of one type in an ImageJ CellCounter XML file."""
    markers = _cellcounter_types(path)
    if cell_type not in markers:
        present = ", ".join(f"{t} ({len(m)} markers)" for t, m in sorted(markers.items())) or "none"
        raise InputError(f"{path}: no marker Type {cell_type}; types present: {present}")
    return markers[cell_type]


def _cellcounter_types(path: Path) -> dict[int, np.ndarray]:
    """Marker type → (n, 3) voxel (z, y, x) of its markers, for every type in a CellCounter XML file."""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise InputError(f"{path}: unreadable XML ({e}); expected an ImageJ CellCounter marker file") from None
    if root.tag != "CellCounter_Marker_File":
        raise InputError(f"{path}: root element <{root.tag}>; expected <CellCounter_Marker_File> (ImageJ CellCounter)")
    markers: dict[int, list[ET.Element]] = {}
    for n, group in enumerate(root.iter("Marker_Type"), start=1):
        text = (group.findtext("Type") or "").strip()
        if not text.lstrip("-").isdigit():
            raise InputError(f"{path}: Marker_Type {n} has <Type>{text}</Type>; expected an integer type")
        markers.setdefault(int(text), []).extend(group.findall("Marker"))
    out: dict[int, np.ndarray] = {}
    for kind, elements in markers.items():
        out[kind] = np.empty((len(elements), 3))
        for n, marker in enumerate(elements):
            for k, tag in enumerate(("MarkerZ", "MarkerY", "MarkerX")):
                value = marker.findtext(tag)
                try:
                    out[kind][n, k] = float(value if value is not None else "nan")
                except ValueError:
                    out[kind][n, k] = np.nan
                if not math.isfinite(out[kind][n, k]):
                    raise InputError(
                        f"{path}: marker {n + 1} of Type {kind} has {tag} {value!r}; expected a finite number"
                    )
    return out


def _frame(
    path: Path, um: np.ndarray | None, voxels: np.ndarray | None, size: np.ndarray | None, why: str
) -> pd.DataFrame:
    """The output frame from µm and/or voxels; converts with ``size`` where needed."""
    if um is None:
        if size is None:
            raise InputError(f"{path}: {why}; pass voxel_size=(z, y, x) in µm to convert them")
        um = voxels * size  # type: ignore[operator]
    if voxels is None and size is not None:
        voxels = um / size
    frame = pd.DataFrame(um, columns=UM_COLUMNS, dtype=np.float64)
    if voxels is not None:
        frame[VOXEL_COLUMNS] = np.asarray(voxels, dtype=np.float64)
    return frame
