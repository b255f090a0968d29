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


def _gone_here(held: dict) -> bool:
    """A lease held by a process of this host that no longer runs (a driver killed here: no need to wait
    for its lease to lapse before resuming)."""
    import psutil

    if held.get("host") != socket.gethostname() or not isinstance(held.get("pid"), int):
        return False
    try:  # a killed process its parent has not reaped yet is a zombie: gone too
        return psutil.Process(held["pid"]).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
    except psutil.AccessDenied:  # another user's process: alive
        return False


class LeaseLost(TrmError):
    """Another driver took over this run's S3 lease (ours had lapsed): this driver stopped."""

    end_reason = "lease_lost"


class S3Lease:
    """One writer per run stored on S3: a lease object `ROOT/trm_lease.json` naming its holder (host,
    pid, since when), renewed by a daemon thread every `ttl`/4 and lapsing `ttl` seconds after its last
    renewal. A second driver is refused while the lease is live, naming the holder; once a lost driver's
    lease has lapsed, or at once when that driver was a process of this host that has ended, `--resume`
    (or the same command) takes it over, saying whose it was.

    Every write is conditional (S3's If-None-Match / If-Match on PutObject): a lease is created only
    where there is none, and taken over, renewed or released only as the version this driver last saw.
    Of two drivers racing, one write fails and that driver is refused. A driver whose lease was taken
    over (its renewals failed for `ttl`: S3 unreachable, the machine suspended) learns it at its next
    renewal and stops: the main thread gets SIGINT (as from Ctrl-C) and leaves with `LeaseLost`."""

    def __init__(self, root: str, flag: str, ttl: float = LEASE_TTL_S):
        from trm.storage import split_s3

        self.root, self.flag, self.ttl = root, flag, ttl
        bucket, prefix = split_s3(root)
        self.bucket, self.key = bucket, f"{prefix}/{LEASE_FILE}" if prefix else LEASE_FILE
        self.token = uuid.uuid4().hex
        self.since = time.time()
        self.etag: str | None = None  # the version of the lease this driver wrote last
        self.lost: dict | None = None  # the lease that replaced ours (set by the renewal)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client = None

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

    def _s3(self):
        if self._client is None:
            import boto3

            self._client = boto3.client("s3")
        return self._client

    def _get(self) -> tuple[dict | None, str | None]:
        """The lease there now and its ETag, or (None, None)."""
        from botocore.exceptions import ClientError

        try:
            r = self._s3().get_object(Bucket=self.bucket, Key=self.key)
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None, None
            raise
        return json.loads(r["Body"].read()), r["ETag"]

    def _put(self, record: dict, etag: str | None) -> str | None:
        """Write `record` if the lease is still version `etag` (None: if there is none); its new ETag,
        or None when another driver's write came first."""
        from botocore.exceptions import ClientError

        condition = {"IfMatch": etag} if etag is not None else {"IfNoneMatch": "*"}
        try:
            r = self._s3().put_object(Bucket=self.bucket, Key=self.key, Body=json.dumps(record).encode(), **condition)
        except ClientError as e:
            # 412: the condition failed; 409: a concurrent conditional write to the same key won
            if e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") in (409, 412):
                return None
            raise
        return r["ETag"]

    def _refuse(self, held: dict, why: str) -> RunLockedError:
        return RunLockedError(
            f"{self.flag} {self.root}: another driver {why} (pid {held.get('pid')} on {held.get('host')}, since "
            f"{held.get('since')}; its lease lapses at {_utc(float(held.get('expires', 0)))} unless renewed); "
            f"wait for it to end, or choose another {self.flag}"
        )

    def __enter__(self) -> Self:
        held, etag = self._get()
        gone = held is not None and _gone_here(held)
        if held and held.get("token") != self.token and float(held.get("expires", 0)) > time.time() and not gone:
            raise self._refuse(held, "holds this run's lease")
        if held and not held.get("released"):
            log.warning(
                "%s: taking over the lease of pid %s on %s, %s (that driver is gone)",
                self.root,
                held.get("pid"),
                held.get("host"),
                "whose process has ended" if gone else f"which lapsed at {_utc(float(held.get('expires', 0)))}",
            )
        self.etag = self._put(self._record(), etag)
        if self.etag is None:
            raise self._refuse(self._get()[0] or {}, "took this run's lease at the same moment")
        self._thread = threading.Thread(target=self._renew, name="trm-s3-lease", daemon=True)
        self._thread.start()
        return self

    def _renew(self) -> None:
        import signal

        while not self._stop.wait(self.ttl / 4):
            try:
                etag = self._put(self._record(), self.etag)
            except Exception as e:  # S3 unreachable for a while: the lease may lapse; try again next time
                log.warning("%s: could not renew the run's lease: %s", self.root, e)
                continue
            if etag is None:  # ours lapsed and another driver took it: two writers now, so this one stops
                self.lost = self._get()[0] or {}
                # a real SIGINT to the main thread: it wakes from a sleep or a wait, as Ctrl-C would
                signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)
                return
            self.etag = etag

    def __exit__(self, exc_type, exc, tb) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self.lost is not None:
            held = self.lost
            raise LeaseLost(
                f"{self.flag} {self.root}: stopped: this driver's lease lapsed (not renewed for {self.ttl:g} s) and "
                f"pid {held.get('pid')} on {held.get('host')} took the run over at {held.get('since')}; one "
                f"driver writes a run, so this one ended (its last checkpoint is the other's resume point)"
            ) from exc
        with contextlib.suppress(Exception):  # S3 gone: the lease lapses by itself
            self._put({**self._record(), "expires": 0, "released": _utc(time.time())}, self.etag)


def hold(root: str, flag: str) -> contextlib.AbstractContextManager:
    """The one-writer guard of a run stored at `root`: an OS lock on a local folder, a lease on S3 (another
    object store: none; the storage layer refuses those)."""
    from trm.storage import is_s3

    if is_s3(root):
        return S3Lease(root, flag)
    return RunLock(root, flag) if "://" not in root else contextlib.nullcontext()
