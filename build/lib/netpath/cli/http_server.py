"""The exporter's HTTP server: no client, slow or hostile, can stop the scrapes or the exit.

- The server listens before the probes are attached: /healthz and /metrics answer 503 until they are.
- One thread accepts; each connection goes to a bounded queue that WORKERS threads serve. When the
  queue is full, accepting waits and new connections wait in the kernel's listen backlog.
- Every connection has a socket timeout (IDLE_TIMEOUT_S without a byte) and a deadline: the TLS
  handshake and the request head must arrive within HEAD_DEADLINE_S however slowly they trickle in
  (slowloris), the whole exchange within CONNECTION_DEADLINE_S. A reaper thread shuts down sockets
  past their deadline, which wakes the worker blocked on them.
- One request per connection (HTTP/1.0, then close): an idle keep-alive never holds a worker.
- One scrape's map work at a time (SharedScrape): scrapes that arrive meanwhile wait, then take a
  result computed after they arrived, so 50 concurrent scrapers cost a few map reads, not 50.
- close() stops accepting and shuts down every open connection: it returns at once, whatever the
  clients do.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import queue
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import urlsplit

from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric

from netpath.cli.web_config import BasicAuth

WORKERS = 8
QUEUE = 64
BACKLOG = 128
IDLE_TIMEOUT_S = 5.0
HEAD_DEADLINE_S = 10.0
CONNECTION_DEADLINE_S = 60.0
_POLL_S = 0.2


class ScrapeClosed(Exception):
    """The exporter is stopping: the maps are being detached."""


class SharedScrape:
    """Runs collect() at most once at a time; a scrape waiting on another takes the next fresh result.

    A result is fresh for a scrape when its map reading started after the
    scrape arrived, so no scrape gets counts older than its own request.
    Encodings (text, OpenMetrics, gzip) of one result are kept beside it.
    """

    def __init__(self, collect: Callable[[], Iterable[Metric]]) -> None:
        self._collect = collect
        self._lock = threading.Lock()
        self._started = float("-inf")
        self._families: list[Metric] = []
        self._encoded: dict[tuple[str, bool], bytes] = {}
        self._closed = False
        self.collections = 0

    def body(self, accept: str, gzipped: bool) -> tuple[bytes, str]:
        arrived = time.monotonic()
        with self._lock:
            if self._closed:
                raise ScrapeClosed
            if self._started < arrived:
                started = time.monotonic()
                self._families = list(self._collect())
                self._started = started
                self._encoded.clear()
                self.collections += 1
            encoder, content_type = choose_encoder(accept)
            key = (content_type, gzipped)
            if key not in self._encoded:
                om = content_type.startswith("application/openmetrics-text")
                plain = self._encoded.get((content_type, False)) or encoder(_Families(self._families, om))
                self._encoded[(content_type, False)] = plain
                if gzipped:
                    self._encoded[key] = gzip.compress(plain, compresslevel=1)
            return self._encoded[key], content_type

    def close(self, timeout: float) -> bool:
        """No more scrapes; True when no scrape was reading the maps (waits up to timeout for one)."""
        got = self._lock.acquire(timeout=timeout)
        self._closed = True
        if got:
            self._lock.release()
        return got


class _Families:
    """A registry-shaped view of one scrape's families for prometheus_client's encoders.

    The text format has no created timestamps (prometheus_client would add
    a `_created` gauge per counter series): they go to OpenMetrics only.
    """

    def __init__(self, families: list[Metric], created: bool) -> None:
        self.families = families
        self.created = created

    def collect(self) -> Iterator[Metric]:
        for fam in self.families:
            if self.created or not any(s.name.endswith("_created") for s in fam.samples):
                yield fam
                continue
            copy = Metric(fam.name, fam.documentation, fam.type, fam.unit)
            copy.samples = [s for s in fam.samples if not s.name.endswith("_created")]
            yield copy


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()


class Routes:
    """/metrics, /healthz and a pointer from /; both answer 503 until `scrape` is set (every probe attached)."""

    def __init__(self, report: Callable[[str], None] | None = None) -> None:
        self.scrape: SharedScrape | None = None
        self._report = report  # told once per kind of failed scrape (stderr), so a broken map read is seen
        self._reported: set[str] = set()

    def get(self, path: str, accept: str, gzip_ok: bool) -> Response:
        scrape = self.scrape
        if path in ("/metrics", "/healthz") and scrape is None:
            return Response(503, b"attaching\n")
        if path == "/healthz":
            return Response(200, b"ok\n")
        if path == "/metrics":
            assert scrape is not None
            try:
                body, content_type = scrape.body(accept, gzip_ok)
            except ScrapeClosed:
                return Response(503, b"stopping\n")
            except Exception as exc:  # a map read failed: this scrape fails, the exporter goes on
                what = f"scrape failed: {type(exc).__name__}: {exc}"
                if self._report is not None and type(exc).__name__ not in self._reported:
                    self._reported.add(type(exc).__name__)
                    self._report(what)
                return Response(500, (what + "\n").encode(errors="replace"))
            return Response(200, body, content_type, (("Content-Encoding", "gzip"),) if gzip_ok else ())
        if path == "/":
            return Response(200, b"netpath export: metrics at /metrics, readiness at /healthz\n")
        return Response(404, b"not found: try /metrics\n")


class _Handler(BaseHTTPRequestHandler):
    server: HttpServer  # type: ignore[assignment]
    server_version = "netpath"
    sys_version = ""

    def do_GET(self) -> None:
        self.server.head_done(self.request)
        auth = self.server.auth
        if auth is not None and not _authorized(auth, self.headers.get("Authorization", "")):
            self._send(Response(401, b"unauthorized\n", headers=(("WWW-Authenticate", 'Basic realm="netpath"'),)))
            return
        accepts_gzip = "gzip" in self.headers.get("Accept-Encoding", "")
        self._send(self.server.routes.get(urlsplit(self.path).path, self.headers.get("Accept", ""), accepts_gzip))

    def do_HEAD(self) -> None:
        self.send_error(405)

    def _send(self, resp: Response) -> None:
        self.send_response(resp.status)
        self.send_header("Content-Type", resp.content_type)
        self.send_header("Content-Length", str(len(resp.body)))
        for name, value in resp.headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(resp.body)

    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes and bad requests are not news: no line per request on stderr."""


def _authorized(auth: BasicAuth, header: str) -> bool:
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "basic" or not token or len(token) > 1024:
        return False
    try:
        user, sep, password = base64.b64decode(token.strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return False
    return bool(sep) and auth.check(user, password)


class _Open:
    """Open connections by socket object, with their deadlines; the reaper shuts down the late ones."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.deadlines: dict[socket.socket, float] = {}

    def add(self, sock: socket.socket, seconds: float) -> None:
        with self.lock:
            self.deadlines[sock] = time.monotonic() + seconds

    def discard(self, sock: socket.socket) -> None:
        with self.lock:
            self.deadlines.pop(sock, None)

    def shutdown(self, only_late: bool) -> None:
        now = time.monotonic()
        with self.lock:  # under the lock: a worker cannot close (and the kernel reuse) the fd meanwhile
            for sock, deadline in self.deadlines.items():
                if not only_late or deadline < now:
                    _shutdown(sock)


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class HttpServer:
    """Bound and listening from construction; serve() starts its threads; close() ends them."""

    def __init__(self, host: str, port: int, routes: Routes, tls: ssl.SSLContext | None = None,
                 auth: BasicAuth | None = None) -> None:
        self.routes = routes
        self.tls = tls
        self.auth = auth
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        try:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:  # '::' serves IPv4 too
                self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            self.socket.bind((host, port))
            self.socket.listen(BACKLOG)
            self.socket.setblocking(False)
        except OSError:
            self.socket.close()
            raise
        self.server_address = self.socket.getsockname()[:2]
        self._queue: queue.Queue[tuple[socket.socket, Any]] = queue.Queue(QUEUE)
        self._open = _Open()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    def serve(self) -> None:
        targets = [self._accept, self._reap] + [self._work] * WORKERS
        for i, target in enumerate(targets):
            t = threading.Thread(target=target, name=f"netpath-http-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def _accept(self) -> None:
        with selectors.DefaultSelector() as sel:
            sel.register(self.socket, selectors.EVENT_READ)
            while not self._stopping.is_set():
                if not sel.select(_POLL_S):
                    continue
                try:
                    conn, addr = self.socket.accept()
                except BlockingIOError:
                    continue
                except OSError:  # EMFILE and friends: leave the connection in the backlog a moment
                    self._stopping.wait(_POLL_S)
                    continue
                conn.settimeout(IDLE_TIMEOUT_S)
                while not self._stopping.is_set():
                    try:
                        self._queue.put((conn, addr), timeout=_POLL_S)
                        break
                    except queue.Full:
                        continue
                else:
                    conn.close()

    def _work(self) -> None:
        while True:
            conn, addr = self._queue.get()
            sock: socket.socket = conn
            self._open.add(conn, HEAD_DEADLINE_S)
            try:
                if self._stopping.is_set():
                    continue
                if self.tls is not None:
                    sock = self.tls.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
                    self._open.discard(conn)
                    self._open.add(sock, HEAD_DEADLINE_S)
                    sock.do_handshake()
                _Handler(sock, addr, self)  # type: ignore[arg-type]
            except (OSError, ValueError):  # timeouts, resets, TLS handshakes that fail: that client's loss
                pass
            finally:
                self._open.discard(conn)
                self._open.discard(sock)
                _shutdown(sock)
                sock.close()

    def head_done(self, sock: socket.socket) -> None:
        """The request head arrived: the rest of the exchange gets the connection deadline."""
        self._open.add(sock, CONNECTION_DEADLINE_S)

    def _reap(self) -> None:
        while not self._stopping.wait(_POLL_S):
            self._open.shutdown(only_late=True)

    def close(self) -> None:
        """Stops accepting, closes the queued connections and shuts down the open ones; does not wait."""
        self._stopping.set()
        self.socket.close()
        self._open.shutdown(only_late=False)
        while True:
            try:
                conn, _addr = self._queue.get_nowait()
            except queue.Empty:
                break
            conn.close()
