"""The spot provider's preemption notice, watched from the machine a run trains on.

AWS announces a spot interruption two minutes ahead in the instance metadata
(`/latest/meta-data/spot/instance-action`: 404 until then, then JSON with the action and its time;
IMDSv2: a session token first). A daemon thread polls it every few seconds; the training loop reads
`noticed` at its next log or evaluation boundary (through its `Session.agree`) and writes a
checkpoint without an evaluation, well inside the notice. Ray Train's own preemption info covers
nodes that Ray drains; this covers the notice Ray does not see.

Off EC2 the first request finds no metadata service (a connection refused or a timeout of a
fraction of a second, in the thread) and the watcher stops. `TRM_SPOT_METADATA_URL` points it
elsewhere (a test's stand-in server); `TRM_SPOT_WATCH=0` turns it off.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import urllib.error
import urllib.request

log = logging.getLogger(__name__)

METADATA_URL = "http://169.254.169.254"
URL_ENV, WATCH_ENV = "TRM_SPOT_METADATA_URL", "TRM_SPOT_WATCH"
TOKEN_PATH, ACTION_PATH = "/latest/api/token", "/latest/meta-data/spot/instance-action"
POLL_SECONDS = 5.0  # AWS updates the notice every 5 s; the notice gives 120 s


class SpotWatcher:
    """Polls the metadata service in a daemon thread until a notice appears (`noticed` set, `action`
    holds its JSON) or the service turns out to be absent."""

    def __init__(self, base_url: str | None = None, poll_seconds: float = POLL_SECONDS, timeout: float = 0.5):
        self.base_url = (base_url or os.environ.get(URL_ENV) or METADATA_URL).rstrip("/")
        self.poll_seconds, self.timeout = poll_seconds, timeout
        self.noticed = threading.Event()
        self.action: dict | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> SpotWatcher:
        if os.environ.get(WATCH_ENV, "1") != "0" and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="trm-spot-watcher", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        first = True
        while not self._stop.is_set():
            try:
                action = self.poll()
            except (urllib.error.URLError, OSError, ValueError) as e:
                if first:  # no metadata service here: not a spot instance
                    log.debug("no instance metadata at %s (%s): spot notices not watched", self.base_url, e)
                    return
                action = None  # a passing hiccup of a service that answered before
            first = False
            if action is not None:
                self.action = action
                self.noticed.set()
                log.warning("spot notice: %s at %s; checkpointing at the next boundary", action.get("action"),
                            action.get("time"))  # fmt: skip
                return
            self._stop.wait(self.poll_seconds)

    def poll(self) -> dict | None:
        """The pending interruption (its JSON), or None; raises when the service does not answer."""
        token = self._token()
        headers = {"X-aws-ec2-metadata-token": token} if token else {}
        try:
            with urllib.request.urlopen(urllib.request.Request(self.base_url + ACTION_PATH, headers=headers),
                                        timeout=self.timeout) as r:  # fmt: skip
                return json.loads(r.read().decode() or "{}")
        except urllib.error.HTTPError as e:
            if e.code == 404:  # no interruption scheduled
                return None
            raise

    def _token(self) -> str | None:
        """An IMDSv2 session token (None where the service is IMDSv1-only)."""
        req = urllib.request.Request(self.base_url + TOKEN_PATH, method="PUT",
                                     headers={"X-aws-ec2-metadata-token-ttl-seconds": "300"})  # fmt: skip
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                return r.read().decode()
        except urllib.error.HTTPError as e:
            if e.code in (403, 404, 405):
                return None
            raise
