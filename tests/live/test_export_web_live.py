"""netpath export with --web-config-file: TLS with a certificate made here by openssl, bcrypt basic auth, a real
Prometheus scraping through both; and what a listener beyond localhost says and labels."""

from __future__ import annotations

import resource
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import bcrypt
import pytest
from test_export_live import exporter, free_tcp_port, prometheus, query, samples, wait_for

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None or shutil.which("prometheus") is None,
                                reason="openssl or Debian's prometheus is not installed: run 'make install'")

USER, PASSWORD = "prometheus", "correct horse battery"


def make_tls(tmp: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key."""
    cert, key = tmp / "tls.crt", tmp / "tls.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "2", "-subj", "/CN=netpath-test", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    key.chmod(0o600)
    return cert, key


def web_config(tmp: Path) -> tuple[Path, Path]:
    cert, key = make_tls(tmp)
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=10)).decode()
    path = tmp / "web.yml"
    path.write_text(f"tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n"
                    f"basic_auth_users:\n  {USER}: '{hashed}'\n")
    return path, cert


def client_context(cert: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(cert))
    return ctx


def status(run, auth: tuple[str, str] | None, path: str = "/metrics") -> int:  # type: ignore[no-untyped-def]
    req = run.request(path, auth=auth)
    if auth is None:
        req.headers.pop("Authorization", None)
    try:
        with urllib.request.urlopen(req, timeout=10, context=run.ssl_context) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        assert exc.headers.get("WWW-Authenticate", "").startswith("Basic"), exc.headers
        assert b"netpath_" not in exc.read()
        return int(exc.code)


def test_tls_and_basic_auth_401_without_or_with_wrong_credentials_metrics_with_right_ones(tmp_path):
    config, cert = web_config(tmp_path)
    ctx = client_context(cert)
    with exporter("--stages", "none", "--web-config-file", str(config), ssl_context=ctx) as run:
        assert "serving https://" in run.notes[-1]
        assert status(run, None) == 401
        assert status(run, (USER, "wrong")) == 401
        assert status(run, ("nobody", PASSWORD)) == 401
        assert status(run, (USER, PASSWORD), "/healthz") == 200
        with urllib.request.urlopen(run.request(auth=(USER, PASSWORD)), timeout=10, context=ctx) as resp:
            body = resp.read().decode()
            assert resp.status == 200
        assert "netpath_drops_matched_total" in body
        # plain HTTP to the TLS port: the handshake fails and no metric is sent
        with socket.create_connection(("127.0.0.1", run.port), timeout=10) as plain:
            plain.sendall(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
            got = b""
            try:
                while chunk := plain.recv(65536):
                    got += chunk
            except OSError:
                pass
        assert b"netpath_" not in got and not got.startswith(b"HTTP/1")
        # a client that does not trust the certificate does not get through either
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(run.request(auth=(USER, PASSWORD)), timeout=10,
                                   context=ssl.create_default_context())
        rc, err = run.stop()
    assert rc == 0, err


def test_a_real_prometheus_scrapes_through_tls_and_basic_auth(tmp_path):
    config, cert = web_config(tmp_path)
    ctx = client_context(cert)
    with exporter("--stages", "none", "--web-config-file", str(config), ssl_context=ctx,
                  auth=(USER, PASSWORD)) as run:
        job = (f"    scheme: https\n    basic_auth:\n      username: {USER}\n      password: '{PASSWORD}'\n"
               f"    tls_config:\n      ca_file: {cert}\n")
        with prometheus(run.port, job) as prom:
            up = wait_for(lambda: query(prom, 'up{job="netpath"} == 1'), 60,
                          f"prometheus never scraped netpath over TLS: {query(prom, 'up')}")
            assert up[0]["metric"]["instance"] == f"127.0.0.1:{run.port}"
            got = wait_for(lambda: query(prom, 'netpath_drops_matched_total{job="netpath"}'), 30,
                           "no netpath series in prometheus")
            assert float(got[0]["value"][1]) >= 0
            # the same numbers as a scrape of our own
            assert samples(run.scrape(), "netpath_drops_matched_total")[()] >= float(got[0]["value"][1])


UNSHARED = r"""
import os, socket, subprocess, sys, time
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(int(sys.argv[1])):
    s.sendto(b"x", ("127.0.0.1", 40971))   # closed port in a namespace without a name: NO_SOCKET
print(os.getpid(), flush=True)
sys.stdin.readline()
"""


def nameless_namespace_drops(n: int) -> subprocess.Popen:
    """A process in a new network namespace (no ip netns name) that drops n datagrams on its lo, then waits."""
    proc = subprocess.Popen(["unshare", "--net", sys.executable, "-c", UNSHARED, str(n)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    proc.stdout.readline()
    return proc


def labels_for(text: str, netns: int) -> set[str]:
    return {dict(k)["netns_label"] for k in samples(text, "netpath_drops_total") if dict(k)["netns"] == str(netns)}


def test_beyond_localhost_warns_and_names_no_process_unless_asked():
    port = free_tcp_port()
    with exporter("--stages", "none", listen=f":{port}") as run:
        run.port = port
        assert any("warning: --listen" in n and "without TLS or authentication" in n for n in run.notes), run.notes
        assert sum("warning" in n for n in run.notes) == 1
        sender = nameless_namespace_drops(50)
        try:
            time.sleep(0.3)
            sender_ns = Path(f"/proc/{sender.pid}/ns/net").stat().st_ino
            wait_for(lambda: labels_for(run.scrape(), sender_ns), 15, "no drops series for the namespace")
            assert labels_for(run.scrape(), sender_ns) == {""}
        finally:
            sender.communicate("\n", timeout=30)
    port = free_tcp_port()
    with exporter("--stages", "none", "--label-processes", listen=f":{port}") as run:
        run.port = port
        sender = nameless_namespace_drops(50)
        try:
            sender_ns = Path(f"/proc/{sender.pid}/ns/net").stat().st_ino
            got = wait_for(lambda: labels_for(run.scrape(), sender_ns), 15, "no drops series for the namespace")
            (label,) = got
            assert label.endswith("]") and "[" in label, label  # comm[pid]
        finally:
            sender.communicate("\n", timeout=30)
    with exporter("--stages", "none") as run:  # loopback: no warning
        assert not any("warning" in n for n in run.notes), run.notes


def make_client_cert(tmp: Path) -> tuple[Path, Path, Path]:
    """A CA, and a client certificate and key it signed."""
    ca, ca_key = tmp / "ca.crt", tmp / "ca.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-days", "2", "-subj", "/CN=netpath-test-ca", "-keyout", str(ca_key), "-out", str(ca)],
                   check=True, capture_output=True)
    key, csr, cert = tmp / "client.key", tmp / "client.csr", tmp / "client.crt"
    subprocess.run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-subj", "/CN=prometheus", "-keyout", str(key), "-out", str(csr)], check=True, capture_output=True)
    subprocess.run(["openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
                    "-CAcreateserial", "-days", "2", "-out", str(cert)], check=True, capture_output=True)
    return ca, cert, key


def test_a_client_certificate_from_the_client_ca_is_required_when_asked(tmp_path):
    server_cert, server_key = make_tls(tmp_path)
    ca, client_cert, client_key = make_client_cert(tmp_path)
    config = tmp_path / "web.yml"
    config.write_text(f"tls_server_config:\n  cert_file: {server_cert}\n  key_file: {server_key}\n"
                      f"  client_ca_file: {ca}\n  client_auth_type: RequireAndVerifyClientCert\n")
    with_cert = client_context(server_cert)
    with_cert.load_cert_chain(str(client_cert), str(client_key))
    with exporter("--stages", "none", "--web-config-file", str(config), ssl_context=with_cert) as run:
        assert "netpath_drops_matched_total" in run.scrape()
        with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
            with urllib.request.urlopen(run.request(), timeout=10, context=client_context(server_cert)) as resp:
                resp.read()  # TLS 1.3: the server's refusal of a missing certificate arrives with the first read
        rc, err = run.stop()
    assert rc == 0, err


def client_hello() -> bytes:
    """The first flight of a real TLS handshake (what a client sends before the server answers)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_side=False)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def still_open(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False


def test_500_idle_connections_and_100_half_sent_tls_handshakes_neither_delay_a_scrape_nor_the_exit(tmp_path):
    """Issue 29's bound: a scrape (TLS and basic auth) answers in under 0.5 s and SIGTERM exits in under 1 s
    while 500 idle TCP connections and 100 half-sent TLS handshakes are held open."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 4096 if hard == resource.RLIM_INFINITY else min(hard, 4096)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))  # for us and the exporter (inherited)
    config, cert = web_config(tmp_path)
    hello = client_hello()
    held: list[socket.socket] = []
    with exporter("--stages", "none", "--web-config-file", str(config), ssl_context=client_context(cert),
                  auth=(USER, PASSWORD)) as run:
        run.scrape()  # the first login pays bcrypt once, as a Prometheus server's first scrape does
        before = rss_mb(run.proc.pid)
        try:
            held += [socket.create_connection(("127.0.0.1", run.port), timeout=5) for _ in range(500)]
            for _ in range(100):
                half = socket.create_connection(("127.0.0.1", run.port), timeout=5)
                half.sendall(hello[: len(hello) // 2])
                held.append(half)
            time.sleep(0.5)
            took = []
            for _ in range(3):
                began = time.monotonic()
                text = run.scrape(timeout=5)
                took.append(time.monotonic() - began)
                assert "netpath_drops_matched_total" in text
            began = time.monotonic()
            assert status(run, (USER, PASSWORD), "/healthz") == 200
            healthz = time.monotonic() - began
            holding = rss_mb(run.proc.pid)
            assert sum(still_open(s) for s in held) == 600  # the server held every one: none was refused
            assert max(took) < 0.5 and healthz < 0.5, (took, healthz)
            began = time.monotonic()
            run.proc.send_signal(signal.SIGTERM)
            run.proc.wait(timeout=10)
            stopped = time.monotonic() - began
            _out, err = run.proc.communicate()
        finally:
            for s in held:
                s.close()
    assert run.proc.returncode == 0 and "stopped (SIGTERM)" in err, err
    assert stopped < 1.0, stopped
    print(f"scrapes {', '.join(f'{t:.3f}' for t in took)} s, /healthz {healthz:.3f} s, SIGTERM to exit "
          f"{stopped:.2f} s with 600 connections held; RSS {before:.1f} MB before, {holding:.1f} MB holding them")


def test_an_empty_web_config_says_no_tls_no_auth_and_a_readable_key_warns(tmp_path):
    empty = tmp_path / "empty.yml"
    empty.write_text("")
    with exporter("--stages", "none", "--web-config-file", str(empty)) as run:
        assert "serving http://127.0.0.1:" in run.notes[-1] and "no TLS, no auth" in run.notes[-1]
        assert run.scrape()
    config, cert = web_config(tmp_path)
    key = tmp_path / "tls.key"
    key.chmod(0o644)
    with exporter("--stages", "none", "--web-config-file", str(config), ssl_context=client_context(cert),
                  auth=(USER, PASSWORD)) as run:
        warnings = [n for n in run.notes if "warning" in n]
        assert len(warnings) == 1 and "readable by others" in warnings[0] and str(key) in warnings[0], run.notes
        assert "TLS, basic auth" in run.notes[-1]


def test_ipv6_listen_is_served_and_printed_in_brackets():
    port = free_tcp_port()
    with exporter("--stages", "none", listen=f"[::1]:{port}") as run:
        assert f"serving http://[::1]:{port}/metrics" in run.notes[-1], run.notes
        with urllib.request.urlopen(f"http://[::1]:{port}/healthz", timeout=10) as resp:
            assert resp.status == 200
