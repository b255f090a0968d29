"""The spot notice (issue 17.6): a stand-in EC2 metadata service on 127.0.0.1 that the test flips, the
watcher that polls it (IMDSv2 token, 404 until a notice), and a real `trm train` that checkpoints
within the notice when it appears."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.test_faults import REPO, TINY
from trm.spot import ACTION_PATH, TOKEN_PATH, URL_ENV, SpotWatcher


class Metadata:
    """The instance metadata service's spot endpoints, as EC2 answers them (IMDSv2)."""

    TOKEN = "stand-in-token"

    def __init__(self) -> None:
        self.action: dict | None = None
        self.requests: list[tuple[str, str, str | None]] = []
        metadata = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _send(self, code: int, body: str = "") -> None:
                data = body.encode()
                self.send_response(code)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_PUT(self) -> None:
                metadata.requests.append(("PUT", self.path, None))
                if self.path == TOKEN_PATH and self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
                    self._send(200, Metadata.TOKEN)
                else:
                    self._send(400)

            def do_GET(self) -> None:
                token = self.headers.get("X-aws-ec2-metadata-token")
                metadata.requests.append(("GET", self.path, token))
                if token != Metadata.TOKEN:
                    self._send(401)
                elif self.path == ACTION_PATH and metadata.action is not None:
                    self._send(200, json.dumps(metadata.action))
                else:
                    self._send(404)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def announce(self) -> None:
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 120))
        self.action = {"action": "terminate", "time": when}


@pytest.fixture
def metadata():
    m = Metadata()
    yield m
    m.server.shutdown()


def test_the_watcher_sees_a_notice_only_once_it_is_given(metadata):
    watcher = SpotWatcher(metadata.url, poll_seconds=0.05).start()
    time.sleep(0.5)
    assert not watcher.noticed.is_set()
    assert ("GET", ACTION_PATH, Metadata.TOKEN) in metadata.requests  # IMDSv2: with the session token
    metadata.announce()
    assert watcher.noticed.wait(5)
    assert watcher.action == metadata.action


def test_without_a_metadata_service_the_watcher_stops_at_once():
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    watcher = SpotWatcher(f"http://127.0.0.1:{port}", poll_seconds=0.05).start()
    assert watcher._thread is not None
    watcher._thread.join(5)
    assert not watcher._thread.is_alive() and not watcher.noticed.is_set()


@pytest.mark.slow  # a real `trm train` in a subprocess: about 2 minutes on a loaded 2-core machine
def test_a_run_checkpoints_within_the_notice(metadata, tmp_path):
    """A long `trm train` (checkpoint_every far away) writes a checkpoint off its cadence within
    seconds of the notice, and goes on."""
    from trm.data import sudoku

    data = tmp_path / "sudoku"
    sudoku.build_dataset(data, sudoku.generate(16, 0, 30, 40, 0)[:2], sudoku.generate(8, 1, 30, 40, 0)[:2], 1, 0)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MLFLOW_TRACKING_URI": "",
           URL_ENV: metadata.url}  # fmt: skip
    settings = [*TINY, "--set", "steps=100000", "--set", "checkpoint_every=50000", "--set", "eval_every=50000",
                "--set", "checkpoint_minutes=600"]  # fmt: skip
    log = tmp_path / "train.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "trm.cli", "train", "--out", "runs/x", "--no-tracking",
                                 "--set", f"data_path={data}", *settings],
                                cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    run = tmp_path / "runs" / "x"
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (run / "metrics.jsonl").is_file():
            assert proc.poll() is None, log.read_text()[-3000:]
            time.sleep(0.2)
        assert not list((run / "checkpoints").glob("step_*")), "a checkpoint before any notice"
        metadata.announce()
        noticed = time.time()
        while time.time() < noticed + 60 and not list((run / "checkpoints").glob("step_*/state.pt")):
            assert proc.poll() is None, log.read_text()[-3000:]
            time.sleep(0.2)
        took = time.time() - noticed
        (folder,) = list((run / "checkpoints").glob("step_*"))
        assert took < 60, f"no checkpoint {took:.0f} s into a 120 s notice"
        time.sleep(1)
        assert proc.poll() is None  # training goes on until the machine is taken
        assert "spot notice: terminate" in log.read_text()
        assert int(folder.name.split("_")[1].split("-")[0]) % 50000 != 0  # off the cadence: the notice's
    finally:
        proc.kill()
        proc.wait()
    assert Path(folder / "state.pt").stat().st_size > 0
