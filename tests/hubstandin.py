"""A stdlib stand-in for the Hugging Face Hub and a static file server, for tests.

It speaks the part of the hub protocol that ``hf_hub_download`` uses (see
``/work/shared/HUB.md``): ``HEAD``/``GET /{org}/{repo}/resolve/{revision}/{path}``
with ``X-Repo-Commit``, a sha256 ``ETag`` and an exact ``Content-Length``, and
404s carrying ``X-Error-Code`` (``RepoNotFound``, ``RevisionNotFound``,
``EntryNotFound``). It never sends xet headers, and it honours ``Range: bytes=N-``
(a 206, as the hub does), which the client sends to resume. Under ``/static/``
it serves plain files. Faults are real: a connection closed mid-file
(``cut_after``), answers of 503 (``fail_first``), and a hub file answered
with something else (an HTML page) by :meth:`HubStandIn.break_file`.

It listens on 127.0.0.1 only, on a free port, and records every request.
"""

from __future__ import annotations

import hashlib
import http.server
import threading
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

__all__ = ["HubStandIn"]


@dataclass
class _Static:
    data: bytes | None
    cut_after: int | None
    times: int | None
    fail_first: int


@dataclass
class _Repo:
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)


class HubStandIn:
    """A running stand-in server.

    Example:
        >>> server = HubStandIn()
        >>> commit = server.add_commit("org/repo", {"a.txt": b"hi"})
        >>> len(commit), server.url.startswith("http://127.0.0.1:")
        (40, True)
        >>> server.close()
    """

    def __init__(self) -> None:
        self.repos: dict[str, _Repo] = {}
        self.static: dict[str, _Static] = {}
        self.broken: dict[tuple[str, str], _Static] = {}
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="hub-stand-in", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def add_commit(self, repo_id: str, files: dict[str, bytes], *, branch: str = "main") -> str:
        """Publish ``files`` as a new commit of ``repo_id`` on ``branch``; returns the commit."""
        digest = hashlib.sha1(repo_id.encode())
        for path in sorted(files):
            digest.update(path.encode() + b"\0" + hashlib.sha256(files[path]).digest())
        with self._lock:
            repo = self.repos.setdefault(repo_id, _Repo())
            digest.update(str(len(repo.commits)).encode())
            commit = digest.hexdigest()
            repo.commits[commit] = dict(files)
            repo.refs[branch] = commit
        return commit

    def add_static(
        self, name: str, data: bytes, *, cut_after: int | None = None, times: int | None = None, fail_first: int = 0
    ) -> str:
        """Serve ``data`` at ``/static/{name}``.

        ``cut_after`` closes the connection after that many bytes of the file (on the first
        ``times`` answers, or always); ``fail_first`` answers 503 that many times first.
        """
        self.static[name] = _Static(data, cut_after, times, fail_first)
        return f"{self.url}/static/{name}"

    def break_file(self, repo_id: str, path: str, *, body: bytes | None = None, cut_after: int | None = None) -> None:
        """Answer ``path`` of every commit of ``repo_id`` wrongly: with ``body`` (as 200), or cut after ``cut_after`` bytes."""
        self.broken[(repo_id, path)] = _Static(body, cut_after, None, 0)

    def fix_file(self, repo_id: str, path: str) -> None:
        """Answer ``path`` of ``repo_id`` correctly again."""
        self.broken.pop((repo_id, path), None)

    def requested(self, fragment: str) -> list[tuple[str, str]]:
        """The recorded requests whose path contains ``fragment``."""
        return [r for r in list(self.requests) if fragment in r[1]]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


def _handler(hub: HubStandIn) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_HEAD(self) -> None:
            self._answer(body=False)

        def do_GET(self) -> None:
            self._answer(body=True)

        def log_message(self, *args: object) -> None:  # keep test output clean
            pass

        def _answer(self, *, body: bool) -> None:
            path = unquote(urlsplit(self.path).path)
            hub.requests.append((self.command, path))
            if path.startswith("/static/"):
                return self._static(path[len("/static/") :], body=body)
            parts = path.strip("/").split("/")
            if len(parts) < 5 or parts[2] != "resolve":
                return self._send(404, b"", {"X-Error-Code": "RepoNotFound"}, body=body)
            repo_id, revision, filename = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
            repo = hub.repos.get(repo_id)
            if repo is None:
                return self._send(404, b"", {"X-Error-Code": "RepoNotFound"}, body=body)
            commit = revision if revision in repo.commits else repo.refs.get(revision)
            if commit is None:
                return self._send(404, b"", {"X-Error-Code": "RevisionNotFound"}, body=body)
            data = repo.commits[commit].get(filename)
            if data is None:
                headers = {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": commit}
                return self._send(404, b"", headers, body=body)
            fault = hub.broken.get((repo_id, filename))
            cut_after = None
            if fault is not None:
                data = fault.data if fault.data is not None else data
                cut_after = fault.cut_after
            etag = f'"{hashlib.sha256(data).hexdigest()}"'
            self._file(data, {"X-Repo-Commit": commit, "ETag": etag}, body=body, cut_after=cut_after)

        def _static(self, name: str, *, body: bool) -> None:
            entry = hub.static.get(name)
            if entry is None or entry.data is None:
                return self._send(404, b"", {}, body=body)
            if entry.fail_first > 0:
                entry.fail_first -= 1
                return self._send(503, b"busy", {}, body=body)
            cut_after = entry.cut_after if body and entry.times != 0 else None
            if cut_after is not None and entry.times is not None:
                entry.times -= 1
            self._file(entry.data, {}, body=body, cut_after=cut_after)

        def _file(self, data: bytes, headers: dict[str, str], *, body: bool, cut_after: int | None) -> None:
            """200 (or 206 for ``Range: bytes=N-``); ``cut_after`` closes the connection at that offset."""
            start = 0
            wanted = self.headers.get("Range", "")
            if wanted.startswith("bytes=") and wanted.endswith("-") and wanted[6:-1].isdigit():
                start = min(int(wanted[6:-1]), len(data))
                headers = {**headers, "Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"}
            if cut_after is None or not body:
                return self._send(206 if start else 200, data[start:], headers, body=body)
            self.send_response(206 if start else 200)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            self.wfile.write(data[start:max(start, cut_after)])
            self.wfile.flush()
            self.close_connection = True

        def _send(self, status: int, data: bytes, headers: dict[str, str], *, body: bool) -> None:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if body:
                self.wfile.write(data)

    return Handler
