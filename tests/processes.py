"""Processes as a lost machine sees them: find Ray Train workers by session, kill a whole session."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path


def _procs() -> list[tuple[int, int, str]]:
    """(pid, session id, command line) of every live (not zombie) process."""
    rows = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if fields[0] == "Z":
            continue
        rows.append((int(d.name), int(fields[3]), cmd))
    return rows


def train_workers(session: int) -> list[int]:
    return [pid for pid, sid, cmd in _procs() if sid == session and "RayTrainWorker" in cmd]


def kill_session(session: int) -> None:
    """SIGKILL every process of a session (a lost machine), and wait until they are gone."""
    for _ in range(50):
        left = [pid for pid, sid, _ in _procs() if sid == session]
        if not left:
            return
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)
    raise AssertionError(f"processes of session {session} survive SIGKILL: {left}")
