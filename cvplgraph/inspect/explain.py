"""``cvplgraph plan --explain NODE``: why a node will (or will not) run, component by component.

A node's key hashes its op, the op's version, its parameters and the keys of
its inputs; storage options decide how (not what) is stored. The explanation
compares each of these with the newest cache entry made for the same node
(preferring entries of the same spec file) and prints old → new values,
following a changed input upstream to the node whose own change caused it.
"""

from __future__ import annotations

import time

from cvplgraph.cache.manifest import Entry
from cvplgraph.engine.plan import Plan, Status, changes, store_changes
from cvplgraph.errors import CvplError

_SHORT = 12


def _when(entry: Entry) -> str:
    made = time.strftime("%Y-%m-%d %H:%M", time.localtime(entry.created)) if entry.created else "an unknown time"
    return f"made {made}" + (f" by {entry.spec}" if entry.spec else "")


def explain(plan: Plan, name: str) -> str:
    """Lines saying why ``name`` will or will not run; raises CvplError for an unknown node."""
    if name not in plan.nodes:
        known = ", ".join(plan.nodes)
        raise CvplError(f"{plan.spec.path}: plan --explain {name}: no such node; the spec's nodes are {known}")
    p = plan.nodes[name]
    lines = [f"{name} ({p.op} → {p.type}), key {p.key}"]
    if p.status is Status.INPUT:
        lines.append(
            f"  an input, not computed: {p.reasons[0]}; its key fingerprints the store "
            f"(fingerprint = {plan.spec.input.fingerprint!r} for the image) and what is taken from it"
        )
        return "\n".join(lines)
    if p.status is Status.CACHED:
        entry = plan.entries.get(name) or plan.manifest.get(p.key)
        lines.append(f"  will not run: this key is in the cache ({_when(entry) if entry else 'entry found'})")
        lines.append("  op, version, parameters and every input key are what the entry was made from")
        return "\n".join(lines)
    if p.status is Status.SKIP:
        lines.append("  will not run: cache = false and no node to compute or output needs it")
        return "\n".join(lines)
    lines.append("  will run: " + "; ".join(p.reasons))
    lines += [f"  {line}" for line in _differences(plan, name)]
    return "\n".join(lines)


def _differences(plan: Plan, name: str) -> list[str]:
    node = plan.node(name)
    if not node.nodespec.cache:
        return ["cache = false: computed on every run that needs it, never stored"]
    previous = plan.manifest.previous(name, plan.spec.source)
    if previous is None:
        return [f"no earlier entry for node `{name}` in {plan.manifest.url}: never computed here (or removed)"]
    out = [f"compared with the newest entry for `{name}`: key {previous.key[:_SHORT]}…, {_when(previous)}"]
    sources = dict(node.inputs)
    found = changes(node, previous)
    found += store_changes(previous.store_options, node.nodespec.store.to_dict())
    if not found:
        out.append("nothing differs from that entry: its key is simply not in the cache (removed, or made elsewhere)")
        return out
    rows = [
        (f"input {c.name} ← {sources[c.name]}", _short(c.old), _short(c.new)) if c.kind == "input"
        else (f"{c.kind} {c.name}".strip(), c.old, c.new)
        for c in found
    ]  # fmt: skip
    width = max(len(what) for what, _, _ in rows)
    out += [f"  {what.ljust(width)}  {old} → {new}" for what, old, new in rows]
    for c in found:
        if c.kind == "input":
            out.append(f"input `{c.name}` ← {sources[c.name]} changed because:")
            out += [f"  {line}" for line in _cause(plan, sources[c.name])]
    return out


def _cause(plan: Plan, source: str) -> list[str]:
    p = plan.nodes[source]
    if p.status is Status.INPUT:
        return [f"the input {source} ({p.reasons[0]}) has a different fingerprint: its metadata, chunks or the "
                "part taken from it ([input] channel, level, crop, range, chunks) changed"]  # fmt: skip
    if p.status is Status.COMPUTE:
        return [f"{source} will run: " + "; ".join(p.reasons)] + _differences(plan, source)[1:]
    return [f"{source} is cached under a key the entry was not made from (it was computed for another spec)"]


def _short(key: str) -> str:
    return key if key == "(none)" else f"{key[:_SHORT]}…"
