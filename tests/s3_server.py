"""A real S3 endpoint for tests: moto's standalone server in a subprocess.

Use it from any test module with::

    from tests.s3_server import s3_server  # noqa: F401  (pytest fixture)

    def test_x(s3_server):
        uri = f"s3://{s3_server.bucket}/run"

While the fixture is active the process environment points every AWS client
at it (fake credentials, ``AWS_ENDPOINT_URL``, ``MLFLOW_S3_ENDPOINT_URL``), so
boto3, pyarrow, Ray ``storage_path="s3://..."`` and MLflow work unchanged;
subprocesses started meanwhile (Ray workers, an MLflow server) inherit it.
The server is module-scoped: one per importing test module.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

FAKE_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    # Keep a developer's real ~/.aws config out of the tests.
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
}


@dataclass
class S3Server:
    endpoint: str
    port: int
    bucket: str = "trm-test"
    env: dict[str, str] = field(default_factory=dict)

    def client(self, **kwargs: object):  # -> botocore S3 client
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1", **kwargs)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# `moto_server`, plus one fix that makes it answer like AWS: moto 5.2 names the
# CompleteMultipartUpload reply root <CompleteMultipartUploadResponse>, real S3
# says <CompleteMultipartUploadResult>. pyarrow (>= 2025 releases; Ray
# checkpoints and copy_files go through it) treats any other root as an error
# embedded in a 200 reply and retries for minutes, then fails, on every object
# above its single-PUT size. The shim is a no-op once moto sends the right name.
_MOTO_MAIN = """
import sys
from moto.core import serialize as _s
_orig = _s.S3Serializer._serialize_body
def _serialize_body(self, body):
    if "CompleteMultipartUploadResponse" in body:
        body = {"CompleteMultipartUploadResult": body["CompleteMultipartUploadResponse"]}
    return _orig(self, body)
_s.S3Serializer._serialize_body = _serialize_body
from moto.server import main
main(sys.argv[1:])
"""


@contextlib.contextmanager
def run_moto_server(timeout_s: float = 20.0) -> Iterator[tuple[str, int]]:
    """Start ``moto_server`` on a free port, wait until it answers, stop it after."""
    port = free_port()
    cmd = [sys.executable, "-c", _MOTO_MAIN, "-H", "127.0.0.1", "-p", str(port)]
    env = {**os.environ, **FAKE_AWS_ENV}
    env.pop("INITIAL_NO_AUTH_ACTION_COUNT", None)  # auth off unless a test enables it
    # Log to a file, not a pipe: nobody reads the pipe and a full pipe blocks moto.
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        endpoint = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                if proc.poll() is not None:
                    log.seek(0)
                    raise RuntimeError(f"moto_server exited ({proc.returncode}):\n{log.read().decode()}")
                try:
                    with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1):
                        break
                except (urllib.error.URLError, OSError):
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"moto_server did not answer on {endpoint} in {timeout_s}s")
                    time.sleep(0.1)
            yield endpoint, port
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextlib.contextmanager
def enforce_auth(server: S3Server) -> Iterator[None]:
    """Make the running moto server check credentials (it accepts any by default).

    Uses moto's ``/moto-api/reset-auth`` endpoint: with a count of 0 every
    request must be signed by a key that exists in moto's IAM, so the fake
    keys are rejected with ``InvalidAccessKeyId``. Restored on exit.
    """

    def post(value: str) -> None:
        req = urllib.request.Request(f"{server.endpoint}/moto-api/reset-auth", data=value.encode(), method="POST",
                                     headers={"Content-Type": "text/plain"})
        with urllib.request.urlopen(req, timeout=5):
            pass

    post("0")
    try:
        yield
    finally:
        post("inf")


@pytest.fixture(scope="module")
def s3_server() -> Iterator[S3Server]:
    with run_moto_server() as (endpoint, port), pytest.MonkeyPatch.context() as mp:
        env = {**FAKE_AWS_ENV, "AWS_ENDPOINT_URL": endpoint, "MLFLOW_S3_ENDPOINT_URL": endpoint}
        for k, v in env.items():
            mp.setenv(k, v)
        for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
            mp.delenv(k, raising=False)
        server = S3Server(endpoint=endpoint, port=port, env=env)
        server.client().create_bucket(Bucket=server.bucket)
        yield server
