"""Reading and writing volumes, tables, JSON and config sections: validated on the way in, atomic on the way out.

Every reader raises :class:`InputError` with the offending path and the problem in plain words, so a
user with a broken cohort sees *which* file is wrong; every writer goes through a temporary file in the
target directory and an ``os.replace`` so a killed job never leaves a half-written output behind, with the
permissions any plain write would give (the user's umask), so a lab group can read a colleague's results.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import json
import math
import os
import re
import tempfile
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np


class InputError(ValueError):
    """A user-supplied file or setting is unusable; the message names it and says why."""


def as_path_list(paths: str | os.PathLike | Iterable[str | os.PathLike] | None) -> list[str]:
    """A list of paths from what a Snakemake named input holds: one file is a plain string, several a list."""
    if paths is None:
        return []
    if isinstance(paths, str | os.PathLike):
        return [os.fspath(paths)]
    return [os.fspath(p) for p in paths]


def config_section(cls: type, cfg: Mapping[str, object] | None, where: str,
                   lists: Iterable[str] = ()) -> dict[str, object]:
    """A copy of the config mapping for dataclass ``cls``; a key that is not one of its fields is an
    :class:`InputError` naming the key and the section ``where`` (e.g. ``score.network``). The values of
    the keys in ``lists`` must be lists and become tuples (the frozen dataclasses' form)."""
    out = dict(cfg or {})
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(out) - known)
    if unknown:
        raise InputError(f"config {where}: unknown key(s) {unknown}; known keys are {sorted(known)}")
    for key in lists:
        if key in out:
            value = out[key]
            if isinstance(value, str) or not isinstance(value, Sequence):
                raise InputError(f"config {where}.{key}: expected a list, got {value!r}")
            out[key] = tuple(value)
    return out


def plain_dict(obj: object) -> dict[str, Any]:
    """A config dataclass as plain data (nested dataclasses as dicts, tuples as lists), as stored in model
    files and JSON."""

    def plain(value: object) -> object:
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return [plain(v) for v in value] if isinstance(value, list | tuple) else value

    return plain(dataclasses.asdict(obj))  # type: ignore[arg-type, return-value]


def check_number(value: Any, where: str, low: float | None = None, *, above: bool = False,
                 high: float | None = None, below: bool = False, integer: bool = False,
                 optional: bool = False) -> Any:
    """``value`` of config key ``where`` (e.g. ``flow.steps``) if it is a finite number (an ``int`` with
    ``integer``; None too with ``optional``) of at least ``low`` (above it with ``above``) and at most
    ``high`` (below it with ``below``); otherwise an :class:`InputError` naming the key, the range and the
    value."""
    if value is None and optional:
        return value
    number = isinstance(value, int if integer else int | float) and not isinstance(value, bool) \
        and math.isfinite(value)
    fits = number and (low is None or value > low or (not above and value == low)) \
        and (high is None or value < high or (not below and value == high))
    if not fits:
        if low is not None and high is not None:
            bounds = f"in {'(' if above else '['}{low:g}, {high:g}{')' if below else ']'}"
        elif low is not None:
            bounds = f"{'>' if above else '>='} {low:g}"
        else:
            bounds = f"{'<' if below else '<='} {high:g}" if high is not None else ""
        kind = "an integer " if integer else ("a number " if optional or not number else "")
        raise InputError(f"config {where}: must be {'null or ' if optional else ''}{kind}{bounds}".rstrip()
                         + f", got {value!r}")
    return value


def check_numbers(cfg: object, section: str, keys: Iterable[str], low: float | None = None, **bounds: Any) -> None:
    """:func:`check_number` for each of ``keys`` of the config dataclass ``cfg`` of config ``section``."""
    for key in keys:
        check_number(getattr(cfg, key), f"{section}.{key}", low, **bounds)


def check_device_name(name: object, where: str) -> str:
    """``name`` of config key ``where`` (e.g. ``score.device``) if it names a torch device this workflow runs
    on (``auto``, ``cpu``, ``cuda``, ``cuda:N``); otherwise an :class:`InputError` naming the key. Whether a
    CUDA device is really there is only known on the machine that runs the job."""
    if not isinstance(name, str) or not (name in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", name)):
        raise InputError(f"config {where}: {name!r} is not a device; expected 'auto', 'cpu' or 'cuda[:N]'")
    return name


def umask_mode(mode: int = 0o666) -> int:
    """``mode`` as the user's umask leaves it: what ``open()`` would give a new file. (Reading the umask
    means setting it; it is set straight back.)"""
    umask = os.umask(0o077)
    os.umask(umask)
    return mode & ~umask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; on success it is renamed onto ``path``, on error removed.

    The temporary name keeps the final suffix (``.nii.gz``, ``.csv`` ...) so writers that pick a format
    from the extension behave the same. ``mkstemp`` creates the file private (0600); it gets the mode a plain
    write would (:func:`umask_mode`) before it takes the final name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{suffix}")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, umask_mode())
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def load_nifti(path: str | os.PathLike, ndim: int | None = 3, what: str = "image") -> nib.Nifti1Image:
    """Load a NIfTI file fully and check it: readable, complete, finite, and of the expected rank.

    ``ndim=3`` accepts a trailing singleton 4th axis (common in converted scans). The data are read
    here, not lazily, so a truncated gzip stream fails now with a message naming the file instead of
    deep inside a later stage.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{what} {path}: file does not exist")
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except (EOFError, zlib.error, gzip.BadGzipFile, OSError, ValueError, nib.filebasedimages.ImageFileError) as err:
        raise InputError(f"{what} {path}: unreadable or truncated NIfTI ({type(err).__name__}: {err})") from err
    if ndim == 3 and data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if ndim is not None and data.ndim != ndim:
        raise InputError(f"{what} {path}: expected a {ndim}D image, got shape {tuple(data.shape)}")
    if not np.issubdtype(data.dtype, np.number):
        raise InputError(f"{what} {path}: non-numeric voxel type {data.dtype}")
    data = np.asarray(data, dtype=np.float32)
    n_bad = int((~np.isfinite(data)).sum())
    if n_bad:
        raise InputError(f"{what} {path}: {n_bad} voxels are NaN or infinite")
    if not np.isfinite(img.affine).all() or abs(np.linalg.det(img.affine[:3, :3])) < 1e-8:
        raise InputError(f"{what} {path}: the affine is singular or not finite")
    return nib.Nifti1Image(data, img.affine, img.header)


def read_channels(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a multi-channel volume written by :func:`write_channels`: returns (C, X, Y, Z) float32 and affine."""
    img = load_nifti(path, ndim=None)
    data = img.get_fdata(dtype=np.float32)
    if data.ndim == 3:
        data = data[..., None]
    if data.ndim != 4:
        raise InputError(f"image {path}: expected (X, Y, Z, channels), got shape {data.shape}")
    return np.ascontiguousarray(np.moveaxis(data, -1, 0)), img.affine


def read_mask(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a binary mask as a bool (X, Y, Z) array and its affine."""
    img = load_nifti(path, ndim=3, what="mask")
    return img.get_fdata(dtype=np.float32) > 0.5, img.affine


def read_labels(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a label image (0 = background, a positive id per region) as an int32 (X, Y, Z) array and its
    affine."""
    img = load_nifti(path, ndim=3, what="label image")
    return np.rint(img.get_fdata(dtype=np.float32)).astype(np.int32), img.affine


def write_nifti(data: np.ndarray, affine: np.ndarray, path: str | os.PathLike) -> None:
    """Write a 3D array (or (X, Y, Z, C)) atomically; bool -> uint8, integers (label images) -> int32,
    everything else float32."""
    arr = np.asarray(data)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    else:
        arr = arr.astype(np.int32 if np.issubdtype(arr.dtype, np.integer) else np.float32)
    img = nib.Nifti1Image(arr, np.asarray(affine, dtype=np.float64))
    img.set_data_dtype(arr.dtype)
    img.header.set_xyzt_units("mm", "sec")
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))


def write_channels(data: np.ndarray, affine: np.ndarray, path: str | os.PathLike) -> None:
    """Write a (C, X, Y, Z) array as a 4D NIfTI with channels last (the layout viewers expect)."""
    write_nifti(np.moveaxis(np.asarray(data, dtype=np.float32), 0, -1), affine, path)


def write_json(obj: object, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_text(text: str, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_table(frame, path: str | os.PathLike) -> None:
    """Write a pandas DataFrame atomically; ``.tsv`` is tab-separated, anything else comma-separated."""
    sep = "\t" if str(path).endswith(".tsv") else ","
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, sep=sep, index=False, lineterminator="\n")


def save_figure(fig, path: str | os.PathLike, dpi: int = 110) -> None:
    """Save a matplotlib figure atomically and close it."""
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
