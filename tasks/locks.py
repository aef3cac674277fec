"""The file locks that make concurrent runs of one cached data stage take turns, freed when a holder dies.

Prefect's :class:`~prefect.locking.filesystem.FileSystemLockManager` writes a lock file per cache key with
no expiry unless the caller gives one (its transactions do not), so a run killed while it held a lock
(``kill -9``, a lost machine) left a file that every later run waited on forever. Here a lock file also
names the process that holds it; on the same machine, a lock whose process is gone counts as free (the
stage's outputs are published atomically, so the next run simply computes them again). ``hold_seconds``
bounds any lock beside that, for a holder on another machine sharing the folder.
"""

from __future__ import annotations

import json
import os
import socket
import time
from datetime import UTC, datetime
from pathlib import Path

from prefect.locking.filesystem import FileSystemLockManager

HOLD_SECONDS = 24 * 3600.0  # the longest a live holder keeps a stage: longer than ingesting 50 M drawings
UNWRITTEN_SECONDS = 10.0  # a lock file still empty or cut short after this was left by a killed writer


def _alive(pid: int) -> bool:
    """Return whether process ``pid`` exists on this machine (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


class LiveHolderLockManager(FileSystemLockManager):
    """A :class:`FileSystemLockManager` whose locks are free once their holding process is gone."""

    def __init__(self, lock_files_directory: Path, hold_seconds: float = HOLD_SECONDS):
        super().__init__(lock_files_directory=lock_files_directory)
        self.hold_seconds = hold_seconds

    def acquire_lock(
        self, key: str, holder: str, acquire_timeout: float | None = None, hold_timeout: float | None = None
    ) -> bool:
        acquired = super().acquire_lock(key, holder, acquire_timeout, hold_timeout or self.hold_seconds)
        if acquired:
            path = Path(self._lock_path_for_key(key))
            record = json.loads(path.read_bytes())
            # written beside Prefect's fields, in place: a reader between the two writes sees a live lock
            path.write_text(json.dumps({**record, "pid": os.getpid(), "host": socket.gethostname()}))
        return acquired

    def _get_lock_info(self, key: str, use_cache: bool = True):
        """Return the lock's record; one that is empty or cut short (its writer was killed between creating
        and writing it) is held while it is fresh, and expired once it is older than :data:`UNWRITTEN_SECONDS`."""
        try:
            return super()._get_lock_info(key, use_cache=use_cache)
        except ValueError:
            path = Path(self._lock_path_for_key(key))
            try:
                age = time.time() - path.stat().st_mtime
            except FileNotFoundError:
                return None
            expired = datetime(1970, 1, 1, tzinfo=UTC)
            return {"holder": "", "expiration": expired if age > UNWRITTEN_SECONDS else None, "path": str(path)}

    def is_locked(self, key: str, use_cache: bool = False) -> bool:
        info = self._get_lock_info(key, use_cache=False)
        here = info and info.get("host") == socket.gethostname() and isinstance(info.get("pid"), int)
        if here and not _alive(info["pid"]):
            Path(info["path"]).unlink(missing_ok=True)
            self._locks.pop(key, None)
            return False
        return super().is_locked(key, use_cache=use_cache)
