"""The exporter's event-loop HTTP server on loopback (no root, no BPF): idle, slow, many and malformed clients
against a scrape, /healthz and close(); and the strict request-head parser."""

from __future__ import annotations

import resource
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.core import CounterMetricFamily

from netpath.cli import http_head, http_server
from netpath.cli.http_head import BadRequest
from netpath.cli.http_server import HttpServer, Routes, SharedScrape


@pytest.fixture(autouse=True)
def _enough_descriptors() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < 2048 and (hard == resource.RLIM_INFINITY or hard >= 2048):
        resource.setrlimit(resource.RLIMIT_NOFILE, (2048, hard))


class Served:
    def __init__(self, scrape_s: float = 0.0) -> None:
        self.scrape_s = scrape_s
        self.routes = Routes()
        self.server = HttpServer("127.0.0.1", 0, self.routes)
        self.port = self.server.server_address[1]
        self.server.serve()

    def ready(self) -> None:
        def collect() -> Iterator[CounterMetricFamily]:
            time.sleep(self.scrape_s)
            yield CounterMetricFamily("netpath_x", "x", value=7)

        self.routes.scrape = SharedScrape(collect)

    def get(self, path: str, timeout: float = 5) -> tuple[int, bytes, float]:
        began = time.monotonic()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=timeout) as resp:
                return int(resp.status), resp.read(), time.monotonic() - began
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read(), time.monotonic() - began

    def get_quietly(self, path: str, timeout: float = 10) -> None:
        """For a thread: a scrape the server cuts off at close is expected."""
        try:
            self.get(path, timeout)
        except OSError:
            pass

    def connect(self, n: int) -> list[socket.socket]:
        return [socket.create_connection(("127.0.0.1", self.port), timeout=5) for _ in range(n)]


@pytest.fixture
def served() -> Iterator[Served]:
    s = Served()
    try:
        yield s
    finally:
        s.server.close()


def raw(sock: socket.socket, data: bytes) -> bytes:
    sock.sendall(data)
    got = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return got
        got += chunk


def eof_within(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        while sock.recv(4096):
            pass
        return True
    except (TimeoutError, OSError):
        return False


def test_503_until_ready_then_metrics_healthz_and_404(served):
    assert served.get("/healthz")[:2] == (503, b"attaching\n")
    assert served.get("/metrics")[0] == 503
    served.ready()
    assert served.get("/healthz")[:2] == (200, b"ok\n")
    code, body, _ = served.get("/metrics?x=1")
    assert code == 200 and b"netpath_x_total 7.0" in body
    assert served.get("/nope")[0] == 404


def test_five_hundred_idle_connections_do_not_delay_a_scrape(served):
    served.ready()
    idle = served.connect(500)
    try:
        time.sleep(0.2)
        assert served.server.open_connections >= 500
        code, body, took = served.get("/metrics")
        assert code == 200 and b"netpath_x_total" in body
        assert took < 2.0, took  # the live tier asserts the 0.5 s (test_export_web_live.py)
    finally:
        for s in idle:
            s.close()


def test_a_slow_scrape_does_not_delay_healthz():
    s = Served(scrape_s=2.0)
    try:
        s.ready()
        slow = threading.Thread(target=s.get_quietly, args=("/metrics",), daemon=True)
        slow.start()
        time.sleep(0.2)
        code, _body, took = s.get("/healthz")
        assert code == 200 and took < 1.5, took  # the scrape takes 2 s
        assert slow.is_alive()  # the scrape was still reading when /healthz answered
    finally:
        s.server.close()


def test_at_the_bound_the_longest_idle_connections_are_closed_first(served):
    served.ready()
    served.server.max_connections = 20
    first = served.connect(10)
    time.sleep(0.1)
    later = served.connect(20)
    try:
        time.sleep(0.2)
        assert all(eof_within(s, 2) for s in first)  # the ten oldest made room
        assert served.get("/metrics")[0] == 200  # and a scrape still gets in (closing the next oldest)
        assert served.server.evicted >= 11
        assert served.server.open_connections <= 20
    finally:
        for s in first + later:
            s.close()


def test_a_request_head_trickling_in_is_cut_at_its_deadline(served, monkeypatch):
    monkeypatch.setattr(http_server, "HEAD_DEADLINE_S", 0.5)
    served.ready()
    (sock,) = served.connect(1)
    try:
        sock.sendall(b"GET /metrics HTTP/1.1\r\n")
        began = time.monotonic()
        for _ in range(10):
            try:
                sock.sendall(b"X: y\r\n")
            except OSError:
                break
            time.sleep(0.1)
        assert eof_within(sock, 3) and time.monotonic() - began < 3
    finally:
        sock.close()


def test_keep_alive_serves_two_requests_and_then_idles_out(served, monkeypatch):
    monkeypatch.setattr(http_server, "IDLE_TIMEOUT_S", 0.3)
    served.ready()
    (sock,) = served.connect(1)
    try:
        req = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
        sock.sendall(req + req)
        time.sleep(0.1)
        got = sock.recv(65536)
        assert got.count(b"HTTP/1.1 200 OK") == 2 and b"Connection: keep-alive" in got
        assert eof_within(sock, 2)
    finally:
        sock.close()


@pytest.mark.parametrize(("request_bytes", "status"), [
    (b"POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n", 405),
    (b"GET /metrics HTTP/1.1\r\n\r\n", 400),  # no Host
    (b"GET /metrics HTTP/2.0\r\nHost: x\r\n\r\n", 505),
    (b"GET http://x/metrics HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    (b"GET /metrics HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", 501),
    (b"GET /metrics HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n", 400),
    (b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
    (b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n", 413),
    (b"GET /metrics HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 9000 + b"\r\n\r\n", 431),
    (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n", 400),  # TLS to the plain port
])
def test_bad_requests_get_their_status_and_a_close(served, request_bytes, status):
    served.ready()
    (sock,) = served.connect(1)
    try:
        got = raw(sock, request_bytes)
        assert got.startswith(f"HTTP/1.1 {status} ".encode()), got[:80]
        assert b"Connection: close" in got and b"netpath_x" not in got
    finally:
        sock.close()


def test_a_body_is_read_and_skipped(served):
    served.ready()
    (sock,) = served.connect(1)
    try:
        got = raw(sock, b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello")
        assert got.startswith(b"HTTP/1.1 200 OK") and got.endswith(b"ok\n")
    finally:
        sock.close()


def test_close_returns_at_once_and_every_client_sees_the_end():
    s = Served(scrape_s=5.0)
    s.ready()
    idle = s.connect(50)
    half = s.connect(1)[0]
    half.sendall(b"GET /metrics HTTP/1.1\r\n")
    scraping = threading.Thread(target=s.get_quietly, args=("/metrics", 10), daemon=True)
    scraping.start()
    time.sleep(0.3)
    began = time.monotonic()
    s.server.close()
    assert time.monotonic() - began < 1.0
    try:
        assert all(eof_within(c, 1) for c in [*idle, half])
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", s.port), timeout=1)
    finally:
        for c in [*idle, half]:
            c.close()


def test_the_bound_leaves_room_for_the_bpf_descriptors(monkeypatch):
    monkeypatch.setattr(resource, "getrlimit", lambda _r: (1024, 1024))
    assert http_server.MIN_CONNECTIONS <= http_server.connection_bound() < 1024
    monkeypatch.setattr(resource, "getrlimit", lambda _r: (10, 10))
    assert http_server.connection_bound() == http_server.MIN_CONNECTIONS


def test_parse_a_prometheus_request():
    req = http_head.parse(b"GET /metrics?a=1 HTTP/1.1\r\nHost: 127.0.0.1:9872\r\nAccept: text/plain\r\n"
                          b"Accept-Encoding: gzip\r\nX-A: 1\r\nx-a: 2\r\n\r\n")
    assert (req.method, req.path, req.version, req.keep_alive) == ("GET", "/metrics", "HTTP/1.1", True)
    assert req.header("accept") == "text/plain" and req.header("x-a") == "1, 2" and req.content_length == 0
    assert not http_head.parse(b"GET / HTTP/1.0\r\n\r\n").keep_alive
    assert not http_head.parse(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").keep_alive


@pytest.mark.parametrize("head", [b"GET  / HTTP/1.1\r\n\r\n", b"GET / HTTP/1.1\r\nHost: x\r\nBad Name: 1\r\n\r\n",
                                  b"GET / HTTP/1.1\r\nHost: \x01\r\n\r\n", b"G\xffT / HTTP/1.1\r\n\r\n",
                                  b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", b"GET / HTTP/1.1\r\n"])
def test_parse_refuses_malformed_heads(head):
    with pytest.raises(BadRequest) as exc:
        http_head.parse(head)
    assert exc.value.status == 400
