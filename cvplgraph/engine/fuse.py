"""Fusion at lowering: chains of block kernels run as one task per block.

Ops stay separate, typed and testable on their own; what the lowering fuses is their per-block
kernels (:mod:`cvplgraph.kernels`). A **chain** is

    head → pointwise … → local pass → reduce …

for example ``input → threshold → connected_components → centroids``: for every block, one task takes
the head's block, applies each pointwise kernel, runs the pass (labels and faces), lists the block's
foreground once and runs every reduce on it (partial statistics). It returns only the small results
(faces, partial statistics); no image, mask or label block outlives it. A cached pointwise node's
chunks are written by that task from memory; a cached pass node keeps its provisional block values
(compressed) so its final values are written after the global step without recomputing the chain.
The global steps (union of faces, merge of statistics) are the ops' own small tasks.

Chains that read the same head form a **group** and share their tasks: a sweep of five thresholds
over one input reads and hands on each block once, then runs the five chains' block work in the
same task.

A node joins a chain only where fusing cannot change what is computed or stored:

* it is computed in this run and, when cached, nothing of it was written before (a resumed node
  keeps the unfused graph, which reads back what was written);
* a pointwise node has one input and feeds only the next stage, is not a declared output, and its
  store (when cached) has one level chunked like its blocks;
* a reduce reads the pass's values as its first input, and its other inputs are arrays of the same
  shape built before the chain.

Everything else is lowered op by op, as without fusion (``fuse = False`` in :func:`lower`).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import operator
import uuid
from dataclasses import dataclass, field
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
from dask._task_spec import Task, TaskRef, convert_legacy_graph
from dask.base import tokenize
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph

from cvplgraph.cache.checkpoint import scope as checkpoint_scope
from cvplgraph.cache.resume import checkpoints_url
from cvplgraph.cache.store import CachedWrite, fused_array_targets
from cvplgraph.engine.plan import Plan, Status
from cvplgraph.errors import CvplError, OpFailed
from cvplgraph.kernels import LocalPass, Pointwise, Reduce, graph_sources, keys_token
from cvplgraph.ops.components import BLOCK_LABELS_ATTR

#: The name fused tasks carry, with a token: one task per block of a group.
FUSED = "fused"


@dataclass
class Chain:
    """Nodes of one chain, upstream first."""

    pointwise: list[str]
    local: str
    reduces: list[str]

    @property
    def nodes(self) -> list[str]:
        return [*self.pointwise, self.local, *self.reduces]


@dataclass
class Group:
    """Chains that read the same head node, fused into one task per block."""

    head: str
    chains: list[Chain] = field(default_factory=list)

    @property
    def nodes(self) -> list[str]:
        return [n for chain in self.chains for n in chain.nodes]


def _fresh(plan: Plan, name: str) -> bool:
    """Computed in this run with nothing of it written before."""
    p = plan.nodes[name]
    return p.status is Status.COMPUTE and not (p.cache and p.done)


def _kernel(plan: Plan, name: str) -> Any:
    node = plan.node(name)
    return None if node.is_input else node.opdef.kernel


def sources(plan: Plan, name: str) -> list[str]:
    """The nodes feeding ``name``, in the order of its op's ports (ports left unconnected are left out)."""
    node = plan.node(name)
    by_port = dict(node.inputs)
    return [by_port[p.name] for p in node.opdef.inputs if by_port.get(p.name) is not None]


def find_groups(plan: Plan) -> list[Group]:
    """The chains of ``plan`` that can be fused, grouped by head (see the module's rules)."""
    outputs = {name for name, _ in plan.spec.outputs}
    groups: dict[str, Group] = {}
    taken: set[str] = set()
    for name in sorted(plan.nodes):
        if not isinstance(_kernel(plan, name), LocalPass) or not _fresh(plan, name):
            continue
        feeds = sources(plan, name)
        if len(feeds) != 1:
            continue
        pointwise: list[str] = []
        after, current = name, feeds[0]
        while (
            isinstance(_kernel(plan, current), Pointwise)
            and _fresh(plan, current)
            and current not in outputs
            and current not in taken
            and set(plan.graph.successors(current)) == {after}
            and len(sources(plan, current)) == 1
            and _fusable_store(plan, current)
        ):
            pointwise.insert(0, current)
            after, current = current, sources(plan, current)[0]
        chain_nodes = {*pointwise, name}
        reduces = [
            r
            for r in sorted(plan.graph.successors(name))
            if isinstance(_kernel(plan, r), Reduce)
            and _fresh(plan, r)
            and r not in taken
            and sources(plan, r)[0] == name
            and sources(plan, r).count(name) == 1
            and not chain_nodes.intersection(sources(plan, r)[1:])
        ]
        chain = Chain(pointwise, name, reduces)
        taken.update(chain.nodes)
        groups.setdefault(current, Group(current)).chains.append(chain)
    return list(groups.values())


def _fusable_store(plan: Plan, name: str) -> bool:
    """A cached pointwise node's chunks can be written by the fused task: one level, stored in its blocks."""
    node = plan.node(name)
    return not node.nodespec.cache or (node.nodespec.store.multiscale == 1 and node.nodespec.store.chunks is None)


@dataclass(frozen=True)
class Stage:
    """One kernel call of a fused task: its node and op (named in a failure), function and parameters."""

    node: str
    op: str
    block: Any
    params: dict[str, Any]

    def __call__(self, *args: Any, **extra: Any) -> Any:
        try:
            return self.block(*args, **self.params, **extra)
        except CvplError:
            raise
        except Exception as exc:
            raise OpFailed(self.node, self.op, exc) from exc


@dataclass(frozen=True)
class ChainProgram:
    """What a fused task runs for one chain: pointwise stages (each with the index of its store target, or
    None), the pass (and whether its values are kept), and each reduce with the positions of its other inputs."""

    pointwise: tuple[tuple[Stage, int | None], ...]
    local: Stage
    keep: int | None
    reduces: tuple[tuple[Stage, tuple[int, ...]], ...]


@dataclass(frozen=True)
class GroupLayout:
    """What every fused task of a group shares: its chains, where blocks start (per axis, the first voxel of each
    block), the stores the chains write and the folders where passes keep their values. A task is given its
    block's index and works out the rest: building a whole brain's 10⁵ tasks costs microseconds each."""

    programs: tuple[ChainProgram, ...]
    grid: tuple[int, ...]
    edges: tuple[tuple[int, ...], ...]
    targets: tuple[Any, ...]  # cvplgraph.cache.store.BlockTarget, one per cached pointwise node
    keeps: tuple[str, ...]
    #: where each task spills its small results (see :class:`cvplgraph.cache.checkpoint.Spilled`)
    scratch: str | None = None


def run_block(layout: GroupLayout, flat: int, head: np.ndarray, *others: np.ndarray) -> tuple[Any, ...]:
    """Block ``flat`` (its number in C order) of a group: every chain's stages in memory; the small results, per
    chain ``(summary, partial, …)`` (spilled to the layout's scratch folder when it has one: the worker keeps
    only a handle), and the number of store blocks written last."""
    from cvplgraph.cache.checkpoint import keep_block, spill_results  # the cache layer, loaded where a task runs

    place = np.unravel_index(flat, layout.grid)
    starts = np.array([layout.edges[a][int(i)] for a, i in enumerate(place)], dtype=np.int64)
    results: list[Any] = []
    written = 0
    for program in layout.programs:
        x = head
        for stage, target in program.pointwise:
            x = stage(x)
            if target is not None:
                written += layout.targets[target].write(x, starts)
        values, summary = program.local(x)
        foreground = _foreground(x) if program.reduces or program.keep is not None else None
        if program.keep is not None:  # a pass's values are non-zero where its input is (checked when kept)
            keep_block(values, f"{layout.keeps[program.keep]}/{flat}", foreground)
        partials = [stage(values, foreground, *(others[i] for i in where), starts=starts)
                    for stage, where in program.reduces]  # fmt: skip
        if layout.scratch is None:
            results.append((summary, *partials))
        else:
            results.append(spill_results(f"{layout.scratch}/{flat}-{len(results)}", (summary, *partials)))
    return (*results, written)


def _block_tasks(array: da.Array) -> dict[tuple[int, ...], list[Any]] | None:
    """Per block of ``array``, the tasks that compute it alone (its chunk read and the checks on it: the
    chain of tasks down to one that others share, like the zarr array), upstream first; None when the
    graph is not in dask's task form."""
    graph = convert_legacy_graph(dict(array.__dask_graph__()))
    dependents: dict[Any, int] = {}
    for task in graph.values():
        for dep in task.dependencies:
            dependents[dep] = dependents.get(dep, 0) + 1
    out = {}
    for idx in itertools.product(*map(range, array.numblocks)):
        key = (array.name, *idx)
        task = graph.get(key)
        if not isinstance(task, Task):
            return None
        chain = [task]
        while len(task.dependencies) == 1:
            (dep,) = task.dependencies
            task = graph.get(dep)
            if not isinstance(task, Task) or dependents.get(dep) != 1:
                break
            chain.insert(0, task)
        out[idx] = chain
    return out


def _stage(plan: Plan, name: str) -> Stage:
    node = plan.node(name)
    kernel: Any = node.opdef.kernel
    return Stage(name, node.opdef.name, kernel.block, dict(node.params))


def _foreground(x: np.ndarray) -> np.ndarray:
    """Flat indices of ``x``'s non-zero voxels, ascending (numpy lists a bool array's ~8× faster than a uint8 one's)."""
    return np.flatnonzero(x if x.dtype == bool else x != 0)


def _first(block_fn: Any, params: dict[str, Any], x: np.ndarray) -> np.ndarray:
    """The provisional values of a pass, alone (the unfused form, for consumers of the provisional array)."""
    return block_fn(x, **params)[0]


@dataclass
class Built:
    """What building a group gives the lowering: per node its value, and the stores of the cached nodes the
    fused tasks write (their writes are those tasks)."""

    values: dict[str, Any]
    cached: dict[str, CachedWrite]


def _read_alone(plan: Plan, group: Group) -> bool:
    """Whether the head is read (the input or a cached node, never an op, whose failure must name its node)
    and nothing else in this run reads it: then its block tasks can run inside the fused tasks."""
    read = plan.nodes[group.head].status is not Status.COMPUTE and group.head not in dict(plan.spec.outputs)
    return read and all(
        n in group.nodes or plan.nodes[n].status is not Status.COMPUTE for n in plan.graph.successors(group.head)
    )


def _scope(plan: Plan, name: str) -> contextlib.AbstractContextManager[Any]:
    """Where a node's finish keeps its checkpoints: a cached node's partial folder (for a resumed run)."""
    node = plan.nodes[name]
    if not node.cache:
        return contextlib.nullcontext()
    return checkpoint_scope(checkpoints_url(plan.manifest.url, node.key))


def build_group(
    plan: Plan, group: Group, head: xr.DataArray, others: dict[str, xr.DataArray], call: Any, scratch: str | None = None
) -> Built:
    """The values of every node of ``group``, the fused tasks behind them and the stores those tasks write.

    ``call(name, x)``: a pointwise node's unfused value from its input value (its op, called as the lowering
    calls ops). ``scratch``: a folder the tasks spill their small results into
    (:class:`~cvplgraph.cache.checkpoint.Spilled`), or None to hand them on in memory. Raises
    :class:`~cvplgraph.cache.store.NotFusable` (before any task exists) when a store cannot be written block by
    block. The head's own block tasks (the chunk read and the input checks) run
    inside the fused tasks when the head is read, not computed, and nothing else in this run reads it.
    """
    url = plan.manifest.url
    chunks = head.data.chunks
    indices = list(itertools.product(*map(range, head.data.numblocks)))
    extra_names: list[str] = []
    extras: list[da.Array] = []
    targets: list[Any] = []
    keeps: list[str] = []
    programs: list[ChainProgram] = []
    values: dict[str, Any] = {}
    cached: dict[str, CachedWrite] = {}
    for chain in group.chains:
        x = head
        stages: list[tuple[Stage, int | None]] = []
        for name in chain.pointwise:
            node = plan.node(name)
            x = call(name, x)
            values[name] = x
            target = None
            if node.nodespec.cache:
                target = len(targets)
                cached[name], store = fused_array_targets(url, node.key, x, node.output, node.nodespec.store, name)
                targets.append(store)
            stages.append((_stage(plan, name), target))
        local = plan.node(chain.local)
        keep = None
        if local.nodespec.cache:
            keep = len(keeps)
            keeps.append(f"{checkpoints_url(url, local.key)}/fused-values")
        reduces = []
        for name in chain.reduces:
            node = plan.node(name)
            where = []
            for src in sources(plan, name)[1:]:
                if src not in extra_names:
                    extra_names.append(src)
                    extras.append(others[src].data.rechunk(chunks))
                where.append(extra_names.index(src))
            reduces.append((_stage(plan, name), tuple(where)))
        programs.append(ChainProgram(tuple(stages), _stage(plan, chain.local), keep, tuple(reduces)))
    # effects (store writes, kept blocks): fresh keys per lowering, like every write (see io.stores.block_writes)
    name = f"{FUSED}-" + tokenize(head.data.name, [e.name for e in extras], group.nodes, uuid.uuid4())
    layer: dict[Any, Any] = {}
    inlined = _block_tasks(head.data) if _read_alone(plan, group) else None
    reread = any(e.name == head.data.name for e in extras)  # a reduce reads the head too (centroids' image)
    edges = tuple(tuple(np.cumsum((0, *c)).tolist()) for c in chunks)
    layout = GroupLayout(tuple(programs), tuple(head.data.numblocks), edges, tuple(targets), tuple(keeps),
                         None if scratch is None else f"{scratch}/{name}")  # fmt: skip
    for i, idx in enumerate(indices):
        own = inlined[idx] if inlined else []
        # a chain of one task (a chunk read) that only the head uses is passed as the argument it computes: nesting
        # costs a sixth of fusing
        nest = len(own) == 1 and not reread
        read = own[0] if nest else TaskRef((head.data.name, *idx))
        task = Task((name, i), run_block, layout, i, read, *[TaskRef((e.name, *idx)) for e in extras])
        layer[(name, i)] = task if nest or not own else Task.fuse(*own, task, key=(name, i))
    fused = HighLevelGraph.from_collections(name, layer, dependencies=[head.data, *extras])  # type: ignore[list-item]
    # a cluster runs the blocks in C order (dask's order scatters them): rows of blocks are done one after the other,
    # so the small global work waiting for a row's blocks (the pairs of the union) runs between blocks, not at the end
    fused.layers[name].annotations = {"priority": _c_order}
    blocks = [Delayed((name, i), fused, layer=name) for i in range(len(indices))]
    if cached:  # the tasks write every such node's block at once: each node's writes are theirs
        done = _layer(f"{name}-written", {i: (operator.getitem, (name, i), -1) for i in range(len(indices))}, blocks)
        for written in cached.values():
            written.writes = list(done.values())
    for c, (chain, program) in enumerate(zip(group.chains, programs)):
        mask = values[chain.pointwise[-1]] if chain.pointwise else head
        # every result is picked out of its block's fused task where it is used (the union's tasks, a reduce's
        # merge), by a small task run inline there: no task per block and result
        refs = [[(_pick, (name, i), c, k) for i in range(len(indices))] for k in range(1 + len(chain.reduces))]
        heads = [(_head, (name, i), c) for i in range(len(indices))]
        local = plan.node(chain.local)
        kernel: Any = local.opdef.kernel  # a LocalPass (find_groups)
        params = dict(local.params)
        dtype = np.asarray(kernel.block(np.zeros((1, 1, 1), mask.dtype), **params)[0]).dtype
        provisional = da.map_blocks(_first, kernel.block, params, mask.data, dtype=dtype,
                                    meta=np.empty((0, 0, 0), dtype))  # fmt: skip
        kept = None
        if program.keep is not None:
            kept = functools.partial(_read_back, [f"{keeps[program.keep]}/{i}" for i in range(len(indices))],
                                     provisional)  # fmt: skip
        with _scope(plan, chain.local):
            args = (blocks, provisional, mask, kept, refs[0], heads)
            values[chain.local] = _finish(local, kernel.finish, args, params)
        parts = values[chain.local].attrs.get(BLOCK_LABELS_ATTR) if layout.scratch is not None else None
        for k, rname in enumerate(chain.reduces, start=1):
            node = plan.node(rname)
            rvalues = [others[s] for s in sources(plan, rname)[1:]]
            reduce: Any = node.opdef.kernel  # a Reduce (find_groups)
            picks: list[Any] = refs[k]
            if parts is not None:
                # read from the scratch folder by block number once every block is done (the offsets wait for all
                # of them): a block's task is then needed only by its row's small tasks, and a worker forgets it
                # (with its record) once those ran, not when the last partition is merged (engine/lean.py)
                after = parts.offsets.key
                picks = [(_load_spilled, f"{layout.scratch}/{i}-{c}", k, after) for i in range(len(indices))]
            with _scope(plan, rname):
                args = (blocks, picks, values[chain.local], *rvalues)
                values[rname] = _finish(node, reduce.finish, args, dict(node.params))
    return Built(values, cached)


def _layer(name: str, tasks: dict[Any, Any], dependencies: list[Delayed]) -> dict[Any, Delayed]:
    """A graph layer ``name`` of ``tasks`` (suffix → task), as one Delayed per suffix."""
    keys = {suffix: (name, *suffix) if isinstance(suffix, tuple) else (name, suffix) for suffix in tasks}
    graph = HighLevelGraph.from_collections(
        name, {keys[s]: task for s, task in tasks.items()}, dependencies=graph_sources(dependencies)
    )
    return {s: Delayed(keys[s], graph, layer=name) for s in tasks}


def _finish(node: Any, finish: Any, args: tuple[Any, ...], params: dict[str, Any]) -> Any:
    """An op's finish, failures named like the op's own (see :func:`cvplgraph.engine.lower.lower`)."""
    try:
        value = finish(*args, **params)
    except CvplError:
        raise
    except Exception as exc:
        raise OpFailed(node.name, node.opdef.name, exc) from exc
    if isinstance(value, xr.DataArray):
        value.name = node.name
    return value


def _c_order(key: tuple[str, int]) -> int:
    """A fused task's scheduling priority: distributed runs ready tasks of higher priority first."""
    return -int(key[1])


def _pick(result: tuple[Any, ...], chain: int, k: int) -> Any:
    """Item ``k`` of a chain's small results in a fused task's result, read back if the task spilled them."""
    from cvplgraph.cache.checkpoint import Spilled

    item = result[chain]
    return item.load(k) if isinstance(item, Spilled) else item[k]


def _load_spilled(url: str, k: int, after: Any) -> Any:
    """Item ``k`` of the small results a fused task spilled to ``url`` (:func:`run_block`), read without that
    task's result; ``after``: a value its task waits for, one computed after every block's task."""
    from cvplgraph.cache.checkpoint import load_spilled

    return load_spilled(url, k)


def _head(result: tuple[Any, ...], chain: int) -> Any:
    """The first array of a chain's pass summary (kept in memory when the rest was spilled)."""
    from cvplgraph.cache.checkpoint import Spilled

    item = result[chain]
    return item.head if isinstance(item, Spilled) else item[0][0]


def _read_back(urls: list[str], like: da.Array, after: Delayed) -> da.Array:
    """The kept blocks (``urls``, C order) as an array shaped like ``like``, each read once ``after`` exists
    (a task computed after every block and which the relabelling waits for anyway, the pass's lookup table: no
    task of its own over every block, with a whole brain's blocks as dependencies and dependents)."""
    from cvplgraph.cache.checkpoint import read_kept

    name = "kept-" + tokenize(keys_token(urls), after.key)
    indices = itertools.product(*map(range, like.numblocks))
    layer = {(name, *idx): (read_kept, url, after.key) for url, idx in zip(urls, indices)}
    graph = HighLevelGraph.from_collections(name, layer, dependencies=[after])  # type: ignore[arg-type, list-item]
    return da.Array(graph, name, like.chunks, dtype=like.dtype, meta=like._meta)


__all__ = ["Chain", "Group", "build_group", "find_groups", "run_block", "sources"]
