"""The report of one run: a single self-contained HTML page made from its run record.

The page shows the run (id, status, spec, date, duration), a summary (nodes computed and
cached, counts, bytes read and written, tasks), the DAG coloured by status (inline SVG), one
row per node (status, cache hit, reasons, shape, dtype, task seconds, stored bytes, blocks),
the counts, the region tables with a bar chart of densities, a maximum-intensity projection
of the input with the recorded centroids over it, the spec's text and the environment.
Plots are PNGs embedded as ``data:`` URLs and the page has no script: it loads nothing.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import math
import os
import secrets
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from dask.utils import format_bytes

from cvplgraph.engine.status import Status
from cvplgraph.errors import CvplError

if TYPE_CHECKING:
    from cvplgraph.spec.model import InputSpec

log = logging.getLogger(__name__)

#: (left, right, bottom, top) of an image in µm: x, then y growing downwards.
Extent = tuple[float, float, float, float]
Crop = tuple[tuple[int, int], ...]  # (start, stop) voxels per z, y, x; stop < 0: to the end
#: Rows of a region table shown on the page (the densest first).
TOP_REGIONS = 50
POINT_COLOURS = ("#ff3b30", "#30c5ff", "#ffd60a", "#5ef35e")
UNFINISHED = ("This run did not finish: no node it was computing was committed, so there are no counts, region "
              "tables or points; the chunks it wrote are kept for the next run.")  # fmt: skip
CSS = """
body { font: 14px/1.45 system-ui, sans-serif; color: #222; margin: 24px auto; max-width: 1180px; padding: 0 16px; }
h1 { font-size: 22px; } h2 { font-size: 17px; margin-top: 28px; border-bottom: 1px solid #ddd; } .note { color: #666; }
table { border-collapse: collapse; margin: 8px 0; font-size: 13px; } th { background: #f3f5f8; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
pre { background: #f6f8fa; border: 1px solid #e1e4e8; padding: 10px; overflow-x: auto; font-size: 12px; }
img, svg { max-width: 100%; height: auto; } .banner { background: #fff4e0; border: 1px solid #f0c070; padding: 8px; }
.nodes td:not(:nth-child(6)) { white-space: nowrap; }
.status { padding: 1px 8px; border-radius: 4px; background: #c3e6c5; } .status.interrupted { background: #ffd29e; }
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _size(n: float | None) -> str:
    """Bytes as the progress bar writes them (:func:`dask.utils.format_bytes`); "—" if unknown."""
    if n is None:
        return "—"
    return format_bytes(int(n))


def _number(value: Any, digits: int = 1) -> str:
    """``value`` with thousands separators and ``digits`` decimals (none for integers); "—" if missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, (int, np.integer)) or digits == 0:
        return f"{round(value):,}"
    return f"{float(value):,.{digits}f}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    return f"{seconds:.1f} s" if seconds < 60 else f"{int(seconds // 60)} min {seconds % 60:.0f} s"


def _table(head: list[str], rows: list[list[Any]], cls: str = "") -> str:
    """An HTML table; every cell is escaped."""
    out = [f'<table class="{_e(cls)}">' if cls else "<table>"]
    if any(head):
        out.append("<tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>")
    out += ["<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows]
    return "\n".join([*out, "</table>"])


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


# --- the input's maximum-intensity projection -----------------------------------------------------------


def _input_spec(record: dict[str, Any]) -> InputSpec:
    from cvplgraph.spec.model import InputSpec

    fields = dict((record.get("input") or {}).get("spec") or {})
    if "url" not in fields:
        raise CvplError("the run record does not say where its input is")
    for name in ("crop", "intensity_range", "chunks"):
        if fields.get(name) is not None:
            fields[name] = tuple(tuple(v) if isinstance(v, list) else v for v in fields[name])
    return InputSpec(**fields)


def _coarse_crop(crop: Crop, factor: np.ndarray, shape: tuple[int, ...]) -> Crop:
    """``crop`` (voxels of the spec's level) in the voxels of a level ``factor`` times coarser."""
    out = []
    for (start, stop), f, size in zip(crop, factor, shape):
        first = min(int(start // f), size - 1)
        out.append((first, stop if stop < 0 else max(first + 1, min(math.ceil(stop / f), size))))
    return tuple(out)


def _level(spec: InputSpec, max_pixels: int) -> InputSpec:
    """``spec`` at the finest pyramid level (from its own) whose y and x fit ``max_pixels``, else the coarsest."""
    from cvplgraph.io.stores import _transforms, axis_names, child_array, multiscales, open_group

    group = open_group(spec.url)
    ms = multiscales(group.attrs.asdict(), spec.url)
    base, choice = None, spec
    for level in range(spec.level, len(ms["datasets"])):
        ds = ms["datasets"][level]
        array = child_array(group, ds["path"], spec.url)
        names = axis_names(ms, array.ndim)
        zyx = [names.index(d) for d in "zyx"]
        shape = tuple(array.shape[i] for i in zyx)
        scale = _transforms(ds.get("coordinateTransformations", []), array.ndim)[0][zyx]
        base = scale if base is None else base
        crop = _coarse_crop(spec.crop, scale / base, shape) if spec.crop else None
        spans = [(b - a if b >= 0 else size - a) for (a, b), size in zip(crop, shape)] if crop else list(shape)
        choice = replace(spec, level=level, crop=crop, chunks=None)
        if max(spans[1:]) <= max_pixels:
            break
    return choice


def _mip(record: dict[str, Any], max_pixels: int) -> tuple[np.ndarray, Extent, int]:
    """The projection along z, its extent and its pyramid level; raises when the input cannot be read."""
    import dask.array as da

    from cvplgraph.io.stores import read_input

    spec = _level(_input_spec(record), max_pixels)
    image = read_input(spec)
    mip = image.data.max(axis=0)  # per chunk, then combined: memory bounded by the chunk size
    scale, translation = image.attrs["scale"], image.attrs["translation"]
    factor = max(1, -(-max(mip.shape) // max_pixels))  # no coarser level left: max-pool the projection
    if factor > 1:
        mip = da.coarsen(np.max, mip, {0: factor, 1: factor}, trim_excess=True)
    values = np.asarray(mip.compute(scheduler="threads"))
    left, top = translation[2] - scale[2] / 2, translation[1] - scale[1] / 2
    extent = (left, left + scale[2] * factor * values.shape[1], top + scale[1] * factor * values.shape[0], top)
    return values, extent, spec.level


def input_mip(record: dict[str, Any], max_pixels: int = 1024) -> tuple[np.ndarray, Extent] | None:
    """The maximum-intensity projection along z of a run's input, (Y, X) float32 in [0, 1], and its extent in µm.

    Reads the finest pyramid level whose y and x are at most ``max_pixels`` (the coarsest when none
    is), one chunk at a time. None when the input cannot be read (moved, deleted, unreachable).
    """
    try:
        values, extent, _ = _mip(record, max_pixels)
    except (CvplError, OSError, ValueError, KeyError) as exc:
        log.warning("the run's input cannot be read: %s", exc)
        return None
    return values, extent


def _mip_section(record: dict[str, Any]) -> str:
    url = ((record.get("input") or {}).get("spec") or {}).get("url")
    try:
        values, extent, level = _mip(record, 1024)
    except (CvplError, OSError, ValueError, KeyError) as exc:
        return f'<h2>Input</h2>\n<p class="note" id="mip-note">The input {_e(url)} cannot be read ({_e(exc)}).</p>'
    from matplotlib.figure import Figure

    aspect = (extent[2] - extent[3]) / max(extent[1] - extent[0], 1e-9)
    figure = Figure(figsize=(9, min(max(9 * aspect, 3), 14)), dpi=100)
    ax = figure.subplots()
    low, high = np.percentile(values, [0.5, 99.8])
    ax.imshow(values, cmap="gray", vmin=low, vmax=max(high, low + 1e-6), extent=extent, interpolation="nearest")
    shown: list[str] = []
    same: dict[tuple[tuple[float, ...], ...], list[str]] = {}  # nodes with the same points share a colour
    for name, sample in (record.get("points") or {}).items():
        xs, ys, every = sample.get("x_um") or [], sample.get("y_um") or [], sample.get("every", 1)
        shown.append(f"{name}: {len(xs):,} of {sample.get('total', len(xs)):,} points shown (every {every})")
        same.setdefault((tuple(xs), tuple(ys)), []).append(name)
    for ((xs, ys), names), colour in zip(same.items(), POINT_COLOURS):
        ax.scatter(xs, ys, s=4, c=colour, alpha=0.6, linewidths=0, label=", ".join(names))
    ax.set(xlim=extent[:2], ylim=extent[2:], xlabel="x (µm)", ylabel="y (µm)")
    if shown:
        ax.legend(loc="upper right", markerscale=3, fontsize=8)
    figure.tight_layout()
    png = io.BytesIO()
    figure.savefig(png, format="png")
    caption = f"Maximum-intensity projection along z of {url} (level {level}, {values.shape[0]}×{values.shape[1]} px); "
    caption += "; ".join(shown) or "no points recorded"
    return f"<h2>Input</h2>\n<figure>{_img(png.getvalue(), 'input')}<figcaption>{_e(caption)}.</figcaption></figure>"


# --- sections ---------------------------------------------------------------------------------------------


def _header(record: dict[str, Any]) -> str:
    when = record.get("started") or record.get("finished")
    date = time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(when)) if when else "—"
    status = str(record.get("status", "?"))
    out = [
        f'<h1>cvplgraph run {_e(record.get("id"))} <span class="status {_e(status)}">{_e(status)}</span></h1>',
        f"<p>spec <code>{_e((record.get('spec') or {}).get('path'))}</code> · started {_e(date)} · "
        f"took {_e(_duration(record.get('seconds')))} · cache <code>{_e(record.get('cache'))}</code></p>",
    ]
    if status != "done":
        out.append(f'<p class="banner">{UNFINISHED}</p>')
    return "\n".join(out)


def _summary(record: dict[str, Any]) -> str:
    nodes, io_ = record.get("nodes") or [], record.get("io") or {}
    by = {s: [n["name"] for n in nodes if n.get("status") == s] for s in Status}
    rows = [[label, f"{len(by[s])}: {', '.join(by[s])}" if by[s] else "0"] for s, label in
            ((Status.COMPUTE, "computed" if record.get("status") == "done" else "to compute"),
             (Status.CACHED, "cached"), (Status.INPUT, "inputs"), (Status.SKIP, "skipped"))]  # fmt: skip
    rows += [[f"count · {name}", _number(n)] for name, n in (record.get("counts") or {}).items()]
    rows += [["bytes read", _size(io_.get("read_bytes"))], ["bytes written", _size(io_.get("written_bytes"))],
             ["tasks", _number(io_.get("tasks"))]]  # fmt: skip
    rows += [[f"output · {name}", path] for name, path in (record.get("outputs") or {}).items()]
    out = ["<h2>Summary</h2>", _table(["", ""], rows, "summary")]
    if record.get("dashboard"):
        out.append(f'<p class="note">dask dashboard during the run: <code>{_e(record["dashboard"])}</code></p>')
    return "\n".join(out)


def _dag_section(record: dict[str, Any]) -> str:
    from cvplgraph.inspect.dag import dag_from_record, to_svg

    dag, done = dag_from_record(record), record.get("status") == "done"
    try:
        svg = to_svg(dag)
    except CvplError as exc:  # graphviz failed: the pure-Python drawing has the same content
        log.warning("%s; drawing the DAG without graphviz", exc)
        svg = to_svg(dag, engine="python")
    svg = svg[svg.find("<svg") :]  # no XML prolog or DOCTYPE inside HTML
    for namespace in (' xmlns="http://www.w3.org/2000/svg"', ' xmlns:xlink="http://www.w3.org/1999/xlink"'):
        svg = svg.replace(namespace, "")  # implied by HTML; the page names no URL
    out = f'<h2>Pipeline</h2>\n<div class="dag">{svg}</div>'
    return out + ('\n<p class="note">Green: read from the cache; orange: computed by this run.</p>' if done else "")


def _nodes_table(record: dict[str, Any]) -> str:
    rows = []
    for n in record.get("nodes") or []:
        hit = {Status.CACHED: "yes", Status.COMPUTE: "no"}.get(n.get("status", ""), "—")
        blocks = n.get("blocks")
        rows.append([n["name"], n.get("op"), n.get("type"), n.get("status"), hit, "; ".join(n.get("reasons") or []),
                     "×".join(map(str, n["shape"])) if n.get("shape") else "—", n.get("dtype") or "—",
                     _number(n.get("seconds"), 3), _size(n.get("bytes")) if n.get("stored") else "—",
                     f"{blocks[0]} / {blocks[1]}" if blocks else "—"])  # fmt: skip
    head = ["node", "op", "type", "status", "cache hit", "reasons", "shape", "dtype", "task s", "stored",
            "blocks written / resumed"]  # fmt: skip
    return "<h2>Nodes</h2>\n" + _table(head, rows, "nodes")


def _counts(record: dict[str, Any]) -> str:
    counts, points = record.get("counts") or {}, record.get("points") or {}
    if not counts:
        return '<h2>Counts</h2>\n<p class="note">No counts: the run did not finish.</p>'
    types = {n["name"]: n.get("type") for n in record.get("nodes") or []}
    rows = [[name, types.get(name), _number(n), _number(len(points[name].get("x_um") or [])) if name in points else "—"]
            for name, n in counts.items()]  # fmt: skip
    return "<h2>Counts</h2>\n" + _table(["node", "type", "count", "points in the picture"], rows, "counts")


def _region_section(name: str, table: dict[str, Any]) -> str:
    import pandas as pd

    from cvplgraph.io.outputs import density_chart

    frame = pd.DataFrame(table["rows"], columns=table["columns"])
    for column in ("cells", "volume_mm3", "density_per_mm3", "cells_inclusive", "density_inclusive_per_mm3"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce")  # JSON nulls → NaN, sorted last
    both = frame[frame["hemisphere"] == "both"].sort_values(["density_per_mm3", "id"], ascending=[False, True])
    unseen = int(((both["volume_mm3"].fillna(0) <= 0) & (both["cells"].fillna(0) <= 0)).sum())
    both = both[(both["volume_mm3"].fillna(0) > 0) | (both["cells"].fillna(0) > 0)]  # regions the image covers
    sides = frame[frame["hemisphere"].isin(["left", "right"])].pivot_table("cells", "id", "hemisphere", "sum")
    rows = []
    for _, r in both.head(TOP_REGIONS).iterrows():
        side = [sides.at[r["id"], s] if r["id"] in sides.index and s in sides else None for s in ("left", "right")]
        rows.append([int(r["id"]), r["acronym"], r["name"], _number(r["cells"], 0), *(_number(c, 0) for c in side),
                     _number(r["volume_mm3"], 4), _number(r["density_per_mm3"]), _number(r["cells_inclusive"], 0),
                     _number(r["density_inclusive_per_mm3"])])  # fmt: skip
    head = ["id", "acronym", "region", "cells", "left", "right", "volume mm³", "cells / mm³", "cells incl.",
            "cells / mm³ incl."]  # fmt: skip
    more = len(both) - len(rows)
    note = f"{more} more region(s) not shown; the run's region output has them all." if more > 0 else ""
    note += f" {unseen} region(s) of the atlas lie outside the image and have no cells." if unseen else ""
    out = [f"<h3>{_e(name)}</h3>", f'<p class="note">Both hemispheres; the densest {len(rows)} of {len(both)} '
           "imaged regions (density over the region's own voxels; incl. = with its subregions).</p>"]  # fmt: skip
    if ((both["cells"] > 0) & (both["id"] > 0)).any():
        out.append(_img(density_chart(frame), f"densest regions of {name}"))
    out += [_table(head, rows, f"regions region-{name}"), f'<p class="note more">{_e(note)}</p>' if note else ""]
    return "\n".join(out)


def _regions(record: dict[str, Any]) -> str:
    regions = record.get("regions") or {}
    return "".join(["<h2>Regions</h2>\n", *(_region_section(n, t) for n, t in regions.items())]) if regions else ""


def _spec(record: dict[str, Any]) -> str:
    text = (record.get("spec") or {}).get("text")
    if text is None:
        return '<h2>Spec</h2>\n<p class="note">The spec file was not readable when the run started.</p>'
    return f"<h2>Spec</h2>\n<pre>{_e(text)}</pre>"


def _environment(record: dict[str, Any]) -> str:
    env = record.get("environment") or {}
    cluster = env.get("cluster") or {}
    rows = [["python", env.get("python")], ["platform", env.get("platform")], ["host", env.get("host")],
            ["cpus", env.get("cpus")], ["cluster", cluster.get("kind") or "local dask scheduler"],
            ["workers", cluster.get("workers", "—")], ["threads", cluster.get("threads", "—")],
            ["memory", _size(cluster.get("memory_bytes"))], ["address", cluster.get("address", "—")]]  # fmt: skip
    packages = sorted((env.get("packages") or {}).items())
    return "<h2>Environment</h2>\n" + _table(["", ""], rows, "environment") + _table(["package", "version"], packages)


def render_report(record: dict[str, Any]) -> str:
    """The report page of a run record (as :func:`cvplgraph.inspect.runlog.load_record` returns it)."""
    parts = (_header, _summary, _dag_section, _nodes_table, _counts, _regions, _mip_section, _spec, _environment)
    sections = [part(record) for part in parts]
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>cvplgraph run {_e(record.get('id'))}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        + "\n".join(s for s in sections if s)
        + "\n</body>\n</html>\n"
    )


def write_report(record: dict[str, Any], path: str) -> str:
    """Write the report page of ``record`` to ``path`` (folders made; replaced whole, never half-written)."""
    page = render_report(record)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
    try:
        tmp.write_text(page, encoding="utf-8")
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return str(target)
