"""netpath export's HTTP server against slow, idle, many and hostile clients, and SIGTERM among them."""

from __future__ import annotations

import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request

from netpath_testlib import REPO, netpath_argv, send_udp
from test_export_live import exporter, free_tcp_port, samples

from netpath.cli.http_server import HEAD_DEADLINE_S, IDLE_TIMEOUT_S

# below the server's idle timeout: a scrape that succeeds within it was not waiting for an idle client to be
# timed out
SCRAPE_TIMEOUT_S = IDLE_TIMEOUT_S - 1


def idle_connections(port: int, n: int) -> list[socket.socket]:
    """n TCP connections that send nothing."""
    return [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(n)]


class Slowloris(threading.Thread):
    """Sends a request head one byte a second, never finishing it; records when the server closed on it."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.closed_after: float | None = None
        self.started = time.monotonic()

    def run(self) -> None:
        head = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200
        try:
            for byte in head:
                self.sock.sendall(bytes([byte]))
                time.sleep(1)
        except OSError:
            pass
        self.closed_after = time.monotonic() - self.started

    def close(self) -> None:
        self.sock.close()


def test_an_idle_connection_and_a_slowloris_client_do_not_block_scrapes():
    with exporter("--stages", "none") as run:
        idle = idle_connections(run.port, 3)
        slow = Slowloris(run.port)
        slow.start()
        try:
            time.sleep(0.5)
            for _ in range(5):
                text = run.scrape(timeout=SCRAPE_TIMEOUT_S)
                assert "netpath_drops_matched_total" in text
            # the slow client is cut off: its head never completes within the deadline
            slow.join(timeout=HEAD_DEADLINE_S + 10)
            assert not slow.is_alive(), "the server kept a slowloris connection open past its deadline"
            assert slow.closed_after is not None and slow.closed_after < 200
            for sock in idle:  # the idle ones were closed by the server too (recv sees EOF)
                sock.settimeout(IDLE_TIMEOUT_S + 5)
                assert sock.recv(1) == b""
        finally:
            slow.close()
            for sock in idle:
                sock.close()


def test_fifty_parallel_scrape_loops_all_succeed_with_the_exact_count():
    loops, each = 50, 10
    with exporter("--stages", "none") as run:
        send_udp("127.0.0.1", 40961, 100)  # closed port: drops counted beside what the host drops
        time.sleep(0.3)
        failures: list[str] = []
        got: list[float] = []
        lock = threading.Lock()

        def loop() -> None:
            for _ in range(each):
                try:
                    text = run.scrape(timeout=30)
                    value = samples(text, "netpath_drops_matched_total")[()]
                    with lock:
                        got.append(value)
                except Exception as exc:
                    with lock:
                        failures.append(repr(exc))

        threads = [threading.Thread(target=loop, daemon=True) for _ in range(loops)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        assert not any(t.is_alive() for t in threads), "scrape loops still running after 300 s"
        assert failures == [], f"{len(failures)} of {loops * each} scrapes failed: {failures[:3]}"
        assert len(got) == loops * each
        assert min(got) >= 100  # every scrape saw at least the drops sent before it
        rc, err = run.stop()
    assert rc == 0, err


def test_sigterm_exits_at_once_with_idle_and_slow_clients_connected():
    with exporter("--stages", "none") as run:
        idle = idle_connections(run.port, 5)
        slow = Slowloris(run.port)
        slow.start()
        half = socket.create_connection(("127.0.0.1", run.port), timeout=5)
        half.sendall(b"GET /metrics HTTP/1.1\r\n")  # a request head that never ends
        try:
            time.sleep(0.5)
            began = time.monotonic()
            run.proc.send_signal(signal.SIGTERM)
            # the bound is a second; the test allows 3 on a loaded 2-core machine
            run.proc.wait(timeout=3)
            took = time.monotonic() - began
            _out, err = run.proc.communicate()
        finally:
            slow.close()
            half.close()
            for sock in idle:
                sock.close()
    assert run.proc.returncode == 0, err
    assert "stopped (SIGTERM)" in err
    print(f"SIGTERM to exit: {took:.2f} s with 7 clients holding connections")


def test_healthz_is_503_while_attaching_then_200():
    port = free_tcp_port()
    proc = subprocess.Popen([*netpath_argv(), "export", "--listen", f"127.0.0.1:{port}", "--stages", "packet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=REPO)
    codes: list[int] = []
    metrics_codes: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (not codes or codes[-1] != 200):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
                    codes.append(resp.status)
            except urllib.error.HTTPError as exc:
                codes.append(exc.code)
                if len(metrics_codes) < 1:
                    try:
                        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)
                    except urllib.error.HTTPError as mexc:
                        metrics_codes.append(mexc.code)
            except OSError:
                time.sleep(0.01)  # not listening yet
                continue
            time.sleep(0.01)
        assert codes and codes[0] == 503, codes[:5]
        assert codes[-1] == 200, codes[-5:]
        assert set(codes) == {503, 200}
        assert codes.index(200) == codes.count(503)  # never back to 503 once ready
        assert metrics_codes == [503]
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
