"""What `cvplgraph bench` writes: a terminal table, CSV and Markdown files, PNG plots."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from cvplgraph.bench.run import DatasetRun, Score

#: Columns of the results table, in order.
COLUMNS = ["dataset", "variant", "found", "true", "tp", "fp", "fn", "precision", "recall", "f1",
           "count_error", "count_error_pct", "tolerance_um", "seconds_own", "seconds_total"]  # fmt: skip


def tolerance_text(tolerance: Any) -> Any:
    """A tolerance as a table shows it: the number, or ``z,y,x`` for an ellipsoid."""
    if isinstance(tolerance, (tuple, list)):
        return ",".join(f"{t:g}" for t in tolerance)
    return tolerance


def table(scores: list[Score]) -> pd.DataFrame:
    rows = [{c: tolerance_text(getattr(s, c)) if c == "tolerance_um" else getattr(s, c) for c in COLUMNS}
            for s in scores]  # fmt: skip
    frame = pd.DataFrame(rows, columns=COLUMNS)
    counts = ["found", "true", "tp", "fp", "fn", "count_error"]
    return frame.astype({c: "Int64" for c in counts})  # integers, with gaps where there is no truth


def region_table(scores: list[Score]) -> pd.DataFrame:
    parts = [s.regions.assign(dataset=s.dataset, variant=s.variant) for s in scores if s.regions is not None]
    if not parts:
        return pd.DataFrame(columns=["dataset", "variant", "region", "found", "true", "error", "error_pct"])
    frame = pd.concat(parts, ignore_index=True)
    return frame[["dataset", "variant", *[c for c in frame.columns if c not in ("dataset", "variant")]]]


def _cell(value: Any, digits: int = 3) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def text_table(frame: pd.DataFrame) -> str:
    """The results as aligned text, for the terminal."""
    shown = ["dataset", "variant", "found", "true", "precision", "recall", "f1", "count_error_pct", "seconds_total"]
    heads = ["dataset", "variant", "found", "true", "precision", "recall", "F1", "count err %", "task s"]
    rows = [heads] + [[_cell(r[c], 1 if c in ("count_error_pct", "seconds_total") else 3) for c in shown]
                      for _, r in frame.iterrows()]  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(heads))]
    lines = [
        "  ".join(v.ljust(w) if i < 2 else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths))) for row in rows
    ]
    return "\n".join(lines)


def markdown_table(frame: pd.DataFrame) -> str:
    heads = ["dataset", "variant", "found", "true", "precision", "recall", "F1", "count error", "count error %",
             "task s (own)", "task s (with shared)"]  # fmt: skip
    shown = ["dataset", "variant", "found", "true", "precision", "recall", "f1", "count_error", "count_error_pct",
             "seconds_own", "seconds_total"]  # fmt: skip
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for _, r in frame.iterrows():
        cells = [_cell(r[c], 1 if c.startswith(("seconds", "count_error_pct")) else 3) for c in shown]
        lines.append("| " + " | ".join(cells).replace("[", "\\[") + " |")
    return "\n".join(lines)


def write_report(folder: Path, scores: list[Score], runs: list[DatasetRun], suite_path: str) -> list[Path]:
    """results.csv, results.md, regions.csv (when any region truth), f1.png, precision_recall.png,
    region_errors.png; returns the files written."""
    folder.mkdir(parents=True, exist_ok=True)
    frame = table(scores)
    regions = region_table(scores)
    written = [folder / "results.csv", folder / "results.md"]
    frame.to_csv(written[0], index=False)
    runs_md = "\n".join(
        f"- {r.dataset}: {r.wall_seconds:.1f} s wall, peak memory {r.peak_rss_bytes / 2**30:.2f} GiB "
        f"(process tree), {len(r.computed)} nodes computed, {len(r.cached)} read from the cache"
        for r in runs
    )
    written[1].write_text(
        f"# Benchmark: {Path(suite_path).name}\n\n{markdown_table(frame)}\n\n"
        "Task seconds: time dask spent in each variant's tasks (own: nodes no earlier variant shares; "
        "with shared: every node it needs). Nodes read from the cache count 0.\n\n"
        f"{runs_md}\n",
        encoding="utf-8",
    )
    if len(regions):
        written.append(folder / "regions.csv")
        regions.to_csv(written[-1], index=False)
    written += _plots(folder, frame, regions)
    return written


def _plots(folder: Path, frame: pd.DataFrame, regions: pd.DataFrame) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = []
    scored = frame.dropna(subset=["f1"])
    datasets = list(dict.fromkeys(frame["dataset"]))
    if len(scored):
        fig, axes = plt.subplots(1, len(datasets), figsize=(max(4, 0.5 * len(frame) + 2), 3.5), squeeze=False)
        for ax, name in zip(axes[0], datasets):
            part = scored[scored["dataset"] == name]
            ax.barh(part["variant"], part["f1"], color="tab:blue")
            ax.set_xlim(0, 1)
            ax.set_title(name)
            ax.set_xlabel("F1")
        fig.tight_layout()
        out.append(folder / "f1.png")
        fig.savefig(out[-1], dpi=100)
        plt.close(fig)
        fig, ax = plt.subplots(figsize=(5, 4))
        for name in datasets:
            part = scored[scored["dataset"] == name]
            ax.scatter(part["recall"], part["precision"], label=name)
            for _, r in part.iterrows():
                ax.annotate(r["variant"], (r["recall"], r["precision"]), fontsize=6)
        ax.set_xlim(0, 1.02)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.legend(fontsize=7)
        fig.tight_layout()
        out.append(folder / "precision_recall.png")
        fig.savefig(out[-1], dpi=100)
        plt.close(fig)
    if len(regions):
        fig, ax = plt.subplots(figsize=(6, 4))
        for (dataset, variant), part in regions.groupby(["dataset", "variant"], sort=False):
            ax.plot(part["region"].astype(str), part["error_pct"], marker="o", label=f"{dataset}: {variant}")
        ax.set_ylabel("count error, %")
        ax.tick_params(axis="x", rotation=90, labelsize=6)
        ax.legend(fontsize=6)
        fig.tight_layout()
        out.append(folder / "region_errors.png")
        fig.savefig(out[-1], dpi=100)
        plt.close(fig)
    return out
