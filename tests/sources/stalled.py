"""Real stalled servers on 127.0.0.1: a socket that accepts and then goes silent, and one that never accepts."""

from __future__ import annotations

import socket
import threading


class StalledServer:
    """Accepts every connection, reads the request, sends ``first`` (maybe nothing) and then nothing more.

    The connections stay open until :meth:`close`, so the client sees a server that
    is there but stalls: before answering, or mid-file when ``first`` holds the
    headers and the start of a body.
    """

    def __init__(self, first: bytes = b"") -> None:
        self.first = first
        self.accepted = 0
        self._held: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)  # so that close() stops the accept loop at once
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="stalled-server", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._listener.getsockname()[:2]
        return f"http://{host}:{port}"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(None)
            self.accepted += 1
            self._held.append(conn)
            request = b""
            while b"\r\n\r\n" not in request:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                request += chunk
            if self.first:
                conn.sendall(self.first)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._listener.close()
        for conn in self._held:
            conn.close()

    def __enter__(self) -> StalledServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class FullBacklog:
    """A listening socket that never accepts, its accept queue filled, so a new connect gets no answer.

    Linux drops the SYN of a connection that a full accept queue cannot take, and the
    client waits for a SYN-ACK that never comes: a real connect timeout on 127.0.0.1.
    """

    def __init__(self) -> None:
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(0)
        self.accepted = 0  # never: that is the point
        self._fillers: list[socket.socket] = []
        for _ in range(2):  # the queue takes backlog + 1
            filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            filler.setblocking(False)
            filler.connect_ex(self._listener.getsockname())
            self._fillers.append(filler)

    @property
    def url(self) -> str:
        host, port = self._listener.getsockname()[:2]
        return f"http://{host}:{port}"

    def close(self) -> None:
        for sock in (*self._fillers, self._listener):
            sock.close()

    def __enter__(self) -> FullBacklog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
