"""Command implementations: call the library, return data, print it."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from cvplgraph.engine.plan import Plan, Status
from cvplgraph.errors import CvplError


def _fmt_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def _aligned(rows: Sequence[Sequence[str]]) -> list[str]:
    """Rows of text as lines with columns padded to a common width."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]


def format_plan(plan: Plan) -> str:
    rows = [("node", "op", "type", "status", "shape", "chunks", "bytes", "why")]
    for p in plan.nodes.values():
        status = p.status if p.status != Status.COMPUTE else "to compute"
        if p.status == Status.COMPUTE and p.done is not None:
            status = f"partial {p.done:.0%}"
        rows.append(
            (
                p.name,
                p.op,
                p.type,
                status,
                "×".join(map(str, p.shape)) if p.shape else "-",
                "×".join(map(str, p.chunks)) if p.chunks else "-",
                _fmt_bytes(p.nbytes),
                "; ".join(p.reasons),
            )
        )
    lines = _aligned(rows)
    n = len(plan.to_compute())
    lines.append(
        f"\n{n} node(s) to compute, {sum(p.status == 'cached' for p in plan.nodes.values())} cached; "
        f"cache: {plan.manifest.url}"
    )
    return "\n".join(lines)


def cmd_plan(args: argparse.Namespace) -> int:
    from cvplgraph.engine.estimate import plan_with_estimates
    from cvplgraph.spec.parse import load_spec

    plan = plan_with_estimates(load_spec(args.spec))
    if args.explain:
        from cvplgraph.inspect.explain import explain

        print(explain(plan, args.explain))
        return 0
    if args.dag:
        from cvplgraph.inspect.dag import dag_from_plan, write_dag

        text = write_dag(dag_from_plan(plan), args.dag, args.dag_format)
        if text is not None:
            print(text)
            return 0
    print(plan.to_json() if args.json else format_plan(plan))
    if args.dag and not args.json:
        print(f"DAG → {args.dag}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    import time

    from cvplgraph.engine.execute import RunReport, execute
    from cvplgraph.engine.plan import make_plan
    from cvplgraph.engine.progress import Display
    from cvplgraph.inspect.runlog import make_record, new_run_id, save_record
    from cvplgraph.spec.parse import load_spec

    spec = load_spec(args.spec)
    plan = make_plan(spec)
    todo = plan.to_compute()
    display = Display("json" if args.json else "quiet" if args.quiet else "bar")
    started, run_id = time.time(), new_run_id()
    display.event("start", run=run_id, spec=spec.source, compute=todo,
                  cached=plan.cached())  # fmt: skip
    if display.mode == "bar":
        print(f"{len(todo)} node(s) to compute" + (f": {', '.join(todo)}" if todo else " — everything is cached"))
    try:
        results = execute(plan, scheduler=args.scheduler, progress=display, profile=True)
    except KeyboardInterrupt:
        display.close()
        report = RunReport(computed=todo, seconds=time.time() - started)
        url = save_record(make_record(plan, report, run_id=run_id, status="interrupted", started=started))
        display.event("interrupted", run=run_id, record=url)
        raise KeyboardInterrupt(_interrupted(plan, args.spec)) from None
    report = results.report
    record = make_record(plan, report, results, run_id=run_id, started=started)
    record_url = save_record(record)
    page = None
    if args.report:
        from cvplgraph.inspect.report import write_report

        page = write_report(record, args.report)
    if display.mode == "json":
        display.event("done", run=run_id, seconds=round(report.seconds, 3), computed=report.computed,
                      outputs=report.outputs, counts=record["counts"], record=record_url, report=page)  # fmt: skip
    elif display.mode == "bar":
        print(f"done in {report.seconds:.1f} s; computed: {', '.join(report.computed) or 'nothing'}")
        for name, target in report.outputs.items():
            print(f"  {name} → {target}")
        print(f"run {run_id} recorded" + (f"; report → {page}" if page else f" (cvplgraph report {args.spec})"))
    return 0


def _interrupted(plan: Plan, spec: str) -> str:
    """What an interrupted run leaves: nothing committed, the chunks already written kept for the next run."""
    from cvplgraph.cache.resume import partial_progress

    kept = []
    for name in plan.to_compute():
        share = partial_progress(plan.manifest.url, plan.nodes[name].key) if plan.nodes[name].cache else None
        if share:
            kept.append(f"{name} {share:.0%}")
    written = f"; chunks already written are kept ({', '.join(kept)})" if kept else ""
    return (
        f"interrupted: no cache entry was committed for an unfinished node{written} — resume with: cvplgraph run {spec}"
    )


def cmd_report(args: argparse.Namespace) -> int:
    from cvplgraph.inspect.report import write_report
    from cvplgraph.inspect.runlog import load_record

    record = load_record(args.run, cache=args.cache)
    page = write_report(record, args.out or f"report-{record['id']}.html")
    print(f"report → {page}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from dataclasses import replace
    from pathlib import Path

    from cvplgraph.bench.report import table, text_table, write_report
    from cvplgraph.bench.run import run_suite
    from cvplgraph.bench.suite import load_suite

    suite = load_suite(args.suite)
    if args.output:
        suite = replace(suite, output=Path(args.output))
    scores, runs = run_suite(suite, scheduler=args.scheduler, progress=not args.quiet)
    print(text_table(table(scores)))
    for path in write_report(suite.output, scores, runs, suite.path):
        print(f"  → {path}")
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from cvplgraph.bench.report import table, text_table
    from cvplgraph.bench.tune import parse_param, tune

    params = dict(parse_param(p) for p in args.param)
    result = tune(args.spec, args.truth, params=params or None, crop=tuple(args.crop) if args.crop else None,
                  points=args.points, voxel_size=tuple(args.voxel_size) if args.voxel_size else None,
                  tolerance_um=args.tolerance, scheduler=args.scheduler, progress=not args.quiet)  # fmt: skip
    print(text_table(table(result.scores)))
    best = result.best
    chosen = ", ".join(f"{n}.{p} = {v}" for (n, p), v in result.values.items())
    print(f"best: {chosen} — F1 {best.f1:.3f} (trial {result.trials_to_best} of {len(result.scores)})")
    print(f"  → {result.spec}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from cvplgraph.bench.train import train
    from cvplgraph.spec.parse import load_spec

    report = train(load_spec(args.spec), args.annotations, args.out, sigmas_um=tuple(args.sigmas),
                   trees=args.trees, depth=args.depth)  # fmt: skip
    print(
        f"trained on {report.voxels['cell']} cell and {report.voxels['background']} background voxels; "
        f"cell F1 on held-out annotations: {report.held_out_f1:.3f}"
    )
    print(f"model: {report.model}")
    print(f'use it: op = "pixel_classifier", model = "{report.model}"')
    return 0


def cmd_ops(args: argparse.Namespace) -> int:
    from cvplgraph.ops.doc import ops_markdown, ops_text

    print(ops_markdown() if args.markdown else ops_text())
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    if args.atlas:
        return _synth_brain(args)
    from cvplgraph.synth.volume import SynthParams, write_synthetic

    try:
        params = SynthParams(
            shape=tuple(args.shape),
            chunks=tuple(args.chunks or (32, 128, 128)),
            voxel_size=tuple(args.voxel_size or (4.0, 1.5, 1.5)),
            spacing_um=args.spacing or 30.0,
            seed=args.seed,
        )
    except ValueError as exc:
        raise CvplError(f"synth: {exc}") from None
    out = args.out.rstrip("/")
    truth = args.truth or (out.removesuffix(".zarr").removesuffix(".ome") + "_cells.csv")
    cells = write_synthetic(out, params, truth)
    print(
        f"wrote {out} {tuple(args.shape)} voxels of {params.voxel_size} µm with {len(cells)} cells; "
        f"true centres: {truth}"
    )
    return 0


def _synth_brain(args: argparse.Namespace) -> int:
    from cvplgraph.synth.brain import write_synthetic_brain

    options: dict[str, Any] = {"seed": args.seed}
    if args.voxel_size:
        options["voxel_size"] = tuple(args.voxel_size)
    if args.chunks:
        options["chunks"] = tuple(args.chunks)
    if args.spacing:
        options["spacing_um"] = args.spacing
    if args.crop:
        c = args.crop
        options["crop_um"] = ((c[0], c[1]), (c[2], c[3]), (c[4], c[5]))
    try:
        truth = write_synthetic_brain(args.out, atlas=None if args.atlas == "auto" else args.atlas, **options)
    except (ValueError, FileNotFoundError) as exc:
        raise CvplError(f"synth: {exc}") from None
    print(f"wrote {truth.image} with {len(truth.cells)} cells; atlas {truth.atlas}; truth {truth.cells_csv}, "
          f"{truth.regions_csv}")  # fmt: skip
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from cvplgraph.cli.demo import run_demo

    s = run_demo(args.dir, atlas=args.atlas, scheduler=args.scheduler, progress=not args.quiet)
    print(f"cells found: {s.cells_found}, true cells: {s.true_cells} ({s.error_percent:+.2f} %)")
    print("cells per region (both hemispheres), found / true:")
    for row in s.regions.head(12).itertuples():
        print(f"  {row.acronym:<16} {row.found:>6} / {row.true:<6} ({row.error_percent:+.1f} %)")
    if len(s.regions) > 12:
        print(f"  … {len(s.regions) - 12} more regions in {s.outputs['regions'].split(', ')[0]}")
    print(f"time: {s.seconds:.1f} s in all, {s.pipeline_seconds:.1f} s in the pipeline")
    for name, target in s.outputs.items():
        print(f"output {name}: {target}")
    print(f"cache: {s.cache}")
    print(f"report: {s.report} (open it in a browser)")
    print(f"next: `cvplgraph plan {s.spec}` shows every node cached; edit a parameter there and plan again")
    return 0


def cmd_view(args: argparse.Namespace) -> int:
    import sys

    from cvplgraph.inspect.view import add, layers, screenshot
    from cvplgraph.spec.parse import load_spec

    spec = load_spec(args.spec)
    found = layers(spec, args.nodes)
    for name, why in found.missing.items():
        print(f"cvplgraph: {name}: {why}", file=sys.stderr)
    status = 1 if found.missing and args.nodes else 0  # a node named but not cached
    if args.no_window:
        for data, kwargs, layer_type in found.data:
            levels = len(data) if kwargs.get("multiscale") else 1
            shape = tuple((data[0] if kwargs.get("multiscale") else data).shape)
            print(f"{kwargs['name']}: {layer_type}, shape {shape}, {levels} level(s), "
                  f"scale {tuple(kwargs['scale'])}, translate {tuple(kwargs['translate'])}")  # fmt: skip
        return status
    try:
        import napari
    except ImportError:
        raise CvplError("napari is not installed; install it with: pip install 'cvplgraph[napari]'") from None
    title = f"cvplgraph: {spec.path}"
    if args.screenshot:
        screenshot(found, args.screenshot, size=args.size, z=args.z, thickness=args.thickness, title=title)
        print(f"screenshot: {args.screenshot}")
        return status
    viewer = napari.Viewer(title=title)
    add(viewer, found)
    napari.run()
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    import datetime
    import json
    import time

    from cvplgraph.cache.manifest import Manifest
    from cvplgraph.cache.tool import age, verify
    from cvplgraph.spec.parse import load_spec

    specs = args.args if args.action == "gc" else []
    source = args.spec or (specs[0] if specs else None)
    url = args.cache or (load_spec(source).cache_url if source else "cache")
    manifest = Manifest(url)
    entries = sorted(manifest.entries(), key=lambda e: e.created)
    if args.action == "ls":
        now = time.time()
        rows = [("key", "node", "op", "type", "bytes", "age", "spec")]
        rows += [(e.key, e.node, e.op, e.type, _fmt_bytes(e.bytes), age(now - e.created), e.spec) for e in entries]
        print("\n".join(_aligned(rows)))
        print(f"{len(entries)} entries, {_fmt_bytes(sum(e.bytes for e in entries))}; cache: {manifest.url}")
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
        problems = verify(manifest, deep=args.deep)
        for p in problems:
            print(f"invalid {p.entry.key} ({p.entry.node}): {p.reason}; the next run recomputes it")
        print(f"{len(entries) - len(problems)} of {len(entries)} entries verified{' deeply' if args.deep else ''}")
        return 1 if problems else 0
    return _cache_gc(args, manifest, entries, specs)


def _cache_gc(args: argparse.Namespace, manifest: Any, entries: list[Any], specs: list[str]) -> int:
    """Entries beyond the specs or budgets given, then leftovers idle for longer than --grace."""
    from cvplgraph.cache.tool import garbage, orphans
    from cvplgraph.engine.plan import reachable_keys

    keep = reachable_keys(specs) if specs else None
    max_bytes = int(args.max_size * 1e9) if args.max_size is not None else None
    doomed = garbage(entries, keep=keep, max_age_days=args.max_age, max_bytes=max_bytes)
    verb = "would remove" if args.dry_run else "removed"
    for e in doomed:
        print(f"{verb} {e.key} ({e.node}, {_fmt_bytes(e.bytes)})")
        if not args.dry_run:
            manifest.remove(e)
    committed = {e.key for e in entries} - (set() if args.dry_run else {e.key for e in doomed})
    leftovers = orphans(manifest, committed, grace_seconds=args.grace * 3600)
    for o in leftovers:
        print(f"{verb} {o.path} ({_fmt_bytes(o.bytes)}: {o.reason})")
        if not args.dry_run:
            manifest.fs.rm(f"{manifest.root}/{o.path}", recursive=True)
    budget = specs or args.max_age is not None or args.max_size is not None
    done = "to remove" if args.dry_run else "removed"
    print(
        f"{len(doomed)} of {len(entries)} entries and {len(leftovers)} leftovers {done}"
        + ("" if budget else " (no spec or budget given: entries kept, only leftovers idle for --grace hours)")
    )
    return 0
