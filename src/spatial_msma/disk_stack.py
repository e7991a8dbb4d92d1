"""Equal-shaped arrays kept on disk by a training job and read back a few rows at a time.

Why: the training jobs used to hold their whole training set in memory (the score network and the AE
every image; the flow every voxel's features and every image), which grows with the cohort: 1,320
two-channel 96x112x80 crops alone are 9 GB of float32, their score-norm features at 20 levels 42 GB.
A job now writes its set once, uncompressed, into a scratch file of its checkpoint directory
(:class:`StackWriter`; uncompressed so that a training step does not pay a gzip decompression per image)
and reads the rows a step needs by index (:meth:`DiskStack.read`). The rows are the same bytes the
in-memory array held, so the batches drawn, and the weights trained, do not change.

Each read maps the file, copies the rows and unmaps it: pages of a mapping count as resident memory as
long as it is open (Snakemake's benchmark ``max_rss`` included), so a map kept open would grow towards the
file's size as training touches it. The kernel's page cache still holds the file between reads.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np


@dataclass(frozen=True)
class DiskStack:
    """``shape[0]`` rows of shape ``shape[1:]`` and type ``dtype``, C order, in the raw file ``path``."""

    path: Path
    shape: tuple[int, ...]
    dtype: np.dtype

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    def read(self, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        """A copy of the rows ``rows`` (repeats and any order allowed), as indexing the array in memory
        would give them: shape (len(rows), *shape[1:])."""
        rows = np.asarray(rows, dtype=np.int64)
        if not len(rows):
            return np.empty((0, *self.shape[1:]), self.dtype)
        mapped = np.memmap(self.path, self.dtype, mode="r", shape=self.shape)
        out = np.asarray(mapped[rows])  # fancy indexing copies: nothing of ``out`` refers to the map
        del mapped  # the last reference: unmapped here (see the module docstring)
        return out

    def __getitem__(self, row: int) -> np.ndarray:
        """Row ``row``, a copy: a stack reads as a sequence of arrays (e.g. for auto sigma estimates)."""
        return self.read([row])[0]

    def span(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start`` to ``stop`` (excluded), a copy: one subject's block of voxels, say."""
        return self.read(np.arange(start, stop))

    def unlink(self) -> None:
        """Delete the file (the stack is scratch: a job rewrites it at every start)."""
        self.path.unlink(missing_ok=True)


class StackWriter:
    """Append row blocks of one shape and type to a new raw file; :meth:`finish` gives the :class:`DiskStack`.

    The file is plain ``write``s (no memory map, so writing a large set does not fill the process's memory
    with dirty mapped pages). It is scratch that each job start rewrites, never resumed from, so it is
    written in place rather than atomically.
    """

    def __init__(self, path: str | os.PathLike, row_shape: Sequence[int], dtype: np.dtype | type):
        self.path = Path(path)
        self.row_shape = tuple(int(n) for n in row_shape)
        self.dtype = np.dtype(dtype)
        self.rows = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = self.path.open("wb")

    def append(self, block: np.ndarray) -> None:
        """Append (k, *row_shape) rows, converted to the stack's type."""
        if tuple(block.shape[1:]) != self.row_shape:
            raise ValueError(f"stack {self.path}: rows of shape {block.shape[1:]}, expected {self.row_shape}")
        self._handle.write(np.ascontiguousarray(block, dtype=self.dtype).data)
        self.rows += int(block.shape[0])

    def finish(self) -> DiskStack:
        self._handle.close()
        return DiskStack(self.path, (self.rows, *self.row_shape), self.dtype)

    def __enter__(self) -> StackWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self._handle.close()
