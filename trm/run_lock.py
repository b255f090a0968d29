"""One writer per run folder.

Two `trm train --out runs/x` at once used to interleave their steps in metrics.jsonl and
overwrite each other's checkpoints. A run folder is now held, for the life of the process, by
an OS file lock (`filelock`: flock on `.trm.lock`, released by the kernel when the process dies,
so a killed run never leaves a stale lock); the holder's pid, host and start time are written
beside it (`.trm.writer.json`) for the error a second writer gets:

    with RunLock(out, "--out"):
        ...  # everything that writes into `out`

A run stored on S3 (Ray's checkpoints of `trm train --workers --storage s3://...`, a long run) is held by
a lease instead (`S3Lease`): no OS lock reaches across machines, and a driver lost with its machine
cannot release anything, so the lease lapses unless renewed. `hold(root, flag)` picks the right one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Self

from trm.errors import TrmError

log = logging.getLogger(__name__)
LOCK_FILE, HOLDER_FILE = ".trm.lock", ".trm.writer.json"
LEASE_FILE = "trm_lease.json"  # in an S3 run's folder, beside Ray's checkpoints
LEASE_TTL_S = 120.0  # a lease not renewed for this long has lapsed: its driver is gone


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


def _utc(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


class S3Lease:
    """One writer per run stored on S3: a lease object `ROOT/trm_lease.json` naming its holder (host,
    pid, since when), renewed by a daemon thread every `ttl`/4 and lapsing `ttl` seconds after its last
    renewal. A second driver is refused while the lease is live, naming the holder; once a lost driver's
    lease has lapsed, `--resume` (or the same command) takes it over, saying whose it was.

    S3 offers no lock: two drivers starting within the same second could both write a lease. Each
    re-reads its lease after `settle` seconds (S3 reads are strongly consistent) and only the one whose
    lease is there goes on; a renewal that finds another holder's lease says so in the log."""

    def __init__(self, root: str, flag: str, ttl: float = LEASE_TTL_S, settle: float = 1.0):
        from trm.storage import join

        self.root, self.flag, self.ttl, self.settle = root, flag, ttl, settle
        self.uri = join(root, LEASE_FILE)
        self.token = uuid.uuid4().hex
        self.since = time.time()
        self.lost = threading.Event()  # another driver's lease replaced ours (set by the renewal)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _record(self) -> dict:
        now = time.time()
        return {
            "token": self.token,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "since": _utc(self.since),
            "renewed": now,
            "expires": now + self.ttl,
        }

    def _refuse(self, held: dict, why: str) -> RunLockedError:
        return RunLockedError(
            f"{self.flag} {self.root}: another driver {why} (pid {held.get('pid')} on {held.get('host')}, since "
            f"{held.get('since')}; its lease lapses at {_utc(float(held.get('expires', 0)))} unless renewed); "
            f"wait for it to end, or choose another {self.flag}"
        )

    def __enter__(self) -> Self:
        from trm.storage import read_json, write_json

        held = read_json(self.uri)
        if held and held.get("token") != self.token and float(held.get("expires", 0)) > time.time():
            raise self._refuse(held, "holds this run's lease")
        if held and not held.get("released"):
            log.warning(
                "%s: taking over the lease of pid %s on %s, which lapsed at %s (that driver is gone)",
                self.root,
                held.get("pid"),
                held.get("host"),
                _utc(float(held.get("expires", 0))),
            )
        write_json(self.uri, self._record())
        time.sleep(self.settle)
        now = read_json(self.uri) or {}
        if now.get("token") != self.token:
            raise self._refuse(now, "took this run's lease at the same moment")
        self._thread = threading.Thread(target=self._renew, name="trm-s3-lease", daemon=True)
        self._thread.start()
        return self

    def _renew(self) -> None:
        from trm.storage import read_json, write_json

        while not self._stop.wait(self.ttl / 4):
            try:
                held = read_json(self.uri) or {}
                if held.get("token") not in (None, self.token):
                    self.lost.set()
                    log.error(
                        "%s: the run's lease was taken by pid %s on %s (since %s): this driver is no longer "
                        "its only writer",
                        self.root,
                        held.get("pid"),
                        held.get("host"),
                        held.get("since"),
                    )
                    return
                write_json(self.uri, self._record())
            except Exception as e:  # S3 unreachable for a while: the lease may lapse; try again next time
                log.warning("%s: could not renew the run's lease: %s", self.root, e)

    def __exit__(self, *exc) -> None:
        from trm.storage import read_json, write_json

        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        with contextlib.suppress(Exception):  # S3 gone: the lease lapses by itself
            if (read_json(self.uri) or {}).get("token") == self.token and not self.lost.is_set():
                write_json(self.uri, {**self._record(), "expires": 0, "released": _utc(time.time())})


def hold(root: str, flag: str) -> contextlib.AbstractContextManager:
    """The one-writer guard of a run stored at `root`: an OS lock on a local folder, a lease on S3 (another
    object store: none; the storage layer refuses those)."""
    from trm.storage import is_s3

    if is_s3(root):
        return S3Lease(root, flag)
    return RunLock(root, flag) if "://" not in root else contextlib.nullcontext()
