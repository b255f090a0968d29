"""A Hugging Face hub and a raw-GitHub host on 127.0.0.1, for the download and hub tests.

It serves files in the hub's URL layout with the headers huggingface_hub reads
(`/{datasets/}owner/name/resolve/REV/PATH`: X-Repo-Commit, ETag, Content-Length, Range -> 206),
the tree listing huggingface_hub's `list_repo_files` calls (`/api/{models|datasets}/owner/name/tree/REV`),
and plain files under `/gh/owner/name/REV/PATH` (point TRM_GITHUB_BASE at `url + "/gh"`).
`drop_once` makes the next GET of a path (by its ending) send half of its bytes and close the
connection, `drop_always` every GET;
`requests` counts what was asked for, so a test can tell that nothing went over the network.
"""
from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self


class StubHub:
    def __init__(self) -> None:
        self.repos: dict[tuple[str, str], dict] = {}  # (kind "models"|"datasets", repo) -> {commit, files}
        self.github: dict[str, bytes] = {}  # "owner/name/REV/PATH" -> bytes
        self.drop_once: set[str] = set()  # URL path endings: the next GET is cut short
        self.drop_always: set[str] = set()  # every GET is cut short
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def do_HEAD(self):
                hub._serve(self, head=True)

            def do_GET(self):
                hub._serve(self, head=False)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def add_repo(self, kind: str, repo: str, files: dict[str, bytes], commit: str | None = None) -> str:
        commit = commit or hashlib.sha1(repo.encode() + b"".join(sorted(files.values()))).hexdigest()
        self.repos[(kind, repo)] = {"commit": commit, "files": dict(files)}
        return commit

    # ---------------------------------------------------------------- serving
    def _serve(self, h: BaseHTTPRequestHandler, head: bool) -> None:
        path = h.path.split("?", 1)[0]
        self.requests.append((h.command, path, h.headers.get("Range")))
        m = re.fullmatch(r"/api/(models|datasets)/([^/]+/[^/]+)/tree/([^/]+)(/.*)?", path)
        if m:
            repo = self.repos.get((m.group(1), m.group(2)))
            if repo is None or m.group(3) not in ("main", repo["commit"]):
                return self._error(h, 404, "RepoNotFound" if repo is None else "RevisionNotFound")
            listing = [{"type": "file", "path": p, "size": len(b), "oid": hashlib.sha1(b).hexdigest()}
                       for p, b in sorted(repo["files"].items())]
            return self._send(h, 200, json.dumps(listing).encode(), {"Content-Type": "application/json"}, head)
        m = re.fullmatch(r"/(datasets/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if m:
            repo = self.repos.get(("datasets" if m.group(1) else "models", m.group(2)))
            if repo is None:
                return self._error(h, 404, "RepoNotFound")
            if m.group(3) not in ("main", repo["commit"]):
                return self._error(h, 404, "RevisionNotFound", repo["commit"])
            body = repo["files"].get(m.group(4))
            if body is None:
                return self._error(h, 404, "EntryNotFound", repo["commit"])
            headers = {"X-Repo-Commit": repo["commit"], "ETag": f'"{hashlib.sha256(body).hexdigest()}"'}
            return self._send_file(h, path, body, headers, head)
        m = re.fullmatch(r"/gh/(.+)", path)
        if m and m.group(1) in self.github:
            return self._send_file(h, path, self.github[m.group(1)], {}, head)
        return self._error(h, 404, "NotFound")

    def _send_file(self, h, path: str, body: bytes, headers: dict, head: bool) -> None:
        start = 0
        rng = h.headers.get("Range")
        if rng and not head:
            start = int(re.fullmatch(r"bytes=(\d+)-\d*", rng).group(1))
            if start >= len(body):
                return self._send(h, 416, b"", {"Content-Range": f"bytes */{len(body)}"}, head)
            headers = {**headers, "Content-Range": f"bytes {start}-{len(body) - 1}/{len(body)}"}
        part = body[start:]
        dropped = [d for d in self.drop_once | self.drop_always if path.endswith(d)]
        if not head and dropped:  # half the bytes, then a dropped connection
            self.drop_once.discard(dropped[0])
            h.send_response(206 if start else 200)
            for k, v in {**headers, "Content-Length": str(len(part)), "Accept-Ranges": "bytes"}.items():
                h.send_header(k, v)
            h.end_headers()
            h.wfile.write(part[:len(part) // 2])
            h.wfile.flush()
            h.connection.shutdown(socket.SHUT_RDWR)
            h.close_connection = True
            return
        self._send(h, 206 if start else 200, part, {**headers, "Accept-Ranges": "bytes"}, head)

    @staticmethod
    def _send(h, code: int, body: bytes, headers: dict, head: bool) -> None:
        h.send_response(code)
        for k, v in {**headers, "Content-Length": str(len(body))}.items():
            h.send_header(k, v)
        h.end_headers()
        if not head:
            h.wfile.write(body)

    def _error(self, h, code: int, kind: str, commit: str | None = None) -> None:
        headers = {"X-Error-Code": kind, "Content-Type": "application/json"}
        if commit:
            headers["X-Repo-Commit"] = commit
        self._send(h, code, json.dumps({"error": kind}).encode(), headers, h.command == "HEAD")
