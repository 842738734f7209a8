"""--web-config-file: the exporter-toolkit format, and every bad file is exit 2 naming the problem."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import bcrypt
import pytest

from netpath.cli import main as main_mod
from netpath.cli import web_config
from netpath.cli.http_server import _authorized
from netpath.errors import EXIT_USAGE, BadInput

HASH = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl(1) is not installed")


def make_cert(tmp: Path, name: str = "server") -> tuple[Path, Path]:
    cert, key = tmp / f"{name}.crt", tmp / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "2", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


def write(tmp: Path, text: str) -> str:
    path = tmp / "web.yml"
    path.write_text(text)
    return str(path)


@needs_openssl
def test_a_full_file_gives_tls_and_basic_auth(tmp_path):
    cert, key = make_cert(tmp_path)
    ca, _ = make_cert(tmp_path, "ca")
    cfg = web_config.load(write(tmp_path, f"tls_server_config:\n  cert_file: {cert.name}\n  key_file: {key}\n"
                                f"  client_ca_file: {ca}\n  client_auth_type: RequireAndVerifyClientCert\n"
                                f"basic_auth_users:\n  prom: '{HASH}'\n"))
    assert cfg.tls is not None and cfg.auth is not None
    assert cfg.auth.check("prom", "s3cret")
    assert cfg.auth.check("prom", "s3cret")  # the cached path
    assert not cfg.auth.check("prom", "wrong")
    assert not cfg.auth.check("nobody", "s3cret")


def test_basic_auth_header_parsing():
    auth = web_config.BasicAuth({"prom": HASH.encode()})
    assert _authorized(auth, "Basic cHJvbTpzM2NyZXQ=")  # prom:s3cret
    assert not _authorized(auth, "Basic cHJvbTp3cm9uZw==")  # prom:wrong
    assert not _authorized(auth, "Bearer cHJvbTpzM2NyZXQ=")
    assert not _authorized(auth, "Basic !!!")
    assert not _authorized(auth, "")


def test_an_empty_file_is_no_tls_and_no_auth_and_says_so(tmp_path):
    cfg = web_config.load(write(tmp_path, ""))
    assert cfg.tls is None and cfg.auth is None
    assert cfg.security == "no TLS, no auth"  # the start line's words (netpath-export(8))


@pytest.mark.parametrize("text", ["basic_auth_users:\n", "basic_auth_users: {}\n", "tls_server_config:\n"])
def test_a_key_written_but_left_empty_is_refused(tmp_path, text):
    with pytest.raises(BadInput, match=r"(basic_auth_users|tls_server_config) is empty"):
        web_config.load(write(tmp_path, text))


@needs_openssl
def test_max_version_below_min_version_is_refused(tmp_path):
    cert, key = make_cert(tmp_path)
    tls = f"tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n"
    with pytest.raises(BadInput, match="max_version TLS12 is below min_version TLS13"):
        web_config.load(write(tmp_path, tls + "  min_version: TLS13\n  max_version: TLS12\n"))
    with pytest.raises(BadInput, match=r"max_version TLS11 is below min_version TLS12 \(the default\)"):
        web_config.load(write(tmp_path, tls + "  max_version: TLS11\n"))
    assert web_config.load(write(tmp_path, tls + "  min_version: TLS12\n  max_version: TLS13\n")).tls is not None


@needs_openssl
def test_a_key_others_can_read_is_one_warning(tmp_path):
    cert, key = make_cert(tmp_path)
    tls = f"tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n"
    key.chmod(0o600)
    assert web_config.load(write(tmp_path, tls)).warnings == []
    key.chmod(0o644)
    (warning,) = web_config.load(write(tmp_path, tls)).warnings
    assert "readable by others (mode 0644)" in warning and f"chmod 600 {key}" in warning and "\n" not in warning
    key.chmod(0o640)
    assert "readable by its group" in web_config.load(write(tmp_path, tls)).warnings[0]


def test_a_fifo_and_a_device_are_refused_without_reading_them(tmp_path):
    import os
    import threading

    fifo = tmp_path / "web.fifo"
    os.mkfifo(fifo)  # nobody writes it: opening it blocking would hang the start
    done = threading.Event()

    def release() -> None:  # if load() did block in open(), a writer coming and going lets it go on (and fail)
        while not done.wait(0.05):
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                continue

    threading.Thread(target=release, daemon=True).start()
    try:
        with pytest.raises(BadInput, match="not a regular file"):
            web_config.load(str(fifo))
    finally:
        done.set()
    with pytest.raises(BadInput, match="not a regular file"):
        web_config.load("/dev/zero")


def test_only_the_cap_is_read(tmp_path, monkeypatch):
    import os

    path = tmp_path / "big.yml"
    path.write_bytes(b"#" * (web_config.MAX_FILE_BYTES + 4096))
    asked: list[int] = []
    real_read = os.read

    def read(fd: int, n: int) -> bytes:
        asked.append(n)
        return real_read(fd, n)

    monkeypatch.setattr(os, "read", read)
    with pytest.raises(BadInput, match="larger than"):
        web_config.load(str(path))
    assert sum(asked) <= web_config.MAX_FILE_BYTES + 1


@pytest.mark.parametrize("text, problem", [
    ("tls_server_config: [\n", "not valid YAML at line"),
    ("- a\n- b\n", "expected a YAML mapping"),
    ("tls_config:\n  cert_file: x\n", "unknown key tls_config"),
    ("tls_server_config:\n  cert: x\n", "unknown key tls_server_config.cert"),
    ("tls_server_config:\n  cert_file: a.crt\n", "needs both cert_file and key_file"),
    ("tls_server_config:\n  cert_file: nope.crt\n  key_file: nope.key\n", "cert_file"),
    ("basic_auth_users:\n  prom: plaintext\n", "basic_auth_users.prom: not a bcrypt hash"),
    ("basic_auth_users:\n  prom: '$2b$10$short'\n", "not a bcrypt hash"),
    ("basic_auth_users: [prom]\n", "basic_auth_users must be a mapping"),
])
def test_bad_files_name_the_problem(tmp_path, text, problem):
    with pytest.raises(BadInput) as exc:
        web_config.load(write(tmp_path, text))
    assert problem in str(exc.value)
    assert "\n" not in str(exc.value)


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(BadInput, match=r"--web-config-file .*nope\.yml: no such file"):
        web_config.load(str(tmp_path / "nope.yml"))


@needs_openssl
def test_an_unreadable_certificate_and_a_mismatched_key_are_named(tmp_path):
    cert, key = make_cert(tmp_path)
    _, other_key = make_cert(tmp_path, "other")
    (tmp_path / "garbage.crt").write_text("not a certificate\n")
    with pytest.raises(BadInput, match=r"cannot use cert_file .*garbage\.crt"):
        web_config.load(write(tmp_path, f"tls_server_config:\n  cert_file: garbage.crt\n  key_file: {key}\n"))
    with pytest.raises(BadInput, match="cannot use cert_file"):
        web_config.load(write(tmp_path, f"tls_server_config:\n  cert_file: {cert}\n  key_file: {other_key}\n"))
    with pytest.raises(BadInput, match=r"client_auth_type RequireAndVerifyClientCert needs .*client_ca_file"):
        web_config.load(write(tmp_path, f"tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n"
                                        "  client_auth_type: RequireAndVerifyClientCert\n"))
    with pytest.raises(BadInput, match="client_auth_type 'Maybe'"):
        web_config.load(write(tmp_path, f"tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n"
                                        "  client_auth_type: Maybe\n"))


@pytest.mark.parametrize("text", [None, "tls_server_config: [\n", "basic_auth_users:\n  prom: plaintext\n",
                                  "basic_auth_users:\n"])
def test_the_cli_exits_2_with_one_line_before_anything_else(capsys, tmp_path, text):
    path = tmp_path / "web.yml"
    if text is not None:
        path.write_text(text)
    rc = main_mod.main(["export", "--web-config-file", str(path)])
    out, err = capsys.readouterr()
    assert rc == EXIT_USAGE and out == ""
    assert err.count("\n") == 1 and "--web-config-file" in err and "Traceback" not in err
