"""A real SMTP server on loopback for tests: aiosmtpd in a thread, recording what it receives.

Replies can be scripted per recipient (`fail_rcpt["x@y"] = [451, 451]` answers 451 twice, then
accepts), and the server can drop connections, to test the engine against a misbehaving peer.

It offers PIPELINING (RFC 2920) unless made with `pipelining=False`, as Postfix and most relays do.
aiosmtpd does not advertise it, but it reads commands one line at a time from its buffer and answers them
in order, which is all a pipelining client needs; the EHLO hook only says so. For each MAIL FROM it notes
what the client had already sent after it (`ahead`): a pipelining client's RCPT TO and DATA.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage

from aiosmtpd.controller import Controller


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    connection: int = 0  # which connection (session) it came over

    @property
    def message(self) -> EmailMessage:
        return message_from_bytes(self.data, policy=policy.default)  # type: ignore[return-value]


@dataclass
class RecordingHandler:
    messages: list[Received] = field(default_factory=list)
    fail_rcpt: dict[str, list[int]] = field(default_factory=dict)
    drop_after: int | None = None  # close the connection after this many accepted messages (once)
    pipelining: bool = True  # offer PIPELINING in the EHLO reply
    # Per MAIL FROM, in order: the bytes the client had sent after it before it was answered.
    ahead: list[bytes] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # RCPT TO one of these addresses waits until its event is set (at most 30 s): a send held mid-way
    hold: dict[str, threading.Event] = field(default_factory=dict)

    async def handle_EHLO(self, server, session, envelope, hostname, responses):  # type: ignore[no-untyped-def]
        session.host_name = hostname  # what aiosmtpd does itself when there is no hook
        if self.pipelining:
            responses.insert(len(responses) - 1, "250-PIPELINING")
        return responses

    def note_mail(self, server) -> None:  # type: ignore[no-untyped-def]
        """What is already in the server's read buffer when MAIL FROM is handled (before it is answered)."""
        with self.lock:
            self.ahead.append(bytes(server._reader._buffer))

    async def handle_MAIL(self, server, session, envelope, address, mail_options):  # type: ignore[no-untyped-def]
        self.note_mail(server)
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # type: ignore[no-untyped-def]
        gate = self.hold.get(address.lower())
        if gate is not None:
            for _ in range(3000):
                if gate.is_set():
                    break
                await asyncio.sleep(0.01)
        with self.lock:
            codes = self.fail_rcpt.get(address.lower())
            if codes:
                code = codes.pop(0)
                return f"{code} {'4.2.2 try again later' if code < 500 else '5.1.1 no such user'}"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
        with self.lock:
            self.messages.append(
                Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content, id(session))
            )
            if self.drop_after is not None and len(self.messages) >= self.drop_after:
                self.drop_after = None
                server.transport.close()
                return "250 OK"
        return "250 OK"

    def to(self, address: str) -> list[Received]:
        return [m for m in self.messages if address.lower() in [r.lower() for r in m.rcpt_tos]]

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.messages) >= count:
                return self.messages
            time.sleep(0.01)
        raise AssertionError(f"expected {count} messages, got {len(self.messages)}")


class SmtpServer:
    def __init__(
        self,
        *,
        pipelining: bool = True,
        handler: RecordingHandler | None = None,
        tls_context: ssl.SSLContext | None = None,  # offer STARTTLS with it
    ) -> None:
        self.handler = handler or RecordingHandler(pipelining=pipelining)
        self.port = free_port()
        self.controller = Controller(
            self.handler, hostname="127.0.0.1", port=self.port, decode_data=False, tls_context=tls_context
        )

    def __enter__(self) -> SmtpServer:
        self.controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()

    @property
    def messages(self) -> list[Received]:
        return self.handler.messages
