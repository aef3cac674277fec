"""Prefect's temporary servers that a killed command left behind.

Each command that runs a flow without ``PREFECT_API_URL`` starts Prefect's temporary server as a child
process and stops it on the way out. A command killed with SIGKILL (or a lost terminal) never gets there,
and the server runs on, holding a port and a few hundred MB. The next command of the same project stops
such servers: those of this ``PREFECT_HOME`` whose parent is no longer a Python process (the command that
started them is gone, and they were handed to init or a subreaper).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

SERVER_APP = b"prefect.server.api.server:create_app"


def orphaned_servers(prefect_home: str | Path) -> list[int]:
    """Return the process ids of Prefect temporary servers of ``prefect_home`` whose starter is gone."""
    proc = Path("/proc")
    if not proc.is_dir():  # not Linux: nothing to look at
        return []
    home = Path(prefect_home).resolve()
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if entry.stat().st_uid != os.getuid():
                continue
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if SERVER_APP not in argv:
                continue
            env = dict(item.split(b"=", 1) for item in (entry / "environ").read_bytes().split(b"\0") if b"=" in item)
            if env.get(b"PREFECT__SERVER_EPHEMERAL") != b"1" or b"PREFECT_HOME" not in env:
                continue
            if (entry / "cwd").resolve() / os.fsdecode(env[b"PREFECT_HOME"]) != home:  # an absolute one stays
                continue
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if parent == 1 or not _is_python(parent):
                found.append(int(entry.name))
        except (OSError, ValueError):  # gone meanwhile, or not ours to read
            continue
    return found


def _is_python(pid: int) -> bool:
    try:
        name = (Path("/proc") / str(pid) / "comm").read_text().strip()
    except OSError:
        return False
    return name.startswith("python") or name in ("sketchpipe", "pytest")


def stop_orphaned_servers(prefect_home: str | Path, wait_seconds: float = 5.0) -> list[int]:
    """Stop the orphaned temporary servers of ``prefect_home`` (SIGTERM, then SIGKILL after ``wait_seconds``);
    return their process ids."""
    stopped = orphaned_servers(prefect_home)
    for pid in stopped:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + wait_seconds
    while any(_running(pid) for pid in stopped) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in stopped:
        if _running(pid):
            _signal(pid, signal.SIGKILL)
    return stopped


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _running(pid: int) -> bool:
    """Return whether ``pid`` runs (a zombie, dead but not yet reaped by its parent, does not)."""
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
