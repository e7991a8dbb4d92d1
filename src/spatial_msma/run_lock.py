"""Stale Snakemake locks: a run killed with kill -9 (or by the OOM killer, or a lost SSH session) never
unlocks its working directory, and Snakemake then refuses every later run until ``--unlock``.

Snakemake's lock files say which files are locked, not by whom. So each run of this workflow records, when it
starts its jobs, which lock files it holds and its process id and host (:func:`record_lock_owner`); the next
run, on reading the workflow, removes the locks of a recorded run whose process is gone from this host
(:func:`remove_stale_locks`). A live run's locks, another host's, and locks no record explains are left
alone: they may belong to a run that is still going.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterable
from pathlib import Path

#: Where the records live, inside Snakemake's own folder (``.snakemake/``).
OWNERS_DIR = "spatial_msma_lock_owners"


def _record_path(snakemake_dir: str | os.PathLike, pid: int) -> Path:
    return Path(snakemake_dir) / OWNERS_DIR / f"{socket.gethostname()}-{pid}.json"


def record_lock_owner(snakemake_dir: str | os.PathLike, lock_files: Iterable[str | os.PathLike],
                      pid: int | None = None) -> None:
    """Record that process ``pid`` (default: this one) on this host holds ``lock_files``, each identified by
    inode and modification time, so a later lock file that reuses the name is never taken for it."""
    pid = os.getpid() if pid is None else pid
    locks = []
    for name in lock_files:
        stat = Path(name).stat()
        locks.append({"path": os.path.abspath(name), "inode": stat.st_ino, "mtime_ns": stat.st_mtime_ns})
    record = _record_path(snakemake_dir, pid)
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"host": socket.gethostname(), "pid": pid, "locks": locks}) + "\n")


def release_lock_owner(snakemake_dir: str | os.PathLike, pid: int | None = None) -> None:
    """Drop the record of process ``pid`` (default: this one) when its run ends (Snakemake unlocks itself)."""
    _record_path(snakemake_dir, os.getpid() if pid is None else pid).unlink(missing_ok=True)


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_locks(snakemake_dir: str | os.PathLike) -> list[int]:
    """Remove the lock files of recorded runs on this host whose process is gone; return the process ids of
    those that still had a lock file (a run that ended on its own left only its record, dropped here too)."""
    removed = []
    for record in sorted((Path(snakemake_dir) / OWNERS_DIR).glob("*.json")):
        owner = json.loads(record.read_text())
        if owner["host"] != socket.gethostname() or process_alive(owner["pid"]):
            continue
        stale = [Path(lock["path"]) for lock in owner["locks"] if _same_file(Path(lock["path"]), lock)]
        for path in stale:
            path.unlink()
        record.unlink()
        if stale:
            removed.append(int(owner["pid"]))
    return removed


def _same_file(path: Path, lock: dict) -> bool:
    """Whether ``path`` is still the lock file ``lock`` recorded (not removed, not a new one of that name)."""
    return path.is_file() and (path.stat().st_ino, path.stat().st_mtime_ns) == (lock["inode"], lock["mtime_ns"])
