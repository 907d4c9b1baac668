"""Image → Mask with a trained pixel classifier (see :mod:`cvplgraph.ops._classifier`)."""

from __future__ import annotations

import functools

import dask
import dask.array as da
import numpy as np
import xarray as xr

from cvplgraph.ops._blocks import block_cores
from cvplgraph.ops._classifier import Model, features, halo, load
from cvplgraph.registry import op
from cvplgraph.types import PortType
from cvplgraph.values import Geometry, like


@functools.lru_cache(maxsize=4)
def cached_model(path: str) -> Model:
    """One load per worker process and model file."""
    return load(path)


def _classify(block: np.ndarray, path: str, scale: tuple[float, ...], probability: float) -> np.ndarray:
    return (cached_model(path).cell_probability(block, scale) > probability).astype(np.uint8)


@op(
    "pixel_classifier",
    version=1,
    inputs={"image": PortType.Image},
    output=PortType.Mask,
    checks={"model": lambda p: None if p.endswith(".npz") else "a model file written by `cvplgraph train` (.npz)"},
    paths=("model",),
    halo="4 × the largest feature σ + 1 voxel per axis",
    cost="3 filters per feature scale and a forest evaluation per voxel",
)
def pixel_classifier(image: xr.DataArray, *, model: str, probability: float = 0.5) -> xr.DataArray:
    """Foreground where a trained random forest gives P(cell) above ``probability``.

    Parameters
    ----------
    image : (Z, Y, X) DataArray of float32
    model : str
        Path of a model written by ``cvplgraph train`` (its name carries its
        content digest, so a retrained model is a new key). A relative path in a
        spec is relative to the spec's folder; workers must be able to read it.
    probability : float
        Decision level on the forest's cell probability.

    Returns
    -------
    mask : (Z, Y, X) DataArray of uint8
        Features are computed with a halo, so the mask is the same on any chunking.
    """
    scale = Geometry.of(image).scale
    depth = halo(cached_model(model).sigmas_voxels(scale))
    mask = image.data.map_overlap(_classify, depth=dict(enumerate(depth)), boundary="reflect", dtype=np.uint8,
                                  path=model, scale=scale, probability=probability)  # fmt: skip
    return like(mask, image)


def _rows(
    padded: np.ndarray, labels: np.ndarray, core: tuple[slice, ...], sigmas: list
) -> tuple[np.ndarray, np.ndarray]:
    """Feature rows and annotations of the annotated voxels of one block."""
    if not labels.any():
        return np.empty((0, 1 + 3 * len(sigmas)), np.float32), np.empty(0, np.int64)
    f = features(padded, sigmas)[(slice(None), *core)]
    picked = labels > 0
    return f[:, picked].T, labels[picked].astype(np.int64)


def training_rows(
    image: xr.DataArray, annotations: da.Array, sigmas_um: tuple[float, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Features of every annotated voxel, computed block by block with the halo the features need."""
    scale = Geometry.of(image).scale
    sigmas = [(s / scale[0], s / scale[1], s / scale[2]) for s in sigmas_um]
    margin = np.array(halo(sigmas))
    data = image.data
    annotations = annotations.rechunk(data.chunks)
    shape = np.array(data.shape)
    tasks = []
    for index, lo, hi in block_cores(data.chunks):
        pad_lo, pad_hi = np.maximum(lo - margin, 0), np.minimum(hi + margin, shape)
        padded = data[tuple(slice(a, b) for a, b in zip(pad_lo, pad_hi))]
        core = tuple(slice(int(a), int(b)) for a, b in zip(lo - pad_lo, hi - pad_lo))
        labels = annotations.blocks[index]
        tasks.append(dask.delayed(_rows, pure=True)(padded, labels, core, sigmas))
    parts = dask.compute(*tasks)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
