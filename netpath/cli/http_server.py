"""The exporter's HTTP server: no client, slow, idle, many or hostile, can stall a scrape, /healthz or the exit.

- One event loop (asyncio, in one thread) owns every connection, so an idle or half-finished
  connection costs a descriptor and a few kB, never a worker (TLS state is made when the client's
  first bytes arrive: http_stream.py); a request gets work only once its whole head has arrived
  (http_head.py parses it, strictly).
- Every connection has deadlines: the TLS handshake within HANDSHAKE_DEADLINE_S, the first request
  head within HEAD_DEADLINE_S of the connection (however slowly it trickles in: slowloris), the
  next one on a kept-alive connection within IDLE_TIMEOUT_S, a request body within
  BODY_DEADLINE_S, the response written within WRITE_DEADLINE_S.
- At most `max_connections` are open (MAX_CONNECTIONS, fewer when RLIMIT_NOFILE is low): a new one
  closes the connection idle the longest (waiting for a handshake or a head), or failing that the
  oldest busy one, so a flood of idle connections cannot lock out a scrape.
- Map reads (the scrape) and bcrypt checks run on worker threads, never on the loop: a slow scrape
  delays other scrapes, never /healthz or the accepting of connections.
- One scrape's map work at a time (SharedScrape): scrapes that arrive meanwhile wait, then take a
  result computed after they arrived, so 50 concurrent scrapers cost a few map reads, not 50.
- The server listens before the probes are attached: /healthz and /metrics answer 503 until they are.
- close() stops accepting and closes every connection within STOP_WAIT_S, whatever the clients do;
  the worker threads are daemons, so a scrape stuck in a map read cannot hold the exit.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import gzip
import queue
import resource
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from netpath.cli import http_head
from netpath.cli.http_head import BadRequest
from netpath.cli.http_stream import Stream, TlsStream
from netpath.cli.web_config import BasicAuth
from netpath.kernel import limits

if TYPE_CHECKING:  # imported at the first scrape: the server answers /healthz without prometheus_client
    from prometheus_client.metrics_core import Metric

    from netpath.render.exposition import Exposition

MAX_CONNECTIONS = 1024
MIN_CONNECTIONS = 16
BACKLOG = 1024
HANDSHAKE_DEADLINE_S = 5.0
HEAD_DEADLINE_S = 10.0
IDLE_TIMEOUT_S = 5.0
BODY_DEADLINE_S = 10.0
WRITE_DEADLINE_S = 30.0
LINGER_S = 1.0  # after the last response, for the client to read it and close
STOP_WAIT_S = 0.3
SCRAPE_WORKERS = 2  # a scrape in the maps and one taking the next result; more would only queue on its lock
_ACCEPT_RETRY_S = 0.2
_TEXT = "text/plain; charset=utf-8"


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
        self._exposition: Exposition | None = None  # made at the first scrape, with prometheus_client

    def body(self, accept: str, gzipped: bool, arrived: float | None = None) -> tuple[bytes, str]:
        """arrived: when the request arrived (time.monotonic()); now, when not given."""
        arrived = time.monotonic() if arrived is None else arrived
        with self._lock:
            if self._closed:
                raise ScrapeClosed
            if self._started < arrived:
                started = time.monotonic()
                self._families = list(self._collect())
                self._started = started
                self._encoded.clear()
                self.collections += 1
            from prometheus_client.exposition import choose_encoder

            encoder, content_type = choose_encoder(accept)
            key = (content_type, gzipped)
            if key not in self._encoded:
                om = content_type.startswith("application/openmetrics-text")
                plain = self._encoded.get((content_type, False)) or self._encode(encoder, om)
                self._encoded[(content_type, False)] = plain
                if gzipped:
                    self._encoded[key] = gzip.compress(plain, compresslevel=1)
            return self._encoded[key], content_type

    def _encode(self, encoder: Callable[..., bytes], om: bool) -> bytes:
        """prometheus_client's encoding of this scrape: written by render/exposition.py, which keeps each
        label set's text between scrapes (the same bytes, at a fraction of the cost), where it can say it
        writes exactly what `encoder` would; else by `encoder` itself."""
        from prometheus_client import exposition as text_format
        from prometheus_client.openmetrics import exposition as om_format

        from netpath.render.exposition import Exposition

        families = _Families(self._families, om)
        func = getattr(encoder, "func", encoder)
        given = dict(getattr(encoder, "keywords", None) or {})
        if func in (text_format.generate_latest, om_format.generate_latest) and set(given) <= {"escaping", "version"}:
            if self._exposition is None:
                self._exposition = Exposition()
            body = self._exposition.encode(families.collect(), om, given.get("escaping", "underscores"),
                                           given.get("version", "1.0.0"))
            if body is not None:
                return body
        return encoder(families)

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
        from prometheus_client.metrics_core import Metric

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
    content_type: str = _TEXT
    headers: tuple[tuple[str, str], ...] = ()


class Routes:
    """/metrics, /healthz and a pointer from /; both answer 503 until `scrape` is set (every probe attached)."""

    def __init__(self, report: Callable[[str], None] | None = None) -> None:
        self.scrape: SharedScrape | None = None
        self._report = report  # told once per kind of failed scrape (stderr), so a broken map read is seen
        self._reported: set[str] = set()

    def reads_maps(self, path: str) -> bool:
        """Would get(path) read the maps (and so belong on a worker thread, not the event loop)?"""
        return path == "/metrics" and self.scrape is not None

    def get(self, path: str, accept: str, gzip_ok: bool, arrived: float | None = None) -> Response:
        scrape = self.scrape
        if path in ("/metrics", "/healthz") and scrape is None:
            return Response(503, b"attaching\n")
        if path == "/healthz":
            return Response(200, b"ok\n")
        if path == "/metrics":
            assert scrape is not None
            try:
                body, content_type = scrape.body(accept, gzip_ok, arrived)
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


def credentials(header: str) -> tuple[str, str] | None:
    """(user, password) from a Basic Authorization header, or None when it is not one."""
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "basic" or not token or len(token) > 1024:
        return None
    try:
        user, sep, password = base64.b64decode(token.strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (user, password) if sep else None


def _authorized(auth: BasicAuth, header: str) -> bool:
    creds = credentials(header)
    return creds is not None and auth.check(*creds)


class _Workers:
    """Daemon threads that run blocking calls for the event loop (a stuck one cannot hold the exit, as a
    concurrent.futures pool's would: the interpreter joins those at exit)."""

    def __init__(self, n: int, name: str) -> None:
        self._jobs: queue.SimpleQueue[tuple[asyncio.AbstractEventLoop, asyncio.Future[Any], Callable[..., Any],
                                            tuple[Any, ...]]] = queue.SimpleQueue()
        for i in range(n):
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True).start()

    def run(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._jobs.put((loop, fut, fn, args))
        return fut

    def _work(self) -> None:
        while True:
            loop, fut, fn, args = self._jobs.get()
            if fut.cancelled():  # its client went away while it waited
                continue
            try:
                value, error = fn(*args), None
            except Exception as exc:
                value, error = None, exc
            try:
                loop.call_soon_threadsafe(_settle, fut, value, error)
            except RuntimeError:  # the loop is closed: the exporter is stopping
                pass


def _settle(fut: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if fut.done():
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(value)


@dataclass(eq=False)
class _Conn:
    sock: socket.socket
    since: float  # when it began waiting for the client (accept, or the end of its last response)
    busy: bool = False  # a whole request head arrived and is being answered
    task: asyncio.Task[None] | None = field(default=None, repr=False)

    def shut(self) -> None:
        """The client sees the close at once, even before the task's own clean-up runs."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        if self.task is not None:
            self.task.cancel()


def connection_bound() -> int:
    """MAX_CONNECTIONS, or fewer when the open-file limit leaves less beside what the BPF programs hold."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return max(MIN_CONNECTIONS, min(MAX_CONNECTIONS, soft - 2 * limits.fds_needed()))


class HttpServer:
    """Bound and listening from construction; serve() starts the event loop's thread; close() ends it."""

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
        self.max_connections = MAX_CONNECTIONS
        self.evicted = 0
        self._conns: set[_Conn] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._accepter: asyncio.Task[None] | None = None
        self._finisher: asyncio.Task[None] | None = None
        self._stopping = False
        self._stopped = threading.Event()
        self._scrapes: _Workers | None = None
        self._bcrypt: _Workers | None = None

    def serve(self) -> None:
        self.max_connections = connection_bound()
        self._scrapes = _Workers(SCRAPE_WORKERS, "netpath-scrape")
        self._bcrypt = _Workers(1, "netpath-bcrypt") if self.auth is not None else None
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._run, name="netpath-http", daemon=True).start()

    def _run(self) -> None:
        loop = self._loop
        assert loop is not None
        asyncio.set_event_loop(loop)
        self._accepter = loop.create_task(self._accept())
        try:
            loop.run_forever()
        finally:
            self._stopped.set()

    @property
    def open_connections(self) -> int:
        return len(self._conns)

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, _addr = await loop.sock_accept(self.socket)
            except OSError:  # EMFILE and friends: the connection waits in the listen backlog a moment
                await asyncio.sleep(_ACCEPT_RETRY_S)
                continue
            if len(self._conns) >= self.max_connections:
                self._evict()
            conn = _Conn(sock, loop.time())
            self._conns.add(conn)
            conn.task = loop.create_task(self._connection(conn))

    def _evict(self) -> None:
        """Closes the connection idle the longest (else the oldest busy one): room for the one just accepted."""
        idle = [c for c in self._conns if not c.busy]
        victim = min(idle or self._conns, key=lambda c: c.since)
        self._conns.discard(victim)
        self.evicted += 1
        victim.shut()

    async def _connection(self, conn: _Conn) -> None:
        loop = asyncio.get_running_loop()
        stream = Stream(conn.sock) if self.tls is None else TlsStream(conn.sock, self.tls)
        try:
            async with asyncio.timeout(HANDSHAKE_DEADLINE_S):
                await stream.handshake()
            wait = HEAD_DEADLINE_S - (loop.time() - conn.since)
            while True:
                try:
                    async with asyncio.timeout(wait):
                        head = await stream.read_head()
                except BadRequest as bad:
                    await self._refuse(stream, bad)
                    break
                conn.busy = True
                if not await self._exchange(head, stream):
                    break
                conn.busy, conn.since, wait = False, loop.time(), IDLE_TIMEOUT_S
            async with asyncio.timeout(LINGER_S):
                await stream.finish()
        except (TimeoutError, OSError, ssl.SSLError, EOFError):
            pass  # late, gone, reset, or a failed handshake: that client's loss
        finally:
            self._conns.discard(conn)
            conn.sock.close()

    async def _exchange(self, head: bytes, stream: Stream) -> bool:
        """Answers one request; True when the connection stays open for the next."""
        try:
            req = http_head.parse(head)
            if req.method != "GET":
                raise BadRequest(405, "only GET is served")
            if req.content_length:
                async with asyncio.timeout(BODY_DEADLINE_S):
                    await stream.discard(req.content_length)
        except BadRequest as bad:
            await self._refuse(stream, bad)
            return False
        resp = await self._respond(req)
        keep = req.keep_alive and not self._stopping
        await self._write(stream, http_head.response(resp.status, resp.body, resp.content_type, resp.headers, keep))
        return keep

    async def _refuse(self, stream: Stream, bad: BadRequest) -> None:
        allow = (("Allow", "GET"),) if bad.status == 405 else ()
        await self._write(stream, http_head.response(bad.status, (bad.why + "\n").encode(), _TEXT, allow, False))

    async def _respond(self, req: http_head.Request) -> Response:
        loop = asyncio.get_running_loop()
        arrived = loop.time()  # the loop's clock is time.monotonic(), SharedScrape's
        if self.auth is not None and not await self._authorized(req.header("authorization")):
            return Response(401, b"unauthorized\n", headers=(("WWW-Authenticate", 'Basic realm="netpath"'),))
        accept, gzip_ok = req.header("accept"), "gzip" in req.header("accept-encoding")
        if not self.routes.reads_maps(req.path):
            return self.routes.get(req.path, accept, gzip_ok)
        assert self._scrapes is not None
        try:
            resp: Response = await self._scrapes.run(self.routes.get, req.path, accept, gzip_ok, arrived)
        except Exception as exc:  # Routes.get answers map failures itself; anything else is still one 500
            return Response(500, f"scrape failed: {type(exc).__name__}\n".encode())
        return resp

    async def _authorized(self, header: str) -> bool:
        assert self.auth is not None
        creds = credentials(header)
        if creds is None:
            return False
        if self.auth.cached(*creds):  # a password that matched before: no bcrypt, no thread
            return True
        assert self._bcrypt is not None
        return bool(await self._bcrypt.run(self.auth.check, *creds))

    @staticmethod
    async def _write(stream: Stream, data: bytes) -> None:
        async with asyncio.timeout(WRITE_DEADLINE_S):
            await stream.send(data)

    def close(self) -> None:
        """Stops accepting and closes every connection; returns within about STOP_WAIT_S."""
        if self._stopping:
            return
        self._stopping = True
        loop = self._loop
        if loop is None:
            self.socket.close()
            return
        try:
            loop.call_soon_threadsafe(self._shutdown)
        except RuntimeError:  # the loop already ended
            return
        self._stopped.wait(STOP_WAIT_S + 0.2)

    def _shutdown(self) -> None:
        loop = asyncio.get_running_loop()
        if self._accepter is not None:
            self._accepter.cancel()
        loop.remove_reader(self.socket.fileno())
        self.socket.close()
        tasks = [c.task for c in self._conns if c.task is not None]
        for conn in list(self._conns):
            conn.shut()
        self._conns.clear()

        async def finish() -> None:
            if tasks:
                await asyncio.wait(tasks, timeout=STOP_WAIT_S)
            loop.stop()

        self._finisher = loop.create_task(finish())
