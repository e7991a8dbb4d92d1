"""Stale locks (spatial_msma.run_lock): a killed run's locks go, a live run's and unknown ones stay.

The whole recovery, kill -9 and the same command again, runs on real Snakemake in test_user_cohort.py.
"""

import json
import os
import subprocess
import sys

from spatial_msma.run_lock import OWNERS_DIR, record_lock_owner, release_lock_owner, remove_stale_locks


def _dead_pid():
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _locks(snakemake_dir, *names):
    (snakemake_dir / "locks").mkdir(parents=True, exist_ok=True)
    paths = [snakemake_dir / "locks" / name for name in names]
    for path in paths:
        path.write_text("results/table1.csv\n")
    return paths


def test_only_the_locks_of_a_dead_process_are_removed(tmp_path):
    dead, alive = _dead_pid(), os.getpid()
    dead_locks = _locks(tmp_path, "0.input.lock", "0.output.lock")
    live_locks = _locks(tmp_path, "1.input.lock")
    unknown = _locks(tmp_path, "2.output.lock")
    record_lock_owner(tmp_path, dead_locks, pid=dead)
    record_lock_owner(tmp_path, live_locks, pid=alive)
    assert remove_stale_locks(tmp_path) == [dead]
    assert not any(p.exists() for p in dead_locks) and all(p.exists() for p in live_locks + unknown)
    release_lock_owner(tmp_path, pid=alive)
    assert list((tmp_path / OWNERS_DIR).iterdir()) == []


def test_a_lock_file_that_reuses_the_name_is_not_taken_for_the_dead_ones(tmp_path):
    """After an --unlock, a new run may write 0.input.lock again: another file, not the recorded one."""
    (lock,) = _locks(tmp_path, "0.input.lock")
    record_lock_owner(tmp_path, [lock], pid=_dead_pid())
    lock.unlink()
    (new,) = _locks(tmp_path, "0.input.lock")
    os.utime(new, ns=(1, 1))
    assert remove_stale_locks(tmp_path) == [] and new.exists()
    assert list((tmp_path / OWNERS_DIR).iterdir()) == []  # the record of the ended run is gone all the same


def test_a_run_on_another_host_is_left_alone(tmp_path):
    (lock,) = _locks(tmp_path, "0.input.lock")
    record_lock_owner(tmp_path, [lock], pid=_dead_pid())
    (record,) = (tmp_path / OWNERS_DIR).iterdir()
    record.write_text(json.dumps({**json.loads(record.read_text()), "host": "another-node"}))
    assert remove_stale_locks(tmp_path) == [] and lock.exists()
