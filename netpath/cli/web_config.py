"""--web-config-file: TLS and basic auth in the Prometheus exporter-toolkit format (as node_exporter reads it).

    tls_server_config:
      cert_file: /etc/netpath/tls.crt
      key_file: /etc/netpath/tls.key
      client_ca_file: /etc/netpath/ca.crt        # optional
      client_auth_type: RequireAndVerifyClientCert  # optional
      min_version: TLS12                          # optional
    basic_auth_users:
      prometheus: $2b$12$...                      # bcrypt hash

Every problem is a BadInput naming the file and the key: a typo must not
silently serve metrics without the TLS or the password the operator wrote.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import ssl
import stat
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from netpath.errors import BadInput, MissingCapability

TOP_KEYS = {"tls_server_config", "basic_auth_users", "http_server_config"}
TLS_KEYS = {"cert_file", "key_file", "client_ca_file", "client_auth_type", "min_version", "max_version",
            "cipher_suites", "curve_preferences", "prefer_server_cipher_suites"}
HTTP_KEYS = {"http2", "headers"}
# exporter-toolkit's names -> (ssl verify mode, a client CA is required)
CLIENT_AUTH = {
    "NoClientCert": (ssl.CERT_NONE, False),
    "RequestClientCert": (ssl.CERT_OPTIONAL, True),
    "RequireAnyClientCert": (ssl.CERT_REQUIRED, True),
    "VerifyClientCertIfGiven": (ssl.CERT_OPTIONAL, True),
    "RequireAndVerifyClientCert": (ssl.CERT_REQUIRED, True),
}
TLS_VERSIONS = {"TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1, "TLS12": ssl.TLSVersion.TLSv1_2,
                "TLS13": ssl.TLSVersion.TLSv1_3}
# a well-formed hash of a password nobody has: unknown users cost the same bcrypt time as wrong passwords
_DUMMY_HASH = b"$2b$10$" + b"." * 53
MAX_FILE_BYTES = 1 << 20
_CACHE_MAX = 64


@dataclass
class BasicAuth:
    """Checks Authorization headers against bcrypt hashes; remembers passwords that matched.

    bcrypt is slow on purpose (tens of ms at cost 10): a scraper that sends
    the same right password every second would spend a core on it, so a
    match is cached as a keyed digest of (user, password), never the
    password itself. Only one bcrypt check runs at a time, so wrong
    passwords cannot take every core either.
    """

    users: dict[str, bytes]
    _ok: set[bytes] = field(default_factory=set)
    _key: bytes = field(default_factory=lambda: hashlib.sha256(str(id(object())).encode()).digest())
    _bcrypt_lock: threading.Lock = field(default_factory=threading.Lock)

    def _digest(self, user: str, password: str) -> bytes:
        return hmac.new(self._key, user.encode() + b"\0" + password.encode(), hashlib.sha256).digest()

    def cached(self, user: str, password: str) -> bool:
        """A password that matched before (no bcrypt: cheap enough for the exporter's event loop)."""
        return self._digest(user, password) in self._ok

    def check(self, user: str, password: str) -> bool:
        import bcrypt

        digest = self._digest(user, password)
        if digest in self._ok:
            return True
        hashed = self.users.get(user)
        with self._bcrypt_lock:
            ok = bcrypt.checkpw(password.encode(), hashed or _DUMMY_HASH) and hashed is not None
        if ok:
            if len(self._ok) >= _CACHE_MAX:
                self._ok.clear()
            self._ok.add(digest)
        return ok


@dataclass
class WebConfig:
    tls: ssl.SSLContext | None
    auth: BasicAuth | None
    warnings: list[str] = field(default_factory=list)  # one line each, for stderr (a key others can read)

    @property
    def security(self) -> str:
        """What the start line says about it."""
        if self.tls is None and self.auth is None:
            return "no TLS, no auth"
        return ", ".join(w for w, on in (("TLS", self.tls is not None), ("basic auth", self.auth is not None)) if on)


def load(path: str) -> WebConfig:
    """Reads and checks FILE; the TLS context is built now, so a bad certificate stops the start."""
    try:
        import yaml
    except ImportError:
        raise MissingCapability("--web-config-file needs PyYAML: apt-get install python3-yaml") from None
    if not path.strip():
        raise BadInput(f"bad --web-config-file {path!r}: expected the path of a YAML file")
    where = f"--web-config-file {path}"
    p = Path(path)
    raw = _read_capped(p, where)
    try:
        doc = yaml.safe_load(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise BadInput(f"{where}: not UTF-8 text") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "bad YAML"
        raise BadInput(f"{where}: not valid YAML{at}: {problem}") from None
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise BadInput(f"{where}: expected a YAML mapping at the top level")
    _known(doc, TOP_KEYS, where, "")
    base = p.resolve().parent
    warnings: list[str] = []
    for key in ("tls_server_config", "basic_auth_users"):  # written but empty: the operator meant something
        if key in doc and not doc[key]:
            raise BadInput(f"{where}: {key} is empty: fill it in or remove the key")
    tls = _tls(doc["tls_server_config"], where, base, warnings) if "tls_server_config" in doc else None
    auth = _auth(doc["basic_auth_users"], where) if "basic_auth_users" in doc else None
    http = doc.get("http_server_config")
    if http is not None:
        if not isinstance(http, dict):
            raise BadInput(f"{where}: http_server_config must be a mapping")
        _known(http, HTTP_KEYS, where, "http_server_config.")
    return WebConfig(tls, auth, warnings)


def _read_capped(p: Path, where: str) -> bytes:
    """At most MAX_FILE_BYTES + 1 bytes of a regular file: a fifo must not hang the start (O_NONBLOCK, then
    refused), nor /dev/zero fill the memory."""
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except FileNotFoundError:
        raise BadInput(f"{where}: no such file") from None
    except OSError as exc:
        raise BadInput(f"{where}: cannot read it: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise BadInput(f"{where}: is a directory")
        if not stat.S_ISREG(st.st_mode):
            raise BadInput(f"{where}: not a regular file")
        chunks: list[bytes] = []
        got = 0
        while got <= MAX_FILE_BYTES:
            chunk = os.read(fd, MAX_FILE_BYTES + 1 - got)
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
    except OSError as exc:
        raise BadInput(f"{where}: cannot read it: {exc.strerror}") from None
    finally:
        os.close(fd)
    if got > MAX_FILE_BYTES:
        raise BadInput(f"{where}: larger than {MAX_FILE_BYTES} bytes")
    return b"".join(chunks)


def _known(section: dict[Any, Any], keys: set[str], where: str, prefix: str) -> None:
    for key in section:
        if key not in keys:
            raise BadInput(f"{where}: unknown key {prefix}{key!s:.60}")


def _text(section: dict[str, Any], key: str, where: str) -> str | None:
    value = section.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise BadInput(f"{where}: tls_server_config.{key} must be a string")
    return value


def _tls(section: Any, where: str, base: Path, warnings: list[str]) -> ssl.SSLContext:
    if not isinstance(section, dict):
        raise BadInput(f"{where}: tls_server_config must be a mapping")
    _known(section, TLS_KEYS, where, "tls_server_config.")
    cert, key = _text(section, "cert_file", where), _text(section, "key_file", where)
    if cert is None or key is None:
        raise BadInput(f"{where}: tls_server_config needs both cert_file and key_file")
    cert_path, key_path = base / cert, base / key  # relative paths are relative to the file, as exporter-toolkit
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _version(section, "min_version", where) or ssl.TLSVersion.TLSv1_2
    top = _version(section, "max_version", where)
    if top is not None:
        if top < ctx.minimum_version:  # every handshake would fail
            raise BadInput(f"{where}: tls_server_config.max_version {section['max_version']} is below "
                           f"min_version {section.get('min_version') or 'TLS12 (the default)'}")
        ctx.maximum_version = top
    for name, f in (("cert_file", cert_path), ("key_file", key_path)):
        if not f.is_file():
            raise BadInput(f"{where}: tls_server_config.{name} {str(f)!r}: no such file")
    key_mode = key_path.stat().st_mode
    if key_mode & (stat.S_IRGRP | stat.S_IROTH):
        warnings.append(f"warning: {where}: key_file {str(key_path)!r} is readable by "
                        f"{'others' if key_mode & stat.S_IROTH else 'its group'} (mode {stat.S_IMODE(key_mode):04o}): "
                        f"chmod 600 {key_path}")
    try:
        ctx.load_cert_chain(str(cert_path), str(key_path))
    except (ssl.SSLError, OSError) as exc:
        raise BadInput(f"{where}: cannot use cert_file {str(cert_path)!r} with key_file {str(key_path)!r}: "
                       f"{getattr(exc, 'reason', None) or exc}") from None
    auth_type = _text(section, "client_auth_type", where) or "NoClientCert"
    if auth_type not in CLIENT_AUTH:
        raise BadInput(f"{where}: tls_server_config.client_auth_type {auth_type!r:.60}: expected one of "
                       + ", ".join(CLIENT_AUTH))
    mode, needs_ca = CLIENT_AUTH[auth_type]
    ca = _text(section, "client_ca_file", where)
    if ca is not None:
        ca_path = base / ca
        try:
            ctx.load_verify_locations(cafile=str(ca_path))
        except (ssl.SSLError, OSError) as exc:
            raise BadInput(f"{where}: cannot use tls_server_config.client_ca_file {str(ca_path)!r}: "
                           f"{getattr(exc, 'reason', None) or getattr(exc, 'strerror', None) or exc}") from None
    elif needs_ca:  # Python's ssl cannot take a client certificate it has no CA to check against
        raise BadInput(f"{where}: client_auth_type {auth_type} needs tls_server_config.client_ca_file")
    ctx.verify_mode = mode
    return ctx


def _version(section: dict[str, Any], key: str, where: str) -> ssl.TLSVersion | None:
    value = _text(section, key, where)
    if value is None:
        return None
    if value not in TLS_VERSIONS:
        raise BadInput(f"{where}: tls_server_config.{key} {value!r:.20}: expected one of " + ", ".join(TLS_VERSIONS))
    return TLS_VERSIONS[value]


def _auth(users: Any, where: str) -> BasicAuth:
    if not isinstance(users, dict):
        raise BadInput(f"{where}: basic_auth_users must be a mapping of user name to bcrypt hash")
    out: dict[str, bytes] = {}
    for user, hashed in users.items():
        if not isinstance(user, str) or not user or ":" in user:
            raise BadInput(f"{where}: basic_auth_users: bad user name {user!r:.60}")
        if not isinstance(hashed, str) or not _is_bcrypt(hashed):
            raise BadInput(f"{where}: basic_auth_users.{user:.60}: not a bcrypt hash (make one with "
                           "'htpasswd -nBC 10 \"\" | tr -d :' or python3 -c 'import bcrypt; ...hashpw')")
        out[user] = hashed.encode()
    return BasicAuth(out)


def _is_bcrypt(text: str) -> bool:
    """$2a$/$2b$/$2y$, a two-digit cost 4-31, 53 characters of bcrypt's base64."""
    parts = text.split("$")
    if len(parts) != 4 or parts[0] != "" or parts[1] not in ("2a", "2b", "2y"):
        return False
    if not (parts[2].isdigit() and len(parts[2]) == 2 and 4 <= int(parts[2]) <= 31):
        return False
    alphabet = set("./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
    return len(parts[3]) == 53 and set(parts[3]) <= alphabet
