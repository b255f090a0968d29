"""trm.storage: checks of local and S3 storage, dataset upload/download/cache, against a real S3 endpoint."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest

from tests.s3_server import S3Server, enforce_auth, free_port, s3_server  # noqa: F401
from trm.storage import StorageError, check_storage, download_dir, join, resolve, upload_dir


def test_resolve_and_join(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert resolve("runs") == str(tmp_path / "runs")
    assert resolve("s3://b/p") == "s3://b/p"
    assert join("s3://b/p/", "name", "/x") == "s3://b/p/name/x"


# --- storage: local ---------------------------------------------------------


def test_check_storage_local(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b"
    check_storage(str(target))
    assert target.is_dir() and list(target.iterdir()) == []
    check_storage(f"file://{target}")


def test_check_storage_local_not_writable(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StorageError, match="is a file, so the folder cannot be created"):
        check_storage(str(blocker / "sub"))


def test_check_storage_bad_scheme() -> None:
    with pytest.raises(StorageError, match="unsupported scheme"):
        check_storage("gs://bucket/x")


# --- storage: S3 through a real moto server ---------------------------------


def test_check_storage_s3_ok(s3_server: S3Server) -> None:
    check_storage(f"s3://{s3_server.bucket}/trm/runs")
    check_storage(f"s3://{s3_server.bucket}")
    # The probe object is removed again.
    assert s3_server.client().list_objects_v2(Bucket=s3_server.bucket, Prefix="trm/").get("KeyCount") == 0


def test_check_storage_s3_missing_bucket(s3_server: S3Server) -> None:
    with pytest.raises(StorageError, match="bucket 'no-such-bucket' does not exist"):
        check_storage("s3://no-such-bucket/trm")


def test_check_storage_s3_wrong_credentials(s3_server: S3Server) -> None:
    # moto accepts any key unless told to enforce auth; then unknown keys are
    # rejected exactly like AWS does (InvalidAccessKeyId, HTTP 403).
    with enforce_auth(s3_server), pytest.raises(StorageError, match="credentials were rejected"):
        check_storage(f"s3://{s3_server.bucket}/trm")
    check_storage(f"s3://{s3_server.bucket}/trm")  # auth back off


def _assert_no_answer_within_10s(monkeypatch: pytest.MonkeyPatch, endpoint: str) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    for key, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                       ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(key, value)
    t0 = time.monotonic()
    with pytest.raises(StorageError, match="does not answer"):
        check_storage("s3://bucket/trm", timeout_s=1.0)
    assert time.monotonic() - t0 < 10


def test_check_storage_s3_dead_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()  # nothing listens here
    _assert_no_answer_within_10s(monkeypatch, f"http://127.0.0.1:{port}")


def test_check_storage_s3_hanging_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    # Accepts TCP connections (kernel backlog) but never answers a request.
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(16)
        _assert_no_answer_within_10s(monkeypatch, f"http://127.0.0.1:{srv.getsockname()[1]}")


def _make_dataset(root: Path, version: str) -> Path:
    (root / "train").mkdir(parents=True)
    (root / "train" / "inputs.bin").write_bytes(b"\x01\x02" * 1000)
    (root / "test.bin").write_bytes(b"\x03" * 10)
    (root / "meta.json").write_text(json.dumps({"version": version}))
    return root


def test_upload_download_round_trip(s3_server: S3Server, tmp_path: Path) -> None:
    src = _make_dataset(tmp_path / "src", "v1")
    uri = f"s3://{s3_server.bucket}/trm/data/sudoku"
    assert upload_dir(src, uri) is True
    assert upload_dir(src, uri) is False  # same meta.json: uploaded once

    cache = tmp_path / "cache"
    dest = download_dir(uri, cache_dir=cache)
    assert dest == (cache / s3_server.bucket / "trm/data/sudoku").resolve()
    for f in ("train/inputs.bin", "test.bin", "meta.json"):
        assert (dest / f).read_bytes() == (src / f).read_bytes()

    # Cached: a second call does not download (a local marker survives).
    (dest / "local-marker").write_text("x")
    assert download_dir(uri, cache_dir=cache) == dest
    assert (dest / "local-marker").exists()

    # New meta.json upstream: the cache is replaced as a whole.
    (src / "meta.json").write_text(json.dumps({"version": "v2"}))
    (src / "test.bin").write_bytes(b"\x04" * 10)
    assert upload_dir(src, uri) is True
    dest2 = download_dir(uri, cache_dir=cache)
    assert dest2 == dest and not (dest / "local-marker").exists()
    assert (dest / "test.bin").read_bytes() == b"\x04" * 10
    assert [p.name for p in dest.parent.iterdir() if p.name.startswith(".sudoku.tmp")] == []

    # Explicit local_dir, and a local "uri" is returned as is.
    other = download_dir(uri, local_dir=tmp_path / "explicit")
    assert json.loads((other / "meta.json").read_text()) == {"version": "v2"}
    assert download_dir(str(src)) == src.resolve()


def test_download_missing_prefix(s3_server: S3Server, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        download_dir(f"s3://{s3_server.bucket}/nothing/here", cache_dir=tmp_path)


def test_s3_lease_one_driver_renewed_released_and_taken_over_when_lost(
    s3_server: S3Server, caplog: pytest.LogCaptureFixture
) -> None:
    """A run on S3 has one driver: a second is refused naming the holder while the holder renews its
    lease; a released lease is free at once; of two drivers racing for a free lease, the conditional
    write lets one in; a killed driver's lease is taken over at once on its own host, and on another once
    it lapses, saying whose it was; and the driver whose lease was taken over stops, saying by whom."""
    import os
    import signal
    import socket
    import subprocess
    import sys

    from trm.run_lock import LEASE_FILE, RunLockedError, S3Lease

    root = f"s3://{s3_server.bucket}/runs/leased"
    key = f"runs/leased/{LEASE_FILE}"
    # TTLs of seconds, not minutes (renewed every TTL/4): long enough for a slow PUT on a loaded machine
    with S3Lease(root, "--name", ttl=4.0):
        time.sleep(5.0)  # past the first lease's expiry: only the renewal keeps it live
        with pytest.raises(RunLockedError, match=rf"--name {root}: another driver holds .*pid {os.getpid()} on "):
            S3Lease(root, "--name", ttl=4.0).__enter__()
    with S3Lease(root, "--name", ttl=4.0):  # released: no wait
        pass

    # two drivers see a free lease at once: the second write is refused by S3 (If-Match on what it read)
    late = S3Lease(root, "--name", ttl=4.0)
    _, seen = late._get()
    with S3Lease(root, "--name", ttl=4.0) as first:
        assert late._put(late._record(), seen) is None
        held = json.loads(s3_server.client().get_object(Bucket=s3_server.bucket, Key=key)["Body"].read())
        assert held["token"] == first.token

    # a driver killed with its lease held (kill -9: nothing released): refused while it lives; once it is
    # gone, a driver on the same host takes over at once (no wait for the lapse)
    code = (
        "import sys, time; from trm.run_lock import S3Lease; "
        f"S3Lease({root!r}, '--name', ttl=60.0).__enter__(); print('held', flush=True); time.sleep(60)"
    )
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "held"
        with pytest.raises(RunLockedError, match=f"pid {p.pid} on"):
            S3Lease(root, "--name", ttl=4.0).__enter__()
    finally:
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
    with caplog.at_level("WARNING", logger="trm.run_lock"), S3Lease(root, "--name", ttl=4.0) as lease:
        held = json.loads(s3_server.client().get_object(Bucket=s3_server.bucket, Key=key)["Body"].read())
        assert held["token"] == lease.token and held["pid"] == os.getpid()
    assert f"taking over the lease of pid {p.pid} on {socket.gethostname()}, whose process has ended" in caplog.text

    # a driver on another machine: its lease holds until it lapses, then it is taken over
    def elsewhere(expires: float) -> None:
        lease = {"token": "x", "host": "elsewhere", "pid": 7, "since": "then", "expires": expires}
        s3_server.client().put_object(Bucket=s3_server.bucket, Key=key, Body=json.dumps(lease).encode())

    elsewhere(time.time() + 60)
    with pytest.raises(RunLockedError, match="pid 7 on elsewhere"):
        S3Lease(root, "--name", ttl=4.0).__enter__()
    elsewhere(time.time() - 1)
    with caplog.at_level("WARNING", logger="trm.run_lock"), S3Lease(root, "--name", ttl=4.0):
        pass
    assert "taking over the lease of pid 7 on elsewhere, which lapsed at" in caplog.text

    # a driver whose lease another took over (as after a lapse: here the object is simply replaced) stops
    code = (
        "import time; from trm.run_lock import S3Lease\n"
        f"with S3Lease({root!r}, '--name', ttl=2.0):\n"
        "    print('held', flush=True)\n"
        "    time.sleep(60)\n"
    )
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "held"
        other = {"token": "other", "host": "elsewhere", "pid": 4242, "since": "now", "expires": time.time() + 60}
        s3_server.client().put_object(Bucket=s3_server.bucket, Key=key, Body=json.dumps(other).encode())
        _, err = p.communicate(timeout=20)  # within a renewal (0.5 s), not the 60 s sleep
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode != 0 and "LeaseLost: --name" in err, err[-2000:]
    assert "pid 4242 on elsewhere took the run over" in err, err[-2000:]