"""A stdlib stand-in for the Hugging Face Hub and a static file server, for tests.

It speaks the part of the hub protocol that ``hf_hub_download`` uses (see
``/work/shared/HUB.md``): ``HEAD``/``GET /{org}/{repo}/resolve/{revision}/{path}``
with ``X-Repo-Commit``, a sha256 ``ETag`` and an exact ``Content-Length``, and
404s carrying ``X-Error-Code`` (``RepoNotFound``, ``RevisionNotFound``,
``EntryNotFound``). It never sends xet headers, and it honours ``Range: bytes=N-``
(a 206, as the hub does), which the client sends to resume. Under ``/static/``
it serves plain files. Faults are real: a connection closed mid-file
(``cut_after``), one held silent mid-file (``stall_after``), a file sent a
byte at a time (``drip``), answers of 503 (``fail_first``, with a
``Retry-After``), and a hub file answered with something else (an HTML page)
by :meth:`HubStandIn.break_file`.

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
    retry_after: str | None = None  # the Retry-After header of the 503s
    stall_after: int | None = None  # send this many bytes of the file, then nothing, holding the connection
    drip: float | None = None  # send the file one byte at a time, this many seconds apart
    silent: bool = False  # read the request, never answer, hold the connection
    redirect_to: str | None = None  # answer with an LFS-style 302 to this URL (another origin)


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
        self._closing = threading.Event()  # releases the connections held silent
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
        self,
        name: str,
        data: bytes,
        *,
        cut_after: int | None = None,
        times: int | None = None,
        fail_first: int = 0,
        retry_after: str | None = None,
        drip: float | None = None,
    ) -> str:
        """Serve ``data`` at ``/static/{name}``.

        ``cut_after`` closes the connection after that many bytes of the file (on the first
        ``times`` answers, or always); ``fail_first`` answers 503 that many times first, with
        ``retry_after`` as their ``Retry-After``; ``drip`` sends the file a byte at a time.
        """
        self.static[name] = _Static(data, cut_after, times, fail_first, retry_after, drip=drip)
        return f"{self.url}/static/{name}"

    def break_file(
        self,
        repo_id: str,
        path: str,
        *,
        body: bytes | None = None,
        cut_after: int | None = None,
        stall_after: int | None = None,
        drip: float | None = None,
        busy: str | None = None,
        silent: bool = False,
        redirect_to: str | None = None,
    ) -> None:
        """Answer ``path`` of every commit of ``repo_id`` wrongly: with ``body`` (as 200), cut after ``cut_after``
        bytes, silent after ``stall_after`` bytes (until :meth:`close`), a byte every ``drip`` seconds,
        503 with ``Retry-After: {busy}``, (``silent``) not at all: the request is read, the connection held, or
        with the hub's LFS-style 302 to ``redirect_to`` (``X-Linked-Etag``, ``X-Linked-Size``), where the client
        then fetches the file."""
        self.broken[(repo_id, path)] = _Static(
            body,
            cut_after,
            None,
            0,
            retry_after=busy,
            stall_after=stall_after,
            drip=drip,
            silent=silent,
            redirect_to=redirect_to,
        )

    def fix_file(self, repo_id: str, path: str) -> None:
        """Answer ``path`` of ``repo_id`` correctly again."""
        self.broken.pop((repo_id, path), None)

    def requested(self, fragment: str) -> list[tuple[str, str]]:
        """The recorded requests whose path contains ``fragment``."""
        return [r for r in list(self.requests) if fragment in r[1]]

    def close(self) -> None:
        self._closing.set()
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
            if fault is not None and fault.silent:
                hub._closing.wait(60)  # no answer at all, the connection held open
                self.close_connection = True
                return
            if fault is not None and fault.redirect_to is not None:
                linked = {
                    "Location": fault.redirect_to,
                    "X-Repo-Commit": commit,
                    "X-Linked-Etag": f'"{hashlib.sha256(data).hexdigest()}"',
                    "X-Linked-Size": str(len(data)),
                }
                return self._send(302, b"", linked, body=body)
            if fault is not None and fault.retry_after is not None:
                return self._send(503, b"busy", {"X-Repo-Commit": commit, "Retry-After": fault.retry_after}, body=body)
            if fault is not None:
                data = fault.data if fault.data is not None else data
            etag = f'"{hashlib.sha256(data).hexdigest()}"'
            self._file(data, {"X-Repo-Commit": commit, "ETag": etag}, body=body, fault=fault)

        def _static(self, name: str, *, body: bool) -> None:
            entry = hub.static.get(name)
            if entry is None or entry.data is None:
                return self._send(404, b"", {}, body=body)
            if entry.fail_first > 0:
                entry.fail_first -= 1
                return self._send(503, b"busy", {"Retry-After": entry.retry_after} if entry.retry_after else {}, body=body)
            cut_after = entry.cut_after if body and entry.times != 0 else None
            if cut_after is not None and entry.times is not None:
                entry.times -= 1
            self._file(entry.data, {}, body=body, fault=_Static(None, cut_after, None, 0, drip=entry.drip))

        def _file(self, data: bytes, headers: dict[str, str], *, body: bool, fault: _Static | None) -> None:
            """200 (or 206 for ``Range: bytes=N-``); ``fault`` cuts, stalls or drips the body."""
            start = 0
            wanted = self.headers.get("Range", "")
            if wanted.startswith("bytes=") and wanted.endswith("-") and wanted[6:-1].isdigit():
                start = min(int(wanted[6:-1]), len(data))
                headers = {**headers, "Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"}
            fault = fault or _Static(None, None, None, 0)
            if not body or (fault.cut_after, fault.stall_after, fault.drip) == (None, None, None):
                return self._send(206 if start else 200, data[start:], headers, body=body)
            self.send_response(206 if start else 200)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            self.close_connection = True
            try:
                if fault.drip is not None:
                    for offset in range(start, len(data)):
                        self.wfile.write(data[offset : offset + 1])
                        self.wfile.flush()
                        if hub._closing.wait(fault.drip):
                            return
                    return
                end = fault.cut_after if fault.cut_after is not None else fault.stall_after
                self.wfile.write(data[start : max(start, end)])  # type: ignore[type-var]
                self.wfile.flush()
                if fault.stall_after is not None:
                    hub._closing.wait(60)  # silent, the connection open, until the session ends (or a minute)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up: that is what the fault is for
                pass

        def _send(self, status: int, data: bytes, headers: dict[str, str], *, body: bool) -> None:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if body:
                self.wfile.write(data)

    return Handler
