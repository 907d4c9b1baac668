"""What a search reports: its trials (one line each, a table, trials.csv, the leave-one-crop-out
choice) and the tuned spec it writes (see :mod:`cvplgraph.bench.tune`)."""

from __future__ import annotations

import datetime
import math
import re
from dataclasses import dataclass
from typing import Any

from cvplgraph.bench.run import Score
from cvplgraph.errors import CvplError
from cvplgraph.spec.fields import locate_fields


@dataclass
class Trial:
    """One set of parameter values, scored on every crop (or stopped on the probe)."""

    number: int  # 1-based
    values: dict[tuple[str, str], Any]
    crops: dict[str, Score]  # per crop, in crop order; empty when flooded on the probe
    pooled: Score  # the crops' counts summed, scored as one
    flooded: bool = False  # more than `budget` detections per true cell (probe, or the crops)
    over_budget: bool = False  # recall@K: more than K detections per true cell, scored 0
    objective: float = 0.0
    seconds: float = 0.0  # task seconds of the trial's nodes (probe and crops, shared ones included)




def pool(scores: list[Score], name: str) -> Score:
    """The crops' counts summed and scored as one crop (precision, recall, F1 of the sums)."""
    from cvplgraph.bench.metrics import ratios

    found = sum(s.found for s in scores)
    true = sum(s.true or 0 for s in scores)
    tp = sum(s.tp or 0 for s in scores)
    precision, recall, f1 = ratios(tp, found, true)
    return Score("all", name, found, true, tp, found - tp, true - tp, precision, recall, f1, found - true,
                 100.0 * (found - true) / true if true else None, scores[0].tolerance_um if scores else None,
                 sum(s.seconds_own for s in scores), sum(s.seconds_total for s in scores))  # fmt: skip


def trial_line(trial: Trial, total: int, goal: str, k: float | None) -> str:
    """One line per finished trial (printed even with --quiet)."""
    values = ", ".join(f"{n}.{p}={v}" for (n, p), v in trial.values.items())
    s = trial.pooled
    if trial.flooded and not trial.crops:
        return f"trial {trial.number}/{total}: {values} → flooded (about {s.found} found for {s.true} true; stopped)"
    score = f"F1 {s.f1:.3f}" if goal == "f1" else f"recall@{k:g} {trial.objective:.3f} (F1 {s.f1:.3f})"
    crops = " [" + ", ".join(f"{n} {c.f1:.3f}" for n, c in trial.crops.items()) + "]" if len(trial.crops) > 1 else ""
    mark = " flooded" if trial.flooded else " over budget" if trial.over_budget else ""
    return f"trial {trial.number}/{total}: {values} → {score}{crops}, found {s.found} of {s.true} true{mark}"


def trial_table(trials: list[Trial], keys: list[tuple[str, str]], crops: list[str]) -> Any:
    """One row per trial: number, values, pooled counts and scores, per-crop F1, flags, seconds."""
    import pandas as pd

    rows = []
    for t in trials:
        s = t.pooled
        row: dict[str, Any] = {"trial": t.number}
        row.update({f"{n}.{p}": t.values.get((n, p)) for n, p in keys})
        row.update(found=s.found, true=s.true, tp=s.tp, fp=s.fp, fn=s.fn, precision=s.precision, recall=s.recall,
                   f1=s.f1)  # fmt: skip
        if len(crops) > 1:
            row.update({f"f1 {c}": (t.crops[c].f1 if c in t.crops else None) for c in crops})
        row.update(objective=t.objective, flooded=t.flooded, over_budget=t.over_budget, seconds=round(t.seconds, 3))
        rows.append(row)
    frame = pd.DataFrame(rows)
    return frame.astype({c: "Int64" for c in ("found", "true", "tp", "fp", "fn")})


def format_trials(frame: Any, keys: list[tuple[str, str]]) -> str:
    """The trial table as aligned text: values as written, scores to 3 decimals, flags as words."""
    import pandas as pd

    params = {f"{n}.{p}" for n, p in keys}
    heads = [c for c in frame.columns if c not in ("tp", "fp", "fn", "over_budget", "objective", "flooded")]
    rows = [[*heads, "note"]]
    for _, r in frame.iterrows():
        cells = []
        for c in heads:
            v = r[c]
            if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
                cells.append("–")
            elif c in params or not isinstance(v, float):
                cells.append(str(v))
            else:
                cells.append(f"{v:.1f}" if c == "seconds" else f"{v:.3f}")
        cells.append("flooded" if r["flooded"] else "over budget" if r["over_budget"] else "")
        rows.append(cells)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(v.rjust(w) for v, w in zip(row, widths)).rstrip() for row in rows)


def leave_one_out(trials: list[Trial], crops: list[str], goal: str, k: float | None) -> list[tuple[str, int, Score]]:
    """For each crop: the best trial on the other crops (pooled), and its score on this one."""
    out = []
    for held in crops:
        scored = []
        for t in trials:
            if t.flooded or held not in t.crops:
                continue
            others = pool([s for c, s in t.crops.items() if c != held], t.pooled.variant)
            value = others.f1 if goal == "f1" else (0.0 if others.found > (k or 0) * max(others.true or 0, 1)
                                                     else others.recall)  # fmt: skip
            scored.append((-(value or 0.0), abs(others.count_error or 0), t.number, t))
        if scored:
            best = min(scored, key=lambda x: x[:3])[3]
            out.append((held, best.number, best.crops[held]))
    return out


def tuned_text(
    text: str,
    values: dict[tuple[str, str], Any],
    score: Score,
    truth: str,
    crop: tuple[int, ...] | None,
    search: str = "grid",
) -> str:
    """The spec text with the chosen values set and its score in a header comment."""
    from cvplgraph.bench.report import tolerance_text

    lines = text.splitlines()
    where = locate_fields(text)
    for (node, param), value in values.items():
        line = where.get(f"nodes.{node}.{param}")
        if line is not None:
            found = re.match(r"^(\s*[\w\"']+\s*=\s*)([^#]*?)(\s*(#.*)?)$", lines[line - 1])
            if found is None:
                raise CvplError(f"cannot place {node}.{param} in the spec text (line {line})")
            lines[line - 1] = found.group(1) + toml_value(value) + (found.group(3) or "")
        elif (header := where.get(f"nodes.{node}")) is not None:
            lines.insert(header, f"{param} = {toml_value(value)}")
            where = locate_fields("\n".join(lines))
        else:
            raise CvplError(f"cannot place {node}.{param} in the spec text")
    stamp = datetime.date.today().isoformat()
    head = [
        f"# tuned by `cvplgraph tune` on {stamp} against {truth}" + (f", crop {list(crop)}" if crop else ""),
        f"# best of the {search} search: F1 {score.f1:.3f} (precision {score.precision:.3f}, recall "
        f"{score.recall:.3f}), {score.found} found of {score.true} true within {tolerance_text(score.tolerance_um)} µm",
        "# " + ", ".join(f"{node}.{param} = {toml_value(v)}" for (node, param), v in values.items()),
    ]
    return "\n".join(head + lines) + "\n"


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)) and not (isinstance(value, float) and not math.isfinite(value)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise CvplError(f"cannot write {value!r} as a TOML value")
