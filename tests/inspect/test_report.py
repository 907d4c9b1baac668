"""The run report (cvplgraph.inspect.report): one self-contained HTML page per recorded run, from real runs.

The page is checked the way a reader would use it: it parses, it names every node, its counts
and region densities equal the run's output files, its pictures are real PNGs and an inline SVG
of the DAG, it loads nothing from anywhere, and a browser draws it.
"""

from __future__ import annotations

import base64
import copy
import re
import shutil
import subprocess
from dataclasses import dataclass
from html.parser import HTMLParser
from io import BytesIO
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pandas as pd
import pytest
import zarr
from conftest import SPEC
from dask.callbacks import Callback
from PIL import Image

import cvplgraph.engine.execute
from cvplgraph.cli import main
from cvplgraph.cli.demo import demo_spec_text
from cvplgraph.inspect.report import TOP_REGIONS, input_mip, render_report
from cvplgraph.inspect.runlog import load_record, run_records
from cvplgraph.io.stores import write_array
from cvplgraph.spec.model import StoreSpec
from cvplgraph.synth.brain import write_synthetic_brain
from cvplgraph.synth.volume import SynthParams, write_synthetic
from cvplgraph.types import PortType
from cvplgraph.values import Geometry, wrap

pytestmark = pytest.mark.slow  # whole runs, subprocesses or napari; see pyproject.toml's markers

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
NODES = ["input", "mask", "cells", "centroids", "counts"]
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
#: attributes through which a page can make the browser load something
LOADING = {"src", "href", "xlink:href", "srcset", "action", "formaction", "data", "poster", "background", "manifest"}


class Page(HTMLParser):
    """What a report shows: its tables (by class), DAG node titles, images, loading attributes, text."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.open: list[str] = []
        self.tables: dict[str, list[list[str]]] = {}
        self.titles: list[str] = []
        self.images: list[str] = []
        self.loads: list[tuple[str, str, str]] = []
        self.styles: list[str] = []
        self.text: list[str] = []
        self._table: list[list[str]] | None = None
        self._cell: list[str] | None = None
        self._title: list[str] | None = None
        self._node_group = False
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_startendtag(tag, attrs)
        if tag not in VOID:
            self.open.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.loads += [(tag, k, v) for k, v in a.items() if k in LOADING]
        self.styles += [a["style"]] if "style" in a else []
        if tag == "img":
            self.images.append(a.get("src", ""))
        elif tag == "table":
            self._table = self.tables.setdefault(a.get("class", ""), [])
        elif tag == "tr" and self._table is not None:
            self._table.append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "g":
            self._node_group = "node" in a.get("class", "").split()
        elif tag == "title" and self._node_group:
            self._title, self._node_group = [], False

    def handle_endtag(self, tag: str) -> None:
        assert self.open and self.open[-1] == tag, f"</{tag}> closes <{self.open[-1] if self.open else None}>"
        self.open.pop()
        if tag in ("td", "th") and self._cell is not None and self._table is not None:
            self._table[-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None
        elif tag == "title" and self._title is not None:
            self.titles.append("".join(self._title))
            self._title = None

    def handle_data(self, data: str) -> None:
        for sink in (self._cell, self._title, self.text):
            if sink is not None:
                sink.append(data)
        if self.open and self.open[-1] == "style":
            self.styles.append(data)

    def column(self, cls: str) -> dict[str, list[str]]:
        """The rows of table ``cls`` by their first cell, without the header."""
        return {row[0]: row[1:] for row in self.tables[cls][1:]}


def number(text: str) -> float:
    return float(text.replace(",", ""))


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(BytesIO(png)).convert("RGB"))


def assert_not_blank(rgb: np.ndarray, *, colours: int, ink: float) -> None:
    assert rgb.shape[0] > 50 and rgb.shape[1] > 50
    assert rgb.std() > 15, f"the picture is nearly uniform (std {rgb.std():.1f})"
    assert len(np.unique(rgb.reshape(-1, 3), axis=0)) > colours
    share = (rgb.min(axis=2) < 235).mean()
    assert share > ink, f"only {share:.1%} of the pixels are not white"


def assert_loads_nothing(page: str, parsed: Page) -> None:
    assert parsed.loads, "no src or href at all: the scan would prove nothing"
    for tag, name, value in parsed.loads:
        assert value.startswith(("data:", "#")), f"<{tag} {name}={value[:60]!r}> loads something"
    for style in parsed.styles:
        for target in re.findall(r"url\(\s*['\"]?([^'\")]*)", style):
            assert target.startswith(("data:", "#")), f"style loads {target!r}"
    for needle in ('src="http', "src='http", 'href="http', "href='http", "url(http", "@import", "<script", "<link"):
        assert needle not in page.lower()


@dataclass
class Run:
    folder: Path
    spec: Path
    html: Path
    record: dict


def run_with_report(folder: Path, spec_text: str) -> Run:
    spec, html = folder / "spec.toml", folder / "out" / "report.html"
    spec.write_text(spec_text)
    assert main(["run", str(spec), "--scheduler", "threads", "--quiet", "--report", str(html)]) == 0
    return Run(folder, spec, html, load_record(str(spec)))


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory, synthetic: tuple[Path, pd.DataFrame]) -> Run:
    """The standard 5-node spec over the synthetic volume, run once with ``--report``."""
    return run_with_report(tmp_path_factory.mktemp("report"), SPEC.format(url=synthetic[0], level=0.3))


@pytest.fixture(scope="module")
def brain(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The demo pipeline (with a region table) over a synthetic brain in a procedural atlas."""
    folder = tmp_path_factory.mktemp("brain")
    write_synthetic_brain(folder, atlas="procedural", say=lambda *_: None)
    return run_with_report(folder, demo_spec_text())


# --------------------------------------------------------------------------- the page


def test_run_report_is_one_self_contained_page_about_the_run(ran: Run) -> None:
    page = ran.html.read_text(encoding="utf-8")
    parsed = Page(page)
    assert parsed.open == [], f"unclosed elements: {parsed.open}"
    text = " ".join(parsed.text)
    assert ran.record["id"] in text and "done" in text and str(ran.spec) in text
    nodes = parsed.column("nodes")
    assert sorted(nodes) == sorted(NODES)
    assert nodes["mask"][2] == "compute" and nodes["mask"][3] == "no" and nodes["mask"][6] == "uint8"
    assert nodes["input"][3] == "—"
    centroids = pd.read_csv(ran.folder / "results" / "centroids.csv")
    counts = pd.read_csv(ran.folder / "results" / "counts.csv")
    shown = {name: number(row[1]) for name, row in parsed.column("counts").items()}
    assert shown == {"centroids": len(centroids), "counts": counts["count"].sum()}
    assert len(centroids) > 100
    assert sorted(parsed.titles) == sorted(NODES)
    assert "<svg" in page and "<?xml" not in page and "<!DOCTYPE svg" not in page
    pngs = [src for src in parsed.images if src.startswith("data:image/png;base64,")]
    assert len(pngs) == len(parsed.images) >= 1
    assert_not_blank(pixels(base64.b64decode(pngs[0].split(",", 1)[1])), colours=50, ink=0.1)
    assert ran.record["dashboard"] is None and "http://" not in page and "https://" not in page
    assert_loads_nothing(page, parsed)
    assert f"{len(centroids):,} of {len(centroids):,} points shown" in text


def test_region_page_embeds_the_charts_and_the_table_of_the_region_csv(brain: Run) -> None:
    page = brain.html.read_text(encoding="utf-8")
    parsed = Page(page)
    assert parsed.open == []
    assert sorted(parsed.titles) == sorted(n["name"] for n in brain.record["nodes"])
    assert len(parsed.images) >= 2
    for src in parsed.images:
        assert src.startswith("data:image/png;base64,")
        assert_not_blank(pixels(base64.b64decode(src.split(",", 1)[1])), colours=20, ink=0.05)
    assert_loads_nothing(page, parsed)

    csv = pd.read_csv(brain.folder / "results" / "regions.csv")
    both = csv[csv["hemisphere"] == "both"].sort_values("density_per_mm3", ascending=False)
    both = both[(both["volume_mm3"].fillna(0) > 0) | (both["cells"] > 0)]  # regions outside the image are left out
    rows = parsed.tables["regions region-regions"]
    head, body = rows[0], rows[1:]
    assert len(body) == min(len(both), TOP_REGIONS) and len(body) >= 5
    ids = [int(r[head.index("id")]) for r in body]
    assert sorted(ids) == sorted(both["id"].head(TOP_REGIONS))
    by_id = both.set_index("id")
    sides = csv[csv["hemisphere"] != "both"].set_index(["id", "hemisphere"])["cells"]
    densities = []
    for r in body:
        expected = by_id.loc[int(r[head.index("id")])]
        assert number(r[head.index("cells")]) == expected["cells"]
        assert r[head.index("acronym")] == expected["acronym"]
        shown = r[head.index("cells / mm³")]
        if np.isnan(expected["density_per_mm3"]):
            assert shown == "—"
        else:
            assert number(shown) == pytest.approx(expected["density_per_mm3"], abs=0.051)
            densities.append(number(shown))
        for side in ("left", "right"):
            assert number(r[head.index(side)]) == sides[(int(r[head.index("id")]), side)]
    assert densities == sorted(densities, reverse=True)
    counts = {name: number(row[1]) for name, row in parsed.column("counts").items()}
    cells = len(pd.read_csv(brain.folder / "results" / "cells.csv"))
    blocks = pd.read_csv(brain.folder / "results" / "counts.csv")["count"].sum()
    assert counts == {"centroids": cells, "cell_regions": cells, "counts": blocks}


def test_a_long_region_table_shows_the_densest_regions_and_says_how_many_more(brain: Run) -> None:
    record = copy.deepcopy(brain.record)
    table = record["regions"]["regions"]
    density = table["columns"].index("density_per_mm3")
    ids, extra = table["columns"].index("id"), []
    for k in range(80):  # 80 more regions, densities 0 … 79 cells / mm³
        row = list(table["rows"][0])
        row[ids], row[density] = 100_000 + k, float(k)
        extra.append(row)
    table["rows"] += extra
    parsed = Page(render_report(record))
    body = parsed.tables["regions region-regions"][1:]
    column = table["columns"].index

    def imaged(r: list) -> bool:  # regions outside the image (no voxels, no cells) are not listed
        return (r[column("volume_mm3")] or 0) > 0 or (r[column("cells")] or 0) > 0

    both = sum(1 for r in table["rows"] if r[column("hemisphere")] == "both" and imaged(r))
    assert len(body) == TOP_REGIONS
    assert f"{both - TOP_REGIONS} more region(s) not shown" in " ".join(parsed.text)


def test_user_controlled_text_is_escaped_and_the_dashboard_is_not_a_link(ran: Run) -> None:
    record = copy.deepcopy(ran.record)
    record["spec"]["text"] += '\n# </pre><script>alert("spec")</script>\n'
    record["nodes"][1]["reasons"] = ["<img src=x onerror=alert(1)>"]
    record["environment"]["host"] = "<b>host</b>"
    record["dashboard"] = "http://127.0.0.1:8787/status"
    page = render_report(record)
    parsed = Page(page)
    assert "<script" not in page and "<b>host" not in page and "<img src=x" not in page
    assert "&lt;/pre&gt;&lt;script&gt;alert(&quot;spec&quot;)&lt;/script&gt;" in page
    assert "<code>http://127.0.0.1:8787/status</code>" in page
    assert_loads_nothing(page, parsed)
    assert parsed.column("nodes")["mask"][4] == "<img src=x onerror=alert(1)>"


# --------------------------------------------------------------------------- cvplgraph report


def test_report_command_finds_the_run_by_spec_record_file_and_id(ran: Run, tmp_path: Path) -> None:
    record_file = run_records(ran.record["cache"])[-1]
    assert Path(record_file).name == f"{ran.record['id']}.json"
    run_id, cache = ran.record["id"], ran.record["cache"]
    for i, args in enumerate([[str(ran.spec)], [record_file], [run_id, "--cache", cache]]):
        out = tmp_path / f"nested{i}" / "page.html"
        assert main(["report", *args, "--out", str(out)]) == 0
        parsed = Page(out.read_text(encoding="utf-8"))
        assert ran.record["id"] in " ".join(parsed.text)
        assert sorted(parsed.titles) == sorted(NODES)
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.mark.parametrize(
    "args, message",
    [
        (["20000101-000000-abcdef", "--cache", "{cache}"], "no run with this id"),
        (["{folder}/missing.json"], "no such run record"),
        (["20000101-000000-abcdef"], "--cache"),
        (["{folder}/never.toml"], "no recorded run of this spec"),
    ],
    ids=["unknown-id", "missing-record", "id-without-cache", "spec-never-run"],
)
def test_report_of_a_run_that_is_not_there_is_one_line_on_stderr(
    ran: Run, args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    never = tmp_path / "never.toml"
    never.write_text(ran.spec.read_text().replace('url = "cache"', f'url = "{tmp_path / "empty-cache"}"'))
    folder = tmp_path if "never" in args[0] else ran.folder
    argv = [a.format(cache=ran.record["cache"], folder=folder) for a in args]
    assert main(["report", *argv, "--out", str(tmp_path / "page.html")]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err and "Traceback" not in err
    assert not (tmp_path / "page.html").exists()


def test_an_input_moved_away_after_the_run_leaves_a_note_instead_of_the_picture(tmp_path: Path) -> None:
    volume = tmp_path / "volume.ome.zarr"
    write_synthetic(str(volume), SynthParams(shape=(32, 96, 96), chunks=(16, 48, 48), seed=5))
    run = run_with_report(tmp_path, SPEC.format(url=volume, level=0.3))
    assert len(Page(run.html.read_text()).images) == 1
    volume.rename(tmp_path / "moved.ome.zarr")
    out = tmp_path / "after.html"
    assert main(["report", str(run.spec), "--out", str(out)]) == 0
    page = out.read_text(encoding="utf-8")
    parsed = Page(page)
    assert 'id="mip-note"' in page and "cannot be read" in page and str(volume) in page
    assert parsed.images == []
    assert sorted(parsed.titles) == sorted(NODES)
    assert input_mip(run.record) is None


def test_an_interrupted_run_still_has_a_report(
    tmp_path: Path, synthetic: tuple[Path, pd.DataFrame], monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC.format(url=synthetic[0], level=0.3))
    monkeypatch.setattr(cvplgraph.engine.execute, "execute", interrupted)
    assert main(["run", str(spec), "--scheduler", "threads", "--quiet"]) == 130
    record = load_record(str(spec))
    assert record["status"] == "interrupted" and not record["counts"] and not record["points"]
    out = tmp_path / "page.html"
    assert main(["report", str(spec), "--out", str(out)]) == 0
    parsed = Page(out.read_text(encoding="utf-8"))
    text = " ".join(parsed.text)
    assert "interrupted" in text and "did not finish" in text and "No counts" in text
    assert sorted(parsed.titles) == sorted(NODES)
    assert {row[0]: row[3] for row in parsed.tables["nodes"][1:]}["mask"] == "compute"
    assert len(parsed.images) == 1  # the input is still there: its projection is shown, with no points


# --------------------------------------------------------------------------- the projection


def test_input_mip_reads_a_coarser_level_chunk_by_chunk(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    volume = rng.integers(0, 60_000, size=(24, 128, 160), dtype=np.uint16)
    url = str(tmp_path / "pyramid.ome.zarr")
    geometry = Geometry((24, 128, 160), (4.0, 2.0, 1.5), (10.0, 100.0, 200.0))
    value = wrap(da.from_array(volume, chunks=(8, 32, 32)), geometry)
    dask.compute(*write_array(url, value, PortType.Image, StoreSpec(chunks=(8, 32, 32), multiscale=3), "p"))
    levels = [np.asarray(zarr.open_group(url)[str(k)]) for k in range(3)]
    assert [lv.shape for lv in levels] == [(24, 128, 160), (12, 64, 80), (6, 32, 40)]
    crop = [[0, 24], [32, 96], [16, 160]]  # level-0 voxels: y 64, x 144
    record = {"input": {"spec": {"url": url, "level": 0, "crop": crop, "chunks": [24, 128, 160]}}}

    biggest: list[int] = []

    class Largest(Callback):
        def _posttask(self, key: object, result: object, *args: object) -> None:
            biggest.append(getattr(result, "nbytes", 0))

    with Largest():
        found = input_mip(record, max_pixels=80)
    assert found is not None
    image, extent = found
    # level 0 is 64 × 144 px after the crop, over 80: level 1 (32 × 72) is read, cropped by half
    expected = levels[1][:, 16:48, 8:80].max(axis=0).astype(np.float32) / 65535
    np.testing.assert_allclose(image, expected, rtol=1e-6)
    assert max(biggest) <= 8 * 32 * 32 * 4  # one stored chunk as float32; the volume is never whole
    # level 1 voxel j sits at translation + 2 · scale · j (+ half a level-0 voxel for the mean)
    x0, y0 = 200.0 + 1.5 / 2 + 3.0 * 8, 100.0 + 2.0 / 2 + 4.0 * 16
    assert extent == pytest.approx((x0 - 1.5, x0 - 1.5 + 3.0 * 72, y0 - 2.0 + 4.0 * 32, y0 - 2.0))

    found = input_mip(record, max_pixels=16)  # coarsest level (16 × 36 after the crop) pooled by 3
    assert found is not None and found[0].shape == (5, 12)
    top = levels[2][:, 8:24, 4:40].max(axis=0)[:15, :36].reshape(5, 3, 12, 3).max(axis=(1, 3))
    np.testing.assert_allclose(found[0], top.astype(np.float32) / 65535, rtol=1e-6)


# --------------------------------------------------------------------------- a browser


def test_a_headless_browser_draws_the_report(brain: Run, tmp_path: Path) -> None:
    found = [shutil.which(name) for name in BROWSERS]
    browser = next((path for path in found if path), None)
    if browser is None:
        pytest.skip("no chromium, chromium-browser or google-chrome on the PATH")

    def screenshot(html: Path, png: Path, size: str) -> subprocess.CompletedProcess[bytes]:
        args = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
                f"--user-data-dir={tmp_path / 'profile'}", f"--window-size={size}", f"--screenshot={png}",
                html.as_uri()]  # fmt: skip
        return subprocess.run(args, capture_output=True, timeout=120)

    trivial = tmp_path / "trivial.html"
    trivial.write_text("<!DOCTYPE html><p>hello</p>")
    try:
        done = screenshot(trivial, tmp_path / "trivial.png", "200,100")
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"{browser} does not start: {exc}")
    if done.returncode != 0 or not (tmp_path / "trivial.png").exists():
        last = (done.stderr.decode(errors="replace").strip().splitlines() or ["no message"])[-1]
        pytest.skip(f"{browser} cannot take a screenshot here (exit {done.returncode}): {last}")

    png = tmp_path / "report.png"
    done = screenshot(brain.html, png, "1280,2400")
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    rgb = pixels(png.read_bytes())
    assert rgb.shape == (2400, 1280, 3)
    assert_not_blank(rgb, colours=200, ink=0.08)


def test_cache_gc_leaves_run_records_alone(spec_file: Path) -> None:
    assert main(["run", str(spec_file), "--scheduler", "threads", "--quiet"]) == 0
    records = sorted((spec_file.parent / "cache" / "runs").glob("*.json"))
    assert len(records) == 1
    # keep nothing: every entry and every leftover goes, the records stay
    assert main(["cache", "gc", "--cache", str(spec_file.parent / "cache"), "--max-age", "0", "--grace", "0"]) == 0
    assert list((spec_file.parent / "cache").glob("manifest/*.json")) == []
    assert sorted((spec_file.parent / "cache" / "runs").glob("*.json")) == records
    assert main(["report", str(records[0]), "--out", str(spec_file.parent / "old.html")]) == 0
