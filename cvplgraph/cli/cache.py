"""``cvplgraph cache``: list, show, verify or garbage-collect a cache."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from cvplgraph.cli._common import add_common, aligned, fmt_bytes
from cvplgraph.errors import CvplError


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``cache`` and its options to the sub-parsers ``sub``."""
    p = sub.add_parser(
        "cache",
        help="list, show, verify or garbage-collect the cache of a spec",
        description="Inspect and maintain a cache: `ls` lists entries (node, type, size, age, spec); "
        "`show KEY` prints an entry with its provenance; `verify` re-checks every entry's store "
        "(metadata and chunk presence, with --deep every chunk's values) and moves damaged entries "
        "out of the manifest so the next run recomputes them (exit 1 when any); `gc` removes entries "
        "not needed by the given specs or beyond an age/size budget, and leftovers no entry describes "
        "(stores and chunk records of killed runs) once idle for --grace hours (--dry-run lists them).",
    )
    p.add_argument("action", choices=["ls", "show", "verify", "gc"])
    p.add_argument(
        "args", nargs="*", metavar="ARG",
        help="show: a key (or its start); gc: spec files whose nodes to keep; ls, verify: a spec (as --spec)",
    )
    p.add_argument("--cache", metavar="URL", help="the cache (default: the cache of the first spec given, or ./cache)")
    p.add_argument("--spec", metavar="TOML", help="take the cache URL from this spec")
    p.add_argument("--deep", action="store_true", help="verify: also re-read every chunk and compare checksums")
    p.add_argument("--dry-run", action="store_true", help="gc: list what would be removed, remove nothing")
    p.add_argument("--max-age", type=float, metavar="DAYS", help="gc: also remove entries older than this")
    p.add_argument("--max-size", type=float, metavar="GB", help="gc: then remove the oldest until the cache fits")
    p.add_argument("--grace", type=float, default=24.0, metavar="HOURS",
                   help="gc: leave leftovers written to in the last HOURS alone, a run may still be writing "
                   "them (default 24)")  # fmt: skip
    add_common(p)
    return p


def handle(args: argparse.Namespace) -> int:
    """``ls``, ``show``, ``verify`` or ``gc``; 1 when ``verify`` found damaged entries."""
    import datetime
    import json
    import time

    from cvplgraph.cache.manifest import Manifest
    from cvplgraph.cache.tool import age, verify
    from cvplgraph.spec.parse import load_spec

    specs = args.args if args.action == "gc" else []
    given = args.args[0] if args.action in ("ls", "verify") and args.args else None  # `cache verify SPEC`
    source = args.spec or (specs[0] if specs else given)
    url = args.cache or (load_spec(source).cache_url if source else "cache")
    manifest = Manifest(url)
    if not manifest.fs.exists(manifest.root):  # a mistyped --cache must not read as an empty, healthy cache
        raise CvplError(f"{url}: no cache there (nothing at that path); expected the [cache] url of a spec that "
                        "has run (--spec SPEC or --cache URL)")  # fmt: skip
    if manifest.fs.isfile(manifest.root):
        raise CvplError(f"{url}: is a file; expected a cache folder (--spec SPEC or --cache URL)")
    entries, unreadable = manifest.scan()
    entries.sort(key=lambda e: e.created)
    if args.action != "verify":  # verify reports them on stdout, as it does damaged entries
        for bad in unreadable:
            print(f"warning: {bad}", file=sys.stderr)
    if args.action == "ls":
        now = time.time()
        rows = [("key", "node", "op", "type", "bytes", "age", "spec")]
        rows += [(e.key, e.node, e.op, e.type, fmt_bytes(e.bytes), age(now - e.created), e.spec) for e in entries]
        print("\n".join(aligned(rows)))
        print(f"{len(entries)} entries, {fmt_bytes(sum(e.bytes for e in entries))}; cache: {manifest.url}")
        return 0
    if args.action == "show":
        if len(args.args) != 1:
            raise CvplError("cache show: give one key (or the start of one); `cvplgraph cache ls` lists them")
        found = [e for e in entries if e.key.startswith(args.args[0])]
        if len(found) != 1:
            what = "no entry" if not found else f"{len(found)} entries"
            raise CvplError(f"cache show: {what} with a key starting {args.args[0]!r} in {manifest.url}")
        document = json.loads(found[0].to_json())
        for stamp in ("created", "started", "finished"):
            if document.get(stamp):
                document[stamp] = datetime.datetime.fromtimestamp(document[stamp]).isoformat(timespec="seconds")
        print(json.dumps(document, indent=1, sort_keys=True))
        return 0
    if args.action == "verify":
        for bad in unreadable:  # no entry at all: set aside, so that runs stop tripping over it
            print(f"invalid {bad.path}: unreadable ({bad.reason}); moved to {manifest.set_aside(bad)}; "
                  "the next run recomputes that node")  # fmt: skip
        problems = verify(manifest, deep=args.deep)
        for p in problems:
            print(f"invalid {p.entry.key} ({p.entry.node}): {p.reason}; the next run recomputes it")
        total = len(entries) + len(unreadable)
        print(f"{len(entries) - len(problems)} of {total} entries verified{' deeply' if args.deep else ''}")
        return 1 if problems or unreadable else 0
    return _gc(args, manifest, entries, specs)


def _gc(args: argparse.Namespace, manifest: Any, entries: list[Any], specs: list[str]) -> int:
    """Entries beyond the specs or budgets given, then leftovers idle for longer than --grace."""
    from cvplgraph.cache.lease import leased_keys, leases
    from cvplgraph.cache.tool import garbage, orphans
    from cvplgraph.engine.plan import reachable_keys

    if not manifest.has_marker():
        if not entries:  # no marker, no entry: not a cache this tool made; delete nothing in it
            raise CvplError(f"{manifest.url}: not a cvplgraph cache (no CACHEDIR.TAG, no manifest entries); "
                            "expected the [cache] url of a spec that has run; nothing removed")  # fmt: skip
        if not args.dry_run:
            manifest.write_marker()  # a cache made before the marker existed
    live, dead = leases(manifest)
    in_use = {key: lease for lease in live for key in lease.keys}
    keep = reachable_keys(specs) if specs else None
    max_bytes = int(args.max_size * 1e9) if args.max_size is not None else None
    doomed = garbage(entries, keep=keep, max_age_days=args.max_age, max_bytes=max_bytes)
    for e in [e for e in doomed if e.key in in_use]:
        print(f"kept {e.key} ({e.node}): in use by {in_use[e.key].describe()}")
    doomed = [e for e in doomed if e.key not in in_use]
    verb = "would remove" if args.dry_run else "removed"
    failed: list[str] = []
    for e in doomed:
        print(f"{verb} {e.key} ({e.node}, {fmt_bytes(e.bytes)})")
        if not args.dry_run:
            manifest.remove_entry(e)
    if not args.dry_run and doomed:
        # the leases once more, now that the entry files are gone: a run that started meanwhile either
        # found its entry missing (and planned again) or holds a lease seen here (docs/cache.md)
        started = leased_keys(manifest)
        for e in doomed:
            if e.key in started:
                who = started[e.key].describe()
                print(f"kept the store of {e.key}: {who} started reading it; a later gc removes it")
            else:
                failed += manifest.remove_store(e)
    committed = {e.key for e in entries} - (set() if args.dry_run else {e.key for e in doomed})
    leftovers = orphans(manifest, committed, grace_seconds=args.grace * 3600)
    for o in leftovers:
        print(f"{verb} {o.path} ({fmt_bytes(o.bytes)}: {o.reason})")
        if not args.dry_run:
            failure = manifest.remove_path(f"{manifest.root}/{o.path}")
            if failure:
                failed.append(failure)
    for path in dead if not args.dry_run else []:
        manifest.remove_path(path)  # the lease of a run that ended without releasing it (killed)
    budget = specs or args.max_age is not None or args.max_size is not None
    done = "to remove" if args.dry_run else "removed"
    print(
        f"{len(doomed)} of {len(entries)} entries and {len(leftovers)} leftovers {done}"
        + ("" if budget else " (no spec or budget given: entries kept, only leftovers idle for --grace hours)")
    )
    for failure in failed:
        print(f"could not remove {failure}; a later gc tries again", file=sys.stderr)
    return 1 if failed else 0
