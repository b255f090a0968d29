"""A real MLflow tracking server on loopback, started through mlflow/serve.sh.

    from tests.mlflow_server import mlflow_server  # noqa: F401  (pytest fixture)
"""
from __future__ import annotations

import os
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.s3_server import free_port

REPO = Path(__file__).resolve().parents[1]


def start_mlflow(folder: Path, artifacts: str | None = None, env: dict | None = None):
    port = free_port()
    cmd = ["bash", str(REPO / "mlflow" / "serve.sh"), "--port", str(port),
           "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
           "--artifacts-destination", artifacts or str(folder / "artifacts")]
    log = open(folder / "mlflow-server.log", "w")
    proc = subprocess.Popen(cmd, cwd=folder, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, **(env or {})}, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited: {(folder / 'mlflow-server.log').read_text()[-2000:]}")
        try:
            urllib.request.urlopen(uri + "/health", timeout=2).read()
            return proc, uri
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("mlflow server did not answer /health within 90 s")


def stop(proc) -> None:
    import signal

    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mlflow")
    proc, uri = start_mlflow(folder)
    yield uri
    stop(proc)
