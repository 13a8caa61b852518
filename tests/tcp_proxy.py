"""A loopback TCP proxy the tests put in front of PostgreSQL to stage an outage without touching the server.

`cut()` closes every proxied connection (the client sees the server hang up mid-conversation) and closes the
listening socket, so new connections are refused, as with a database that went down. `restore()` listens on
the same port again. Threads, not asyncio: the proxy must keep working while a test's own event loop blocks.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType


class TCPProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._cut = False
        self._stopped = False
        self._listening = threading.Event()
        self._refusing = threading.Event()
        self._listener = self._listen(0)
        self.port: int = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, name="tcp-proxy", daemon=True)

    def _listen(self, port: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(128)
        sock.settimeout(0.05)  # the accept loop wakes to notice cut/restore/stop
        self._listening.set()
        return sock

    def __enter__(self) -> TCPProxy:
        self._thread.start()
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self._stopped = True
        self._thread.join(5)
        self._drop_all()

    def cut(self) -> None:
        """Drop every connection and refuse new ones until `restore()`."""
        with self._lock:
            self._cut = True
        self._listening.clear()
        self._drop_all()
        assert self._refusing.wait(5), "the proxy did not stop listening"

    def restore(self) -> None:
        self._listening.clear()
        self._refusing.clear()
        with self._lock:
            self._cut = False
        assert self._listening.wait(5), "the proxy did not listen again"

    def _drop_all(self) -> None:
        with self._lock:
            conns, self._conns = self._conns, set()
        for sock in conns:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes the pump blocked in recv() on it
            sock.close()

    def _serve(self) -> None:
        listener: socket.socket | None = self._listener
        while not self._stopped:
            if self._cut:
                if listener is not None:
                    listener.close()  # refused from now on
                    listener = None
                    # Connections accepted between the cut and the close are dropped too.
                    self._drop_all()
                self._refusing.set()
                threading.Event().wait(0.02)
                continue
            if listener is None:
                listener = self._listen(self.port)
            self._listening.set()
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                continue
            self._open(client)
        if listener is not None:
            listener.close()

    def _open(self, client: socket.socket) -> None:
        client.settimeout(None)
        try:
            server = socket.create_connection(self.target, timeout=5)
        except OSError:
            client.close()
            return
        server.settimeout(None)
        # Without TCP_NODELAY, Nagle's algorithm meets delayed ACKs on each hop: ~40 ms per small message, which
        # turns a trace write of a few round trips into a quarter of a second.
        for sock in (client, server):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            if self._cut:
                client.close()
                server.close()
                return
            self._conns.update((client, server))
        for src, dst in ((client, server), (server, client)):
            threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            # One side ended: end the other, so the client notices at once (as with a dying server).
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            with self._lock:
                self._conns.discard(src)
                self._conns.discard(dst)
            src.close()
