"""``cvplgraph plan --explain NODE``: why a node will (or will not) run, component by component.

A node's key hashes its op, the op's version, its parameters and the keys of
its inputs; storage options decide how (not what) is stored. The explanation
compares each of these with the newest cache entry made for the same node
(preferring entries of the same spec file) and prints old → new values,
following a changed input upstream to the node whose own change caused it.
"""

from __future__ import annotations

import time
from typing import Any

from .errors import CvplError
from .hashing import canonical
from .manifest import Entry
from .plan import CACHED, COMPUTE, INPUT_STATUS, SKIP, Plan, _fmt

_SHORT = 12


def _when(entry: Entry) -> str:
    made = time.strftime("%Y-%m-%d %H:%M", time.localtime(entry.created)) if entry.created else "an unknown time"
    return f"made {made}" + (f" by {entry.spec}" if entry.spec else "")


def _value(v: Any) -> str:
    return _fmt(list(v) if isinstance(v, tuple) else v)


def explain(plan: Plan, name: str) -> str:
    """Lines saying why ``name`` will or will not run; raises CvplError for an unknown node."""
    if name not in plan.nodes:
        known = ", ".join(plan.nodes)
        raise CvplError(f"{plan.spec.path}: plan --explain {name}: no such node; the spec's nodes are {known}")
    p = plan.nodes[name]
    lines = [f"{name} ({p.op} → {p.type}), key {p.key}"]
    if p.status == INPUT_STATUS:
        lines.append(
            f"  an input, not computed: {p.reasons[0]}; its key fingerprints the store "
            f"(fingerprint = {plan.spec.input.fingerprint!r} for the image) and what is taken from it"
        )
        return "\n".join(lines)
    if p.status == CACHED:
        entry = plan.entries.get(name) or plan.manifest.get(p.key)
        lines.append(f"  will not run: this key is in the cache ({_when(entry) if entry else 'entry found'})")
        lines.append("  op, version, parameters and every input key are what the entry was made from")
        return "\n".join(lines)
    if p.status == SKIP:
        lines.append("  will not run: cache = false and no node to compute or output needs it")
        return "\n".join(lines)
    lines.append("  will run: " + "; ".join(p.reasons))
    lines += [f"  {line}" for line in _differences(plan, name)]
    return "\n".join(lines)


def _differences(plan: Plan, name: str) -> list[str]:
    node = plan.graph.nodes[name]["node"]
    if not node.nodespec.cache:
        return ["cache = false: computed on every run that needs it, never stored"]
    previous = plan.manifest.previous(name, plan.spec.source)
    if previous is None:
        return [f"no earlier entry for node `{name}` in {plan.manifest.url}: never computed here (or removed)"]
    out = [f"compared with the newest entry for `{name}`: key {previous.key[:_SHORT]}…, {_when(previous)}"]
    rows: list[tuple[str, str, str, str]] = []  # (component, what, old, new)
    if previous.op != node.opdef.name:
        rows.append(("op", "", previous.op, node.opdef.name))
    if previous.version != node.opdef.version:
        rows.append(("op version", node.opdef.name, str(previous.version), str(node.opdef.version)))
    now = dict(node.params)
    for param in sorted(set(now) | set(previous.params)):
        old, new = previous.params.get(param, "(unset)"), now.get(param, "(unset)")
        if canonical(old) != canonical(new):
            rows.append(("parameter", param, _value(old), _value(new)))
    store = node.nodespec.store.to_dict()
    for option in sorted(set(store) | set(previous.store_options)):
        old, new = previous.store_options.get(option), store.get(option)
        if old != new:
            rows.append(("storage option", option, _value(old), _value(new)))
    causes = []
    for port, source in node.inputs:
        new_key, old_key = plan.graph.nodes[source]["node"].key, previous.inputs.get(port)
        if old_key != new_key:
            rows.append(("input", f"{port} ← {source}", _short(old_key), _short(new_key)))
            causes.append((port, source))
    if not rows:
        out.append("nothing differs from that entry: its key is simply not in the cache (removed, or made elsewhere)")
        return out
    width = max(len(f"{c} {w}".strip()) for c, w, _, _ in rows)
    out += [f"  {f'{c} {w}'.strip().ljust(width)}  {old} → {new}" for c, w, old, new in rows]
    for port, source in causes:
        out.append(f"input `{port}` ← {source} changed because:")
        out += [f"  {line}" for line in _cause(plan, source)]
    return out


def _cause(plan: Plan, source: str) -> list[str]:
    p = plan.nodes[source]
    if p.status == INPUT_STATUS:
        return [f"the input {source} ({p.reasons[0]}) has a different fingerprint: its metadata, chunks or the "
                "part taken from it ([input] channel, level, crop, range, chunks) changed"]  # fmt: skip
    if p.status == COMPUTE:
        return [f"{source} will run: " + "; ".join(p.reasons)] + _differences(plan, source)[1:]
    return [f"{source} is cached under a key the entry was not made from (it was computed for another spec)"]


def _short(key: str | None) -> str:
    return "(none)" if key is None else f"{key[:_SHORT]}…"
