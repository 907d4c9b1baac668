"""Parameters of a synthetic volume, validated and normalised on construction."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

from cvplgraph.blobs import BOX_SIGMAS

__all__ = ["BOX_SIGMAS", "DTYPES", "MAX_JITTER_FRACTION", "ONE_PERCENT_SIGMAS", "SynthParams"]

#: Distance, in sigmas, at which a gaussian falls to 1 % of its peak: sqrt(2 ln 100).
ONE_PERCENT_SIGMAS: float = math.sqrt(2.0 * math.log(100.0))
#: Largest jitter, as a fraction of the grid spacing, even when blobs are tiny.
MAX_JITTER_FRACTION: float = 0.25
#: Stored value types of a synthetic volume.
DTYPES: tuple[str, ...] = ("float32", "uint16")


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return (
        isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value))  # type: ignore[arg-type]
    )


def _items(value: object, count: int) -> tuple[Any, ...] | None:
    """``value`` as a tuple of ``count`` items, or None if it is not such a sequence."""
    if isinstance(value, (str, bytes)):
        return None
    try:
        items: tuple[Any, ...] = tuple(value)  # type: ignore[arg-type]
    except TypeError:
        return None
    return items if len(items) == count else None


def _positive_int_triple(name: str, value: object) -> tuple[int, int, int]:
    items = _items(value, 3)
    if items is None or not all(_is_int(v) and int(v) > 0 for v in items):
        raise ValueError(f"{name} must be three positive integers, got {value!r}")
    return (int(items[0]), int(items[1]), int(items[2]))


def _positive_float_triple(name: str, value: object) -> tuple[float, float, float]:
    items = _items(value, 3)
    if items is None or not all(_is_real(v) and float(v) > 0 for v in items):
        raise ValueError(f"{name} must be three positive finite numbers, got {value!r}")
    return (float(items[0]), float(items[1]), float(items[2]))


def _range_pair(name: str, value: object, low: float, high: float, what: str) -> tuple[float, float]:
    items = _items(value, 2)
    if items is None or not all(_is_real(v) for v in items) or not low < float(items[0]) <= float(items[1]) <= high:
        raise ValueError(f"{name} must be a range (low, high) with {what}, got {value!r}")
    return (float(items[0]), float(items[1]))


def _real(name: str, value: object, ok: bool, what: str) -> float:
    if not _is_real(value) or not ok:
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return float(value)  # type: ignore[arg-type]


@dataclass(frozen=True)
class SynthParams:
    """Parameters of a synthetic volume.

    All lengths ending in ``_um`` are in micrometres; axis order is always
    (z, y, x). Values are validated on construction (``ValueError`` with the
    offending field) and normalised to plain Python ints, floats and tuples.

    Attributes
    ----------
    shape : (3,) tuple of int
        Volume size in voxels.
    chunks : (3,) tuple of int
        Dask block size in voxels (clipped to ``shape`` by dask).
    voxel_size : (3,) tuple of float
        µm per voxel along (z, y, x).
    cell_radius_um : (2,) tuple of float
        Range (low, high) of cell radii; each blob has ``sigma = radius / 2``.
    brightness : (2,) tuple of float
        Range (low, high) of peak amplitudes above the background, in (0, 1].
    spacing_um : float
        Spacing of the jittered grid of candidate cell centres. Must exceed
        ``2 * 3.035 * cell_radius_um[1] / 2`` so blobs cannot overlap above 1 %.
    occupancy : float
        Fraction of grid sites holding a cell, in [0, 1].
    background : float
        Mean of the smooth background.
    background_amplitude : float
        Amplitude of the background's slow variation;
        ``background ± background_amplitude`` must lie in [0, 1].
    noise : float
        Standard deviation of the additive gaussian noise (>= 0); with
        ``photons`` it is read noise, added after the photon noise.
    seed : int
        Non-negative seed; determines cells, background phases and noise.
    pairs : float
        Fraction of the grid cells, in [0, 1], that get a touching partner: an
        extra cell (in the truth table) at ``pair_distance`` times the sum of
        the two radii, in a random 3-D direction. Partners may overlap their
        own cell; a partner that would leave the volume or overlap any other
        cell above 1 % is drawn again (a few times, then dropped), so the
        realised fraction can fall short of ``pairs`` where cells are dense.
    pair_distance : (2,) tuple of float
        Range (low, high) of a partner's centre distance, in units of the sum
        of the two radii, with ``0 < low <= high <= 2``.
    dim_fraction : float
        Fraction of all cells, in [0, 1], whose peak is drawn from
        ``dim_brightness`` instead of ``brightness``.
    dim_brightness : (2,) tuple of float
        Range (low, high) of the dim cells' peaks, in (0, 1].
    photons : float
        Photons per unit of clean signal; 0 (default) turns photon noise off,
        otherwise ``image = Poisson(photons * clean) / photons``.
    gain, offset : float
        The stored image is ``gain * image + offset``, applied after the
        clip to [0, 1]; ``gain > 0``. Values may then leave [0, 1].
    dtype : str
        "float32" (default) or "uint16", stored as
        ``round(clip(gain * image + offset, 0, 65535))``: use ``gain`` to put
        the cells in counts (e.g. ``gain = 1000, offset = 100``).
    """

    shape: tuple[int, int, int] = (64, 256, 256)
    chunks: tuple[int, int, int] = (32, 128, 128)
    voxel_size: tuple[float, float, float] = (4.0, 1.5, 1.5)
    cell_radius_um: tuple[float, float] = (4.0, 7.0)
    brightness: tuple[float, float] = (0.45, 0.9)
    spacing_um: float = 30.0
    occupancy: float = 0.7
    background: float = 0.08
    background_amplitude: float = 0.04
    noise: float = 0.02
    seed: int = 0
    pairs: float = 0.0
    pair_distance: tuple[float, float] = (0.8, 1.0)
    dim_fraction: float = 0.0
    dim_brightness: tuple[float, float] = (0.1, 0.2)
    photons: float = 0.0
    gain: float = 1.0
    offset: float = 0.0
    dtype: str = "float32"

    def __post_init__(self) -> None:
        shape = _positive_int_triple("shape", self.shape)
        chunks = _positive_int_triple("chunks", self.chunks)
        voxel_size = _positive_float_triple("voxel_size", self.voxel_size)
        radius = _range_pair("cell_radius_um", self.cell_radius_um, 0.0, math.inf, "0 < low <= high")
        brightness = _range_pair("brightness", self.brightness, 0.0, 1.0, "0 < low <= high <= 1")
        spacing = _real("spacing_um", self.spacing_um, _is_real(self.spacing_um), "a finite number")
        min_spacing = ONE_PERCENT_SIGMAS * radius[1]  # 2 * 3.035 * sigma_max, sigma = r / 2
        if not spacing > min_spacing:
            raise ValueError(
                f"spacing_um must be greater than {min_spacing:.3g} µm (2 * {ONE_PERCENT_SIGMAS:.3f}"
                f" * largest sigma {radius[1] / 2:.3g} µm) so that blobs cannot overlap above 1 %"
                f" of their peak, got {self.spacing_um!r}"
            )
        occupancy = _real(
            "occupancy", self.occupancy, _is_real(self.occupancy) and 0 <= self.occupancy <= 1, "in [0, 1]"
        )
        background = _real(
            "background", self.background, _is_real(self.background) and 0 <= self.background <= 1, "in [0, 1]"
        )
        amp_ok = (
            _is_real(self.background_amplitude)
            and self.background_amplitude >= 0
            and 0 <= background - self.background_amplitude
            and background + self.background_amplitude <= 1
        )
        amplitude = _real(
            "background_amplitude",
            self.background_amplitude,
            amp_ok,
            f">= 0 with background ± amplitude inside [0, 1] (background = {background})",
        )
        noise = _real("noise", self.noise, _is_real(self.noise) and self.noise >= 0, "a finite number >= 0")
        if not (_is_int(self.seed) and int(self.seed) >= 0):
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        pairs = _real("pairs", self.pairs, _is_real(self.pairs) and 0 <= self.pairs <= 1, "in [0, 1]")
        pair_distance = _range_pair(
            "pair_distance", self.pair_distance, 0.0, 2.0, "0 < low <= high <= 2 (units of the sum of the radii)"
        )
        dim_fraction = _real(
            "dim_fraction", self.dim_fraction, _is_real(self.dim_fraction) and 0 <= self.dim_fraction <= 1, "in [0, 1]"
        )
        dim_brightness = _range_pair("dim_brightness", self.dim_brightness, 0.0, 1.0, "0 < low <= high <= 1")
        photons = _real(
            "photons", self.photons, _is_real(self.photons) and self.photons >= 0, "a finite number >= 0 (0 = off)"
        )
        gain = _real("gain", self.gain, _is_real(self.gain) and self.gain > 0, "a finite number > 0")
        offset = _real("offset", self.offset, _is_real(self.offset), "a finite number")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        normalised = {
            "shape": shape,
            "chunks": chunks,
            "voxel_size": voxel_size,
            "cell_radius_um": radius,
            "brightness": brightness,
            "spacing_um": spacing,
            "occupancy": occupancy,
            "background": background,
            "background_amplitude": amplitude,
            "noise": noise,
            "seed": int(self.seed),
            "pairs": pairs,
            "pair_distance": pair_distance,
            "dim_fraction": dim_fraction,
            "dim_brightness": dim_brightness,
            "photons": photons,
            "gain": gain,
            "offset": offset,
            "dtype": str(self.dtype),
        }
        for name, value in normalised.items():
            object.__setattr__(self, name, value)

    @property
    def max_jitter_um(self) -> float:
        """Largest per-axis displacement of a cell from its grid site (µm).

        Chosen so that the minimum centre distance, ``spacing_um - 2 * jitter``,
        is at least ``2 * 3.035 * sigma_max``, so the 1 % contours (radius
        ``3.035 * sigma``) of two blobs never meet. Capped at ``spacing_um / 4``.
        """
        free = self.spacing_um - ONE_PERCENT_SIGMAS * self.cell_radius_um[1]
        return max(0.0, min(MAX_JITTER_FRACTION * self.spacing_um, free / 2.0))

    @property
    def max_partner_um(self) -> float:
        """Largest distance of a pair partner from its cell's centre (µm); 0 without pairs."""
        return self.pair_distance[1] * 2.0 * self.cell_radius_um[1] if self.pairs > 0 else 0.0
