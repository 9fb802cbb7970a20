"""SMTP command pipelining (RFC 2920) on an aiosmtplib connection.

aiosmtplib reads one reply per command: its protocol hands the first complete reply in a read to the one
waiter and drops what follows it (and a reply that comes while nobody waits), so commands written back to
back lose their replies. `ReplyQueue` is its protocol with that one thing changed: every complete reply
is parsed (by aiosmtplib's own parser) and queued in order, and each `read_response` takes the next one.
Everything else — the transport, TLS, flow control, `execute_command` — is aiosmtplib's.

A connection is switched over with `pipeline(client)` once EHLO has offered PIPELINING (after STARTTLS
and AUTH, which stay lock-step), with asyncio's `Transport.set_protocol`: nothing is in flight then.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

import aiosmtplib
from aiosmtplib.protocol import SMTPProtocol

__all__ = ["ReplyQueue", "pipeline"]


class ReplyQueue(SMTPProtocol):
    """An aiosmtplib protocol that keeps every reply until it is read, so several commands can be written
    before the first reply is read."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, connection_lost_callback: Callable[[], None] | None = None
    ) -> None:
        super().__init__(loop=loop, connection_lost_callback=connection_lost_callback)
        self._replies: deque[aiosmtplib.SMTPResponse] = deque()
        # Why no more replies can come (the connection ended, or the server wrote something that is not
        # SMTP): raised once the replies before it have been read.
        self._ended: Exception | None = None
        self._arrived: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        # The base class's single reply slot is not used: replies wait in `_replies`. Left set, the base
        # class's connection_lost would put an exception into it that nobody reads.
        self._response_waiter = None

    def data_received(self, data: bytes) -> None:
        if self._ended is None:
            self._buffer.extend(data)
            self._parse()

    def _parse(self) -> None:
        while True:
            try:
                reply = self._read_response_from_buffer()
            except aiosmtplib.SMTPResponseException as exc:  # a malformed or overlong line: out of step
                self._buffer.clear()
                self._end(exc)
                return
            if reply is None:  # the rest is an incomplete reply
                return
            self._replies.append(reply)
            self._wake()

    def eof_received(self) -> bool:
        self._end(aiosmtplib.SMTPServerDisconnected("Unexpected EOF received"))
        return super().eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        lost = aiosmtplib.SMTPServerDisconnected("Connection lost")
        lost.__cause__ = exc
        self._end(lost)
        super().connection_lost(exc)

    def _end(self, exc: Exception) -> None:
        if self._ended is None:
            self._ended = exc
        self._wake()

    def _wake(self) -> None:
        if self._arrived is not None and not self._arrived.done():
            self._arrived.set_result(None)

    async def read_response(self, timeout: float | None = None) -> aiosmtplib.SMTPResponse:
        """The next reply, in the order the server wrote them."""
        if not self._replies and self._ended is None:
            self._arrived = self._loop.create_future()
            try:
                await asyncio.wait_for(self._arrived, timeout)
            except TimeoutError as exc:
                raise aiosmtplib.SMTPReadTimeoutError("Timed out waiting for server response") from exc
            finally:
                self._arrived = None
        if self._replies:
            return self._replies.popleft()
        assert self._ended is not None
        raise self._ended


def pipeline(client: aiosmtplib.SMTP) -> ReplyQueue:
    """Switch a connected, idle client (every reply so far read) to a `ReplyQueue` protocol."""
    old = client.protocol
    if old is None or old.transport is None:
        raise aiosmtplib.SMTPServerDisconnected("Server not connected")
    if isinstance(old, ReplyQueue):
        return old
    transport = old.transport
    new = ReplyQueue(asyncio.get_running_loop(), connection_lost_callback=client.close)
    transport.set_protocol(new)
    new.connection_made(transport)
    new._buffer.extend(old._buffer)  # bytes read past the last reply (none from a well-behaved server)
    new._parse()
    client.protocol = new
    return new
