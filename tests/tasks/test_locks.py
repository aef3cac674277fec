"""Stage locks: a lock whose holder died is free; a live holder's lock is waited for."""

import json
import subprocess
import sys
import threading
import time

from tasks.locks import LiveHolderLockManager


def _dead_pid() -> int:
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()
    return done.pid


def test_a_lock_left_by_a_killed_holder_is_taken_at_once(tmp_path):
    """What ``kill -9`` of a run leaves: a lock file naming a process that no longer exists."""
    locks = LiveHolderLockManager(tmp_path)
    assert locks.acquire_lock("ingest-abc", holder="killed-run")
    path = tmp_path / "ingest-abc.lock"
    record = json.loads(path.read_text())
    assert record["pid"] > 0 and record["expiration"] is not None  # every lock is bounded
    path.write_text(json.dumps({**record, "pid": _dead_pid()}))

    later = LiveHolderLockManager(tmp_path)  # the next run, a new process's manager
    started = time.monotonic()
    assert later.acquire_lock("ingest-abc", holder="next-run", acquire_timeout=30)
    assert time.monotonic() - started < 5
    assert later.is_lock_holder("ingest-abc", "next-run")


def test_a_live_holder_is_waited_for_until_it_releases(tmp_path):
    locks = LiveHolderLockManager(tmp_path)
    assert locks.acquire_lock("preprocess-k", holder="first")
    assert not LiveHolderLockManager(tmp_path).acquire_lock("preprocess-k", holder="second", acquire_timeout=0.5)
    threading.Timer(1.0, locks.release_lock, args=("preprocess-k", "first")).start()
    assert LiveHolderLockManager(tmp_path).acquire_lock("preprocess-k", holder="second", acquire_timeout=30)


def test_a_lock_from_another_machine_expires_after_its_hold_time(tmp_path):
    locks = LiveHolderLockManager(tmp_path, hold_seconds=1.0)
    assert locks.acquire_lock("ingest-x", holder="elsewhere")
    path = tmp_path / "ingest-x.lock"
    path.write_text(json.dumps({**json.loads(path.read_text()), "host": "another-machine", "pid": 1}))
    started = time.monotonic()
    assert LiveHolderLockManager(tmp_path).acquire_lock("ingest-x", holder="here", acquire_timeout=30)
    assert 0.5 < time.monotonic() - started < 10


def test_a_lock_file_left_empty_by_a_writer_killed_mid_write_is_taken_once_it_is_old(tmp_path):
    import os

    (tmp_path / "ingest-e.lock").write_bytes(b"")  # created, never written: the holder died in between
    locks = LiveHolderLockManager(tmp_path)
    assert not locks.acquire_lock("ingest-e", holder="next", acquire_timeout=0.3)  # fresh: maybe being written
    old = time.time() - 60
    os.utime(tmp_path / "ingest-e.lock", (old, old))
    assert locks.acquire_lock("ingest-e", holder="next", acquire_timeout=5)
