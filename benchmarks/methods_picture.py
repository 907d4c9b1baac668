"""Detections of every method of the shipped suite on the real crop, drawn over its projection.

Runs the `clumped_real` dataset of ``benchmarks/methods.toml`` (BrainGlobe cellfinder test data,
BSD-3; no truth) through every variant of the suite, in one graph through the suite's cache like
`cvplgraph bench`, and draws one panel per variant: the maximum-intensity projection of the planes
5–15 of the region of the crop that holds tissue, with the detections of those planes as circles.

    python benchmarks/methods_picture.py            # writes docs/images/methods-clumped-real.png
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import tifffile

from cvplgraph.bench.run import run_suite
from cvplgraph.bench.suite import load_suite

ROOT = Path(__file__).resolve().parents[1]
PLANES = (5, 15)  # z range drawn (voxels)
BOX = (0, 320, 400, 740)  # y0, y1, x0, x1 (voxels): the tissue, with the cluster of bright cells


def main(out: Path = ROOT / "docs" / "images" / "methods-clumped-real.png") -> None:
    suite = load_suite(ROOT / "benchmarks" / "methods.toml")
    suite = replace(suite, datasets=tuple(d for d in suite.datasets if d.name == "clumped_real"))
    scores, _ = run_suite(suite, keep_points=True)
    dataset = suite.datasets[0]
    image = tifffile.imread(ROOT / "benchmarks" / dataset.input["tiff"]).astype(np.float32)
    y0, y1, x0, x1 = BOX
    mip = image[PLANES[0] : PLANES[1], y0:y1, x0:x1].max(axis=0)
    shown = np.clip(mip / np.percentile(mip, 99.7), 0, 1)
    columns = 4
    rows = -(-len(scores) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3.3 * rows))
    for ax, score in zip(axes.ravel(), scores):
        points = score.points
        assert points is not None
        z, y, x = (points[c].to_numpy() for c in ("z", "y", "x"))
        keep = (z >= PLANES[0]) & (z < PLANES[1]) & (y >= y0) & (y < y1) & (x >= x0) & (x < x1)
        ax.imshow(shown, cmap="gray", interpolation="nearest")
        ax.scatter(x[keep] - x0, y[keep] - y0, s=14, facecolors="none", edgecolors="#ffcc00", linewidths=0.6)
        ax.set_title(f"{score.variant}: {score.found:,} in the crop", fontsize=9)
        ax.set_axis_off()
    for ax in axes.ravel()[len(scores) :]:
        ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(out, dpi=70)
    print(out)


if __name__ == "__main__":
    main(*(Path(a) for a in sys.argv[1:]))
