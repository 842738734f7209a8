"""A strict HTTP/1.1 request-head parser and response writer for the exporter's three GET routes.

The exporter serves GET /metrics, /healthz and /, nothing else, so this
parses only what that needs and refuses everything else with the status
RFC 9112 names, rather than guessing: an origin-form target, HTTP/1.0 or
1.1, token header names, no obsolete line folding, no control characters
in values, one Content-Length, no Transfer-Encoding (no request here has
a body worth decoding), a Host header on HTTP/1.1. Bytes are decoded as
latin-1, so any byte sequence parses or fails with a status, never with
an exception of another kind.
"""

from __future__ import annotations

from dataclasses import dataclass
from http import HTTPStatus

# request line and headers, CRLF CRLF included (Prometheus sends about 300 bytes)
HEAD_MAX = 8192
HEADERS_MAX = 64
BODY_MAX = 64 * 1024
_TOKEN = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_VERSIONS = ("HTTP/1.1", "HTTP/1.0")


class BadRequest(Exception):
    """The request cannot be served; `status` says why. The connection is closed after the answer."""

    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status
        self.why = why


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # the target without its query
    version: str
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", " (RFC 9110 5.3)
    content_length: int

    def header(self, name: str) -> str:
        return self.headers.get(name, "")

    @property
    def keep_alive(self) -> bool:
        tokens = {t.strip().lower() for t in self.header("connection").split(",")}
        if self.version == "HTTP/1.0":
            return "keep-alive" in tokens
        return "close" not in tokens


def parse(head: bytes) -> Request:
    """head: the bytes up to and including the blank line that ends it."""
    if len(head) > HEAD_MAX:
        raise BadRequest(431, "request head too large")
    if not head.endswith(b"\r\n\r\n"):
        raise BadRequest(400, "request head does not end with CRLF CRLF")
    lines = head[:-4].decode("latin-1").split("\r\n")
    method, path, version = _request_line(lines[0])
    if len(lines) - 1 > HEADERS_MAX:
        raise BadRequest(431, "too many header fields")
    headers: dict[str, str] = {}
    lengths: list[str] = []
    for line in lines[1:]:
        name, value = _field(line)
        if name == "content-length":
            lengths.append(value)
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    if "transfer-encoding" in headers:
        raise BadRequest(501, "Transfer-Encoding is not supported")
    if version == "HTTP/1.1" and "host" not in headers:
        raise BadRequest(400, "HTTP/1.1 request without Host")
    return Request(method, path, version, headers, _content_length(lengths))


def _request_line(line: str) -> tuple[str, str, str]:
    parts = line.split(" ")
    if len(parts) != 3 or not parts[0] or not set(parts[0]) <= _TOKEN:
        raise BadRequest(400, "malformed request line")
    method, target, version = parts
    if version not in _VERSIONS:
        raise BadRequest(505 if version.startswith("HTTP/") else 400, "HTTP/1.0 or HTTP/1.1 only")
    if not target.startswith("/") or any(c <= " " or c == "\x7f" for c in target):
        raise BadRequest(400, "the request target must be a path")
    return method, target.partition("?")[0].partition("#")[0], version


def _field(line: str) -> tuple[str, str]:
    name, sep, value = line.partition(":")
    if not sep or not name or not set(name) <= _TOKEN:  # also refuses obs-fold (a line starting with SP/HT)
        raise BadRequest(400, "malformed header field")
    value = value.strip(" \t")
    if any((c < " " and c != "\t") or c == "\x7f" for c in value):
        raise BadRequest(400, "control character in a header value")
    return name.lower(), value


def _content_length(values: list[str]) -> int:
    if not values:
        return 0
    if len(set(values)) != 1 or not (values[0].isascii() and values[0].isdigit()) or len(values[0]) > 12:
        raise BadRequest(400, "bad Content-Length")
    n = int(values[0])
    if n > BODY_MAX:
        raise BadRequest(413, "request body too large")
    return n


def response(status: int, body: bytes, content_type: str, headers: tuple[tuple[str, str], ...],
             keep_alive: bool) -> bytes:
    """The whole response, head and body, ready to write."""
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", f"Content-Type: {content_type}",
             f"Content-Length: {len(body)}", f"Connection: {'keep-alive' if keep_alive else 'close'}"]
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
