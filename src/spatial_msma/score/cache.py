"""The score-norm cache: its one file format, writer and reader.

The score stage writes one ``.npz`` per image (:data:`CACHE_KEYS`) and, per set, a ``manifest.tsv`` beside
them that lists the set's subjects (a Snakemake rule cannot declare outputs that depend on a checkpoint's
subject list, so a per-set job declares the manifest, written last, and the files go beside it). Every
consumer finds a set's files through its manifest (:func:`read_manifest`) and reads each one through
:func:`read_norm_cache`, so a broken file fails with the same error, naming the file and the problem,
wherever it is read.

Only numpy and pandas here: the stages downstream of the cache (the flow, image-level MSMA, the
diagnostics) read it without importing torch or the score network.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from spatial_msma import io
from spatial_msma.io import InputError

CACHE_KEYS = ("patch_norms", "image_norms", "sigmas", "mask", "affine")

#: Affines closer than this (mm) are one template space: NIfTI headers store them as float32, so copies of one
#: affine differ by round-off.
AFFINE_ATOL = 1e-3

#: Relative tolerance for two caches' noise levels to count as the same levels.
SIGMA_RTOL = 1e-5


@dataclass(frozen=True)
class NormCache:
    """One image's cached score norms, checked: patch norms (L, X, Y, Z) and image norms (L,) at the
    sigmas (L,), on the grid of the brain mask (X, Y, Z) with its affine (4, 4)."""

    path: Path
    patch_norms: np.ndarray  # float32 (stored as float16 or float32)
    image_norms: np.ndarray  # float32
    sigmas: np.ndarray  # float32
    mask: np.ndarray  # bool
    affine: np.ndarray  # float64

    @property
    def subject(self) -> str:
        return self.path.name.removesuffix(".npz")


def cache_path(manifest: str | os.PathLike, subject: str) -> Path:
    """Where a set's cache file of ``subject`` lives: beside the set's manifest, named by the subject."""
    return Path(manifest).parent / f"{subject}.npz"


def write_norm_cache(
    path: str | os.PathLike, patch: np.ndarray, whole: np.ndarray, sigmas: np.ndarray, mask: np.ndarray,
    affine: np.ndarray, dtype: str = "float16",
) -> None:
    """One image's cache file, ``patch`` stored as ``dtype``; written atomically."""
    with io.atomic_path(path) as tmp:
        np.savez_compressed(
            tmp,
            patch_norms=patch.astype(dtype),
            image_norms=whole.astype(np.float32),
            sigmas=np.asarray(sigmas, np.float32),
            mask=mask.astype(bool),
            affine=np.asarray(affine, np.float64),
        )


def write_manifest(manifest: str | os.PathLike, subjects: Sequence[str], images: Sequence[str | os.PathLike]) -> None:
    """A set's manifest (subject, path of its cache file, image it was computed from), in set order.

    Write it after the cache files: its existence is what marks the set complete.
    """
    if len(subjects) != len(images):
        raise InputError(f"score-norm manifest {manifest}: {len(subjects)} subjects for {len(images)} images")
    table = pd.DataFrame({"subject": list(subjects), "path": [str(cache_path(manifest, s)) for s in subjects],
                          "image": [str(p) for p in images]})
    io.write_table(table, manifest)


def read_norm_cache(path: str | os.PathLike) -> NormCache:
    """Read one cache file and check it: keys, shapes, a non-empty brain mask, finite non-negative norms.

    Anything else is an :class:`InputError` that names the file and the problem.
    """
    path = Path(path)
    where = f"score-norm cache {path}"
    if not path.exists():
        raise InputError(f"{where}: file does not exist")
    try:
        with np.load(path) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise InputError(f"{where}: unreadable ({type(err).__name__}: {err})") from err
    missing = [k for k in CACHE_KEYS if k not in arrays]
    if missing:
        raise InputError(f"{where}: missing key(s) {missing} (has {sorted(arrays)})")
    cache = NormCache(path, np.asarray(arrays["patch_norms"], np.float32),
                      np.asarray(arrays["image_norms"], np.float32), np.asarray(arrays["sigmas"], np.float32),
                      np.asarray(arrays["mask"]).astype(bool), np.asarray(arrays["affine"], np.float64))
    _check_shapes(cache, where)
    if not cache.mask.any():
        raise InputError(f"{where}: the brain mask is empty")
    values = {"patch_norms inside the brain mask": cache.patch_norms[:, cache.mask],
              "image_norms": cache.image_norms, "sigmas": cache.sigmas}
    for name, value in values.items():
        if not np.isfinite(value).all() or (value < 0).any():
            raise InputError(f"{where}: {name} must be finite and >= 0")
    return cache


def _check_shapes(cache: NormCache, where: str) -> None:
    patch = cache.patch_norms.shape
    if len(patch) != 4:
        raise InputError(f"{where}: patch_norms must be (L, X, Y, Z), got {patch}")
    for name, shape in (("sigmas", cache.sigmas.shape), ("image_norms", cache.image_norms.shape)):
        if shape != patch[:1]:
            raise InputError(f"{where}: {name} has shape {shape}, patch_norms has {patch[0]} levels")
    if cache.mask.shape != patch[1:]:
        raise InputError(f"{where}: mask shape {cache.mask.shape} != patch_norms grid {patch[1:]}")
    if cache.affine.shape != (4, 4):
        raise InputError(f"{where}: affine must be 4x4, got {cache.affine.shape}")


def same_levels(sigmas: np.ndarray, other: np.ndarray) -> bool:
    """Whether two caches hold the same noise levels (same count, same sigmas up to float32 round-off)."""
    return sigmas.shape == other.shape and bool(np.allclose(sigmas, other, rtol=SIGMA_RTOL))


def _check_same_space(cache: NormCache, reference: NormCache) -> None:
    """Caches read together must share one grid, affine (one template space) and list of sigmas (one score
    model and level choice)."""
    where = f"score-norm cache {cache.path}"
    if cache.mask.shape != reference.mask.shape or not np.allclose(cache.affine, reference.affine,
                                                                   atol=AFFINE_ATOL):
        raise InputError(f"{where}: grid/affine differ from {reference.path}")
    if not same_levels(cache.sigmas, reference.sigmas):
        raise InputError(f"{where}: its sigma levels differ from {reference.path}")


@dataclass(frozen=True)
class CacheSet:
    """One set's cache files as its manifest lists them, in set order."""

    manifest: Path
    subjects: tuple[str, ...]

    @property
    def paths(self) -> list[Path]:
        return [cache_path(self.manifest, s) for s in self.subjects]

    def __len__(self) -> int:
        return len(self.subjects)

    def caches(self) -> Iterator[NormCache]:
        """Read the files one at a time (a paper-sized set need not fit in memory), each checked by
        :func:`read_norm_cache` and against the first file's grid, affine and sigmas."""
        first = None
        for path in self.paths:
            cache = read_norm_cache(path)
            if first is None:
                first = cache
            else:
                _check_same_space(cache, first)
            yield cache


def read_manifest(manifest: str | os.PathLike) -> CacheSet:
    """The set a manifest lists; its files are found beside it by subject (:func:`cache_path`), so a
    results folder moved with its manifests stays readable."""
    manifest = Path(manifest)
    try:
        table = pd.read_csv(manifest, sep="\t", dtype=str, keep_default_na=False)
    except (OSError, ValueError) as err:
        raise InputError(f"score-norm manifest {manifest}: unreadable ({type(err).__name__}: {err})") from err
    if "subject" not in table:
        raise InputError(f"score-norm manifest {manifest}: no 'subject' column (has {list(table.columns)})")
    repeated = sorted(set(table["subject"][table["subject"].duplicated()]))
    if repeated:
        raise InputError(f"score-norm manifest {manifest}: subject(s) listed twice {repeated}")
    return CacheSet(manifest, tuple(table["subject"]))
