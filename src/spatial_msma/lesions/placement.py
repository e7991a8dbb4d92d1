"""Where lesions go: eligible white matter, a share near the ventricles, never touching, until the load.

Each lesion source (simulated blobs, a user library) proposes lesions one at a time (size, centre, score
field); :func:`place` carves each proposal to eligible, free white matter and keeps it or counts a failure.
Proposals are drawn lazily, after the previous one was placed, so the load left decides the next size.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from spatial_msma import io
from spatial_msma.lesions.config import LesionsConfig
from spatial_msma.lesions.grids import FineGrid, block_mean, box_around, box_shape, box_start
from spatial_msma.lesions.shapes import LibraryLesion, blob_reach_mm, blob_score, footprint_score, library_footprint
from spatial_msma.lesions.size_bins import size_bin_label
from spatial_msma.template import Template

# The ventricles of the template: CSF (>= 0.5) at least this deep inside the brain mask, in components of
# at least this volume. Sulcal CSF lies closer to the surface; the lateral ventricles lie deep.
_VENTRICLE_DEPTH_MM = 30.0
_VENTRICLE_MIN_MM3 = 500.0
# Lesions may fill at most this share of the eligible white matter: beyond it non-overlapping placement of
# irregular shapes fails long before the volume runs out, so a larger load is a configuration error.
MAX_WM_FILL = 0.25
#: A placed lesion must keep this share of its drawn voxels after carving to eligible, free white matter.
MIN_KEPT = 0.8
# Consecutive failed placements before giving up with an error.
_MAX_FAILURES = 200


@dataclass(frozen=True)
class VentricleMap:
    """Distance (mm) to the template's ventricles on a 2 mm subsample of the template grid."""

    distance: np.ndarray
    affine: np.ndarray

    def at_world(self, points_mm: np.ndarray) -> np.ndarray:
        """Distances at (n, 3) world points, trilinear."""
        ijk = nib.affines.apply_affine(np.linalg.inv(self.affine), points_mm).T
        return ndi.map_coordinates(self.distance, ijk, order=1, mode="nearest")


def ventricle_map(template: Template) -> VentricleMap:
    """Ventricles = deep CSF of the template (see the ``_VENTRICLE_*`` constants); distance map around them.

    Computed on every second template voxel: the map only weights where lesion centres go, and 2 mm
    keeps the two distance transforms cheap.
    """
    brain = template.brain[::2, ::2, ::2]
    csf = template.csf[::2, ::2, ::2]
    affine = template.affine @ np.diag([2.0, 2.0, 2.0, 1.0])
    depth = ndi.distance_transform_edt(brain, sampling=2.0)
    deep_csf = (csf >= 0.5) & (depth >= _VENTRICLE_DEPTH_MM)
    labels, n = ndi.label(deep_csf)
    sizes = np.bincount(labels.ravel(), minlength=n + 1) * 8.0
    keep = np.flatnonzero(sizes >= _VENTRICLE_MIN_MM3)
    ventricles = np.isin(labels, keep[keep > 0])
    if not ventricles.any():
        return VentricleMap(np.full(brain.shape, np.inf, dtype=np.float32), affine)
    distance = ndi.distance_transform_edt(~ventricles, sampling=2.0).astype(np.float32)
    return VentricleMap(distance, affine)


@dataclass
class Placement:
    """State of the placement loop: the fine grid's eligible and labelled sub-voxels, the placed lesions."""

    grid: FineGrid
    allowed: np.ndarray  # fine bool
    centre_p: np.ndarray  # probability per working voxel (flat, over centre_index)
    centre_index: np.ndarray  # flat working indices with p > 0
    working_shape: tuple[int, int, int]
    labels: np.ndarray = field(init=False)  # fine int32, lesion id per sub-voxel (0 = none)
    rows: list[dict] = field(init=False, default_factory=list)  # one table row per placed lesion
    load: float = 0.0  # mm^3 placed, at the fine grid

    def __post_init__(self) -> None:
        self.labels = np.zeros(self.grid.shape, dtype=np.int32)


@dataclass(frozen=True)
class Proposal:
    """One lesion to try: its box on the fine grid, score field over the box and target size in sub-voxels."""

    box: tuple[slice, slice, slice]
    score: np.ndarray
    n_target: int
    source: str


def start_placement(
    grid: FineGrid, allowed: np.ndarray, ventricle_distance: np.ndarray, cfg: LesionsConfig
) -> Placement:
    """The empty placement over the eligible sub-voxels ``allowed``; a load they cannot hold is an error."""
    capacity_ml = float(allowed.sum()) * grid.voxel_volume / 1000.0
    if cfg.load_ml > MAX_WM_FILL * capacity_ml:
        raise io.InputError(
            f"lesions.load_ml: {cfg.load_ml:g} mL is more than the white matter can hold: this image has "
            f"{capacity_ml:.1f} mL of eligible white matter, of which at most {MAX_WM_FILL:.0%} "
            f"({MAX_WM_FILL * capacity_ml:.1f} mL) can take non-overlapping lesions"
        )
    centre_p = _centre_probabilities(block_mean(allowed, grid.k), ventricle_distance, cfg)
    return Placement(grid, allowed, centre_p[centre_p > 0], np.flatnonzero(centre_p), ventricle_distance.shape)


def place_lesions(
    state: Placement, cfg: LesionsConfig, rng: np.random.Generator, library: Sequence[LibraryLesion] | None
) -> list[dict]:
    """Place lesions of the configured source until the load is met; returns the table rows."""
    if cfg.source == "simulated":
        return place(state, _simulated(state, cfg, rng), cfg)
    return place(state, _from_library(state, cfg, rng, library), cfg)


def place(state: Placement, proposals: Iterator[Proposal], cfg: LesionsConfig) -> list[dict]:
    """Carve and commit proposals until the source stops; too many failures in a row are an error."""
    failures = 0
    for proposal in proposals:
        chosen = _carve(state, proposal.box, proposal.score, proposal.n_target)
        if chosen is None:
            failures += 1
            if failures >= _MAX_FAILURES:
                raise io.InputError(
                    f"lesions.load_ml: could not place more lesions after {_MAX_FAILURES} tries ({len(state.rows)} "
                    f"lesions, {state.load / 1000.0:.2f} of {cfg.load_ml:g} mL placed): the white matter is too "
                    "full or too fragmented for this load and these lesion sizes"
                )
            continue
        failures = 0
        state.load += _commit(state, proposal.box, chosen, proposal.source, cfg)
    return state.rows


def _simulated(state: Placement, cfg: LesionsConfig, rng: np.random.Generator) -> Iterator[Proposal]:
    """Blobs with sizes drawn across the bins (log-uniform within one), until the load is met."""
    edges, weights = np.asarray(cfg.size_bins_mm3), np.asarray(cfg.bin_weights)
    weights = weights / weights.sum()
    target = cfg.load_ml * 1000.0
    grid = state.grid
    while target - state.load >= edges[0]:
        b = rng.choice(weights.size, p=weights)
        volume = float(np.exp(rng.uniform(np.log(edges[b]), np.log(edges[b + 1]))))
        volume = max(min(volume, target - state.load), edges[0])
        n_target = max(1, round(volume / grid.voxel_volume))
        reach = blob_reach_mm(volume, grid)
        centre = _draw_centre(state, rng)
        box = box_around(centre, np.ceil(reach / grid.voxel_mm).astype(int), grid.shape)
        score = blob_score(box_shape(box), centre - box_start(box), grid.voxel_mm, volume, rng)
        yield Proposal(box, score, n_target, "simulated")


def _from_library(
    state: Placement, cfg: LesionsConfig, rng: np.random.Generator, library: Sequence[LibraryLesion]
) -> Iterator[Proposal]:
    """User lesions, each at a random WM centre, unrotated, until no remaining one fits the load.

    A component is drawn with probability proportional to its size bin's weight shared among the bin's
    components that still fit, which reproduces MS-MIST's bin-wise draw from its database.
    """
    edges, weights = cfg.size_bins_mm3, np.asarray(cfg.bin_weights)
    bins = np.array([min(int(np.searchsorted(edges, les.volume_mm3, side="right")) - 1, len(weights) - 1)
                     for les in library])
    volumes = np.array([les.volume_mm3 for les in library])
    target = cfg.load_ml * 1000.0
    if volumes.min() > target:
        raise io.InputError(
            f"lesions.folder {cfg.folder}: the smallest lesion ({volumes.min():.0f} mm^3) exceeds "
            f"lesions.load_ml = {cfg.load_ml:g} mL"
        )
    while True:
        fits = volumes <= target - state.load
        p = np.where(fits, weights[bins], 0.0)
        for b in np.unique(bins[fits]):
            p[bins == b] /= np.count_nonzero(fits & (bins == b))
        if p.sum() <= 0:
            return
        lesion = library[rng.choice(len(library), p=p / p.sum())]
        box, inside = library_footprint(lesion, state.grid, _draw_centre(state, rng))
        n_target = max(1, round(lesion.volume_mm3 / state.grid.voxel_volume))
        yield Proposal(box, footprint_score(inside, n_target), n_target, lesion.source)


def _centre_probabilities(allowed_frac: np.ndarray, distance: np.ndarray, cfg: LesionsConfig) -> np.ndarray:
    """Where lesion centres go: a mixture of uniform over eligible WM and a periventricular component.

    ``periventricular_bias`` is the mixture weight, i.e. the expected share of centres drawn from the
    component that decays as exp(-distance / scale) away from the ventricles.
    """
    uniform = allowed_frac.astype(np.float64).ravel()
    near = uniform * np.exp(-np.nan_to_num(distance.ravel(), posinf=1e9) / cfg.periventricular_scale_mm)
    bias = cfg.periventricular_bias if near.sum() > 0 else 0.0
    p = (1.0 - bias) * uniform / uniform.sum()
    if bias > 0:
        p += bias * near / near.sum()
    return p / p.sum()


def _draw_centre(state: Placement, rng: np.random.Generator) -> np.ndarray:
    """A fine-grid voxel: a working voxel drawn by the centre probabilities, then a sub-voxel in it."""
    flat = state.centre_index[rng.choice(state.centre_index.size, p=state.centre_p)]
    working = np.array(np.unravel_index(flat, state.working_shape))
    return working * np.asarray(state.grid.k) + rng.integers(0, state.grid.k)


def _carve(state: Placement, box: tuple[slice, ...], score: np.ndarray, n_target: int) -> np.ndarray | None:
    """The lesion's sub-voxels: the ``n_target`` best-scoring eligible, free ones, largest component.

    Free means not within one sub-voxel of another lesion (26-neighbourhood), so lesions never overlap
    or touch at the fine grid. Returns None when less than :data:`MIN_KEPT` of the target survives.
    """
    grown = tuple(slice(max(s.start - 1, 0), min(s.stop + 1, n)) for s, n in zip(box, state.grid.shape, strict=True))
    near = ndi.maximum_filter(state.labels[grown] > 0, size=3)
    inner = tuple(slice(s.start - g.start, s.stop - g.start) for s, g in zip(box, grown, strict=True))
    candidate = state.allowed[box] & ~near[inner] & np.isfinite(score)
    n_candidates = int(candidate.sum())
    if n_candidates < MIN_KEPT * n_target:
        return None
    flat = np.flatnonzero(candidate)
    if n_candidates > n_target:
        flat = flat[np.argpartition(-score.ravel()[flat], n_target - 1)[:n_target]]
    chosen = np.zeros(score.shape, dtype=bool)
    chosen.ravel()[flat] = True
    labels, n = ndi.label(chosen, structure=np.ones((3, 3, 3)))
    if n > 1:
        chosen = labels == 1 + int(np.argmax(np.bincount(labels.ravel())[1:]))
    return chosen if chosen.sum() >= MIN_KEPT * n_target else None


def _commit(state: Placement, box: tuple[slice, ...], chosen: np.ndarray, source: str, cfg: LesionsConfig) -> float:
    """Write an accepted lesion into the fine label map and start its table row; returns its volume."""
    lesion_id = len(state.rows) + 1
    state.labels[box][chosen] = lesion_id
    volume = float(chosen.sum()) * state.grid.voxel_volume
    centroid = nib.affines.apply_affine(state.grid.affine, np.argwhere(chosen).mean(axis=0) + box_start(box))
    state.rows.append({
        "lesion": lesion_id, "source": source, "size_bin": size_bin_label(volume, cfg.size_bins_mm3),
        "volume_mm3": round(volume, 3), "x_mm": round(float(centroid[0]), 2), "y_mm": round(float(centroid[1]), 2),
        "z_mm": round(float(centroid[2]), 2),
    })
    return volume
