"""One accepted connection as a byte stream on the exporter's event loop: plain, or TLS through memory BIOs.

Why not asyncio's own TLS transport: it gives every connection a 256 KiB
read buffer from the moment it is accepted (asyncio.sslproto), so 600 idle
connections to a TLS port cost 180 MB here. This stream creates the TLS
state only when the client's first bytes arrive, and OpenSSL's buffers are
its own size (a record, 16 KiB); an idle connection costs a socket and a
task, a few kB.
"""

from __future__ import annotations

import asyncio
import socket
import ssl

from netpath.cli import http_head
from netpath.cli.http_head import BadRequest

READ_SIZE = 16 * 1024
LINGER_BYTES = 64 * 1024


class Stream:
    """A plain connection. recv() is b"" at the end; the caller bounds every await with its deadline."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()  # received, not yet consumed (the next pipelined request's bytes)

    async def _raw_recv(self) -> bytes:
        return await asyncio.get_running_loop().sock_recv(self.sock, READ_SIZE)

    async def _raw_send(self, data: bytes) -> None:
        await asyncio.get_running_loop().sock_sendall(self.sock, data)

    async def handshake(self) -> None:
        """Nothing to do without TLS."""

    async def recv(self) -> bytes:
        return await self._raw_recv()

    async def send(self, data: bytes) -> None:
        await self._raw_send(data)

    async def read_head(self) -> bytes:
        """The next request head, up to and including its blank line (BadRequest 431 past HEAD_MAX)."""
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end >= 0:
                if end + 4 > http_head.HEAD_MAX:
                    raise BadRequest(431, "request head too large")
                head = bytes(self.buffer[: end + 4])
                del self.buffer[: end + 4]
                return head
            if len(self.buffer) >= http_head.HEAD_MAX:
                raise BadRequest(431, "request head too large")
            data = await self.recv()
            if not data:
                raise EOFError
            self.buffer += data

    async def discard(self, n: int) -> None:
        """Reads and drops an n-byte request body."""
        while len(self.buffer) < n:
            n -= len(self.buffer)
            self.buffer.clear()
            data = await self.recv()
            if not data:
                raise EOFError
            self.buffer += data
        del self.buffer[:n]

    async def finish(self) -> None:
        """After the last response: end our side, then read what the client still sends until it closes
        (bounded), so closing does not reset the connection under a response it has not read yet."""
        self.sock.shutdown(socket.SHUT_WR)
        seen = 0
        while seen < LINGER_BYTES:
            data = await self._raw_recv()
            if not data:
                return
            seen += len(data)


class TlsStream(Stream):
    """TLS over the same socket: OpenSSL reads and writes memory BIOs, the loop moves their bytes."""

    def __init__(self, sock: socket.socket, context: ssl.SSLContext) -> None:
        super().__init__(sock)
        self.context = context
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._tls: ssl.SSLObject | None = None

    async def handshake(self) -> None:
        first = await self._raw_recv()  # an idle connection never gets TLS state
        if not first:
            raise EOFError
        self._tls = self.context.wrap_bio(self._in, self._out, server_side=True)
        self._in.write(first)
        while True:
            try:
                self._tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                await self._flush()
                await self._fill()
        await self._flush()

    async def _fill(self) -> bool:
        data = await self._raw_recv()
        if not data:
            self._in.write_eof()
            return False
        self._in.write(data)
        return True

    async def _flush(self) -> None:
        data = self._out.read()
        if data:
            await self._raw_send(data)

    async def recv(self) -> bytes:
        assert self._tls is not None
        while True:
            try:
                return self._tls.read(READ_SIZE)
            except ssl.SSLWantReadError:
                await self._flush()  # a TLS 1.3 key update or session ticket may want an answer
                if not await self._fill():
                    return b""
            except ssl.SSLZeroReturnError:  # the client's close_notify
                return b""

    async def send(self, data: bytes) -> None:
        assert self._tls is not None
        self._tls.write(data)  # into a memory BIO: never blocks
        await self._flush()

    async def finish(self) -> None:
        if self._tls is not None:
            try:
                self._tls.unwrap()  # our close_notify; the client's is not waited for
            except ssl.SSLError:
                pass
            await self._flush()
        await super().finish()
