"""A command killed with SIGKILL leaves Prefect's temporary server running; the next command of the same
project stops it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows.prefect_servers import orphaned_servers
from tests.integration.conftest import write_config


def _servers_of(home) -> list[int]:
    """Every Prefect temporary server process of ``home``, orphaned or not (read from /proc here)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            folder = Path("/proc") / entry
            argv = (folder / "cmdline").read_bytes().split(b"\0")
            env = (folder / "environ").read_bytes()
            state = (folder / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if b"prefect.server.api.server:create_app" in argv and f"PREFECT_HOME={home}".encode() in env and state != "Z":
            found.append(int(entry))
    return found


@pytest.mark.slow  # two pipeline runs, one of them killed: about a minute
def test_the_next_command_stops_the_prefect_server_a_killed_one_left_running(tmp_path, tracking_db):
    home = tmp_path / ".prefect"
    config = write_config(tmp_path, tracking_uri=f"sqlite:///{tracking_db}", architectures=("lstm",))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}  # its own temporary server
    env["PREFECT_HOME"] = str(home)
    command = [sys.executable, "-m", "flows.cli", "run", "--config", config, "--epochs", "1"]
    killed = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not _servers_of(home) and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    servers = _servers_of(home)
    assert servers, "the command started no Prefect server"
    killed.send_signal(signal.SIGKILL)  # the command alone: its server runs on
    killed.wait(timeout=30)
    time.sleep(1)
    assert _servers_of(home) == servers, "the server did not outlive the killed command"
    assert orphaned_servers(home) == servers
    again = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "promoted:" in again.stdout
    assert not set(servers) & set(_servers_of(home)), "the orphaned server is still running"
    assert not _servers_of(home)  # and the second command stopped its own on the way out
