"""One writer per run folder.

Two `trm train --out runs/x` at once used to interleave their steps in metrics.jsonl and
overwrite each other's checkpoints. A run folder is now held, for the life of the process, by
an OS file lock (`filelock`: flock on `.trm.lock`, released by the kernel when the process dies,
so a killed run never leaves a stale lock); the holder's pid, host and start time are written
beside it (`.trm.writer.json`) for the error a second writer gets:

    with RunLock(out, "--out"):
        ...  # everything that writes into `out`
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Self

from trm.errors import TrmError

LOCK_FILE, HOLDER_FILE = ".trm.lock", ".trm.writer.json"


class RunLockedError(TrmError, RuntimeError):
    """Another process is writing this run folder; the message names it."""


class RunLock:
    def __init__(self, folder: str | Path, flag: str = "--out"):
        from filelock import FileLock

        self.folder, self.flag = Path(folder), flag
        self._lock = FileLock(self.folder / LOCK_FILE, is_singleton=False)

    def __enter__(self) -> Self:
        from filelock import Timeout

        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            raise RunLockedError(
                f"{self.flag} {self.folder}: another process is writing this run "
                f"({self.holder()}); wait for it to end, or choose another {self.flag}"
            ) from None
        since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
        (self.folder / HOLDER_FILE).write_text(
            json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": since})
        )
        return self

    def __exit__(self, *exc) -> None:
        (self.folder / HOLDER_FILE).unlink(missing_ok=True)
        self._lock.release()

    def holder(self) -> str:
        """'pid 123 on host, since ...' from the holder's record (a bare phrase while it is being written)."""
        try:
            h = json.loads((self.folder / HOLDER_FILE).read_text())
            return f"pid {h['pid']} on {h['host']}, since {h['since']}"
        except (OSError, ValueError, KeyError, TypeError):
            return "holder unknown: it is starting"
