"""Shared test helpers."""

import time
from pathlib import Path

import pytest


def session_processes(session_id: int) -> dict[int, str]:
    """Live processes of one session (pid -> command line), found by session id, not by name; zombies excluded."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # state, ppid, pgrp, session, ...
        if int(fields[3]) == session_id and fields[0] != "Z":
            found[int(entry.name)] = command
    return found


def remaining(session_id: int, within_s: float = 10.0) -> dict[int, str]:
    """What of a session is still alive after waiting up to `within_s` for it to end."""
    deadline = time.monotonic() + within_s
    while (alive := session_processes(session_id)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return alive


@pytest.fixture
def leftovers():
    """`leftovers(session_id, within_s=10)`: what of a session is still alive after waiting up to `within_s`."""
    return remaining
