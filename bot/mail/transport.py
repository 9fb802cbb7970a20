"""Outbound SMTP over a few persistent aiosmtplib connections.

aiosmtplib sends one message at a time per connection, so throughput comes from several connections and,
when the server offers PIPELINING (RFC 2920) and `smtp.pipelining` is on, from fewer round trips: MAIL,
RCPT and DATA go in one write and the message in a second, and the replies are read in order
(bot/mail/pipelining.py); a server that does not offer it is spoken to one command at a time. A dropped
connection is reopened on the next send. Every failure is returned as an `Outcome` that says whose fault
it is and at which stage it happened (bot/mail/replies.py holds the table), pipelined or not: each reply is
judged at its own command, so only a recipient's own permanent failure is `recipient`.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace

import aiosmtplib

from bot.mail.pipelining import ReplyQueue, pipeline
from bot.mail.replies import Outcome, Stage, classify, no_reply, sent
from bot.mail.wire import WireBytes

__all__ = ["Outcome", "SmtpTarget", "SmtpTransport"]

log = logging.getLogger(__name__)

_NO_REPLY = (
    aiosmtplib.SMTPServerDisconnected,
    aiosmtplib.SMTPConnectError,
    aiosmtplib.SMTPTimeoutError,
    ConnectionError,
    OSError,  # ssl.SSLError too: a TLS handshake that failed
    TimeoutError,
)


class _SetupFailed(Exception):
    """Opening a connection failed at `stage` (connect, EHLO, STARTTLS, AUTH)."""

    def __init__(self, stage: Stage, error: BaseException):
        super().__init__(f"{stage}: {error}")
        self.stage = stage
        self.error = error


@dataclass(frozen=True)
class SmtpTarget:
    host: str
    port: int
    username: str | None = None
    password: str | None = None
    starttls: bool = False
    timeout_s: float = 30.0
    connections: int = 2
    route: str = "default"  # the [smtp] route this server is: "default" is [smtp] itself
    pipelining: bool = True  # when the server offers PIPELINING (smtp.pipelining)

    @classmethod
    def from_settings(cls, s, route: str = "default") -> SmtpTarget:
        return cls(
            s.host,
            s.port,
            s.username,
            s.password,
            s.starttls,
            s.timeout_s,
            s.connections,
            route,
            pipelining=s.pipelining,
        )

    @property
    def keys(self) -> str:
        """Where this server's settings live, for a sentence that says what to check."""
        return "smtp" if self.route == "default" else f"smtp.routes.{self.route}"

    @property
    def where(self) -> str:
        """host:port, and the route's settings when it is not [smtp]."""
        place = f"{self.host}:{self.port}"
        return place if self.route == "default" else f"{place} ({self.keys})"


class SmtpTransport:
    def __init__(self, target: SmtpTarget, connections: int | None = None):
        self.target = target
        self.size = connections or target.connections
        self._size_ok = False
        # Each connection gets a number when it opens, never reused: an Outcome names the connection that
        # answered it, so "a later delivery over the same connection" can be told apart from another's.
        self._opened = 0
        self._numbers: dict[int, int] = {}  # id(client) -> its number, while it is open
        self._idle: asyncio.Queue[aiosmtplib.SMTP | None] = asyncio.Queue()
        for _ in range(self.size):
            self._idle.put_nowait(None)  # a slot; connected lazily

    async def _connect(self) -> aiosmtplib.SMTP:
        """Connect, EHLO, STARTTLS and log in one step at a time, so a failure names its stage
        (aiosmtplib would log in inside `connect()` and a refused password would look like a refused
        connection)."""
        t = self.target
        client = aiosmtplib.SMTP(
            hostname=t.host, port=t.port, timeout=t.timeout_s, start_tls=False, use_tls=False
        )
        stage: Stage = "connect"
        try:
            await client.connect()
            stage = "ehlo"
            await client.ehlo()
            if t.starttls:
                stage = "starttls"
                await client.starttls()
                stage = "ehlo"
                await client.ehlo()
            if t.username:
                stage = "auth"
                await client.login(t.username, t.password or "")
            if t.pipelining and client.supports_extension("pipelining"):
                pipeline(client)  # from now on its replies are queued in order (bot/mail/pipelining.py)
        except (aiosmtplib.SMTPException, *_NO_REPLY) as exc:
            client.close()
            raise _SetupFailed(stage, exc) from exc
        self._size_ok = client.supports_extension("size")
        self._opened += 1
        self._numbers[id(client)] = self._opened
        return client

    def open_connections(self) -> frozenset[int]:
        """The numbers of the connections open now (a closed one's number never comes back)."""
        return frozenset(self._numbers.values())

    async def _deliver(
        self, client: aiosmtplib.SMTP, sender: str, recipient: str, data: bytes, where: list[Stage]
    ) -> None:
        """MAIL, RCPT, DATA for one recipient: `sendmail` without its per-call address parsing and
        option handling (a third of the CPU per message; addresses here are validated ASCII already),
        pipelined when the connection is. `where[0]` follows the stage, so a connection lost midway is
        placed."""
        if not (sender.isascii() and recipient.isascii()):
            where[0] = "mail"
            await client.sendmail(sender, [recipient], data)
            return
        size = b" SIZE=%d" % len(data) if self._size_ok else b""
        mail = b"MAIL FROM:<" + sender.encode() + b">" + size
        rcpt = b"RCPT TO:<" + recipient.encode() + b">"
        proto = client.protocol
        if isinstance(proto, ReplyQueue):
            await self._pipelined(client, proto, mail, rcpt, data, sender, recipient, where)
            return
        try:
            where[0] = "mail"
            reply = await client.execute_command(mail)
            if reply.code != 250:
                raise aiosmtplib.SMTPSenderRefused(reply.code, reply.message, sender)
            where[0] = "rcpt"
            reply = await client.execute_command(rcpt)
            if reply.code not in (250, 251):
                raise _recipient_refused(reply, recipient)
            where[0] = "data"
            await self._data(client, data)
        except (aiosmtplib.SMTPResponseException, aiosmtplib.SMTPRecipientsRefused):
            await _reset(client)  # the envelope, for the next message on this connection
            raise

    async def _pipelined(
        self,
        client: aiosmtplib.SMTP,
        proto: ReplyQueue,
        mail: bytes,
        rcpt: bytes,
        data: bytes,
        sender: str,
        recipient: str,
        where: list[Stage],
    ) -> None:
        """MAIL, RCPT and DATA in one write, their replies read in order, then the message in one write
        (RFC 2920). Every reply is read, and the first refusal is the answer, judged at its own command as
        in lock-step: a 5xx at MAIL is the sender's (the RCPT and DATA after it get 503), one at RCPT the
        recipient's. A 421 means the server is closing: reading stops there."""
        timeout = self.target.timeout_s
        body = _wire(data)
        where[0] = "mail"
        proto.write(mail + b"\r\n" + rcpt + b"\r\nDATA\r\n")
        refusal: Exception | None = None
        go: aiosmtplib.SMTPResponse | None = None
        stages: tuple[Stage, ...] = ("mail", "rcpt", "data")
        for stage in stages:
            where[0] = stage
            try:
                reply = await proto.read_response(timeout=timeout)
            except (aiosmtplib.SMTPException, *_NO_REPLY):
                if refusal is None:
                    raise
                client.close()  # no reply to what followed the refusal: out of step, and the refusal stands
                raise refusal from None
            if refusal is None:
                refusal = _refused_at(stage, reply, sender, recipient)
            go = reply if stage == "data" else None
            if reply.code == 421:
                client.close()
                break
        if refusal is None:
            proto.write(body)
            reply = await proto.read_response(timeout=timeout)
            if reply.code != 250:
                raise aiosmtplib.SMTPDataError(reply.code, reply.message)
            return
        if go is not None and go.code == 354:
            # DATA accepted although MAIL or RCPT was refused: an empty message ends it (RFC 2920, 3.1).
            try:
                proto.write(b".\r\n")
                await proto.read_response(timeout=timeout)
            except (aiosmtplib.SMTPException, *_NO_REPLY):
                client.close()
        elif client.is_connected:
            await _reset(client)
        raise refusal

    async def _data(self, client: aiosmtplib.SMTP, data: bytes) -> None:
        """DATA with the message as built: CRLF already, so dot-stuffing is one bytes.replace instead
        of aiosmtplib's two regular-expression passes over every message (~45 µs of ~400 per message).
        `WireBytes` (the composer's and the DKIM signer's) are CRLF by construction and not counted again."""
        proto = client.protocol
        if proto is None:
            raise aiosmtplib.SMTPServerDisconnected("Server not connected")
        timeout = self.target.timeout_s
        proto.write(b"DATA\r\n")
        reply = await proto.read_response(timeout=timeout)
        if reply.code != 354:
            raise aiosmtplib.SMTPDataError(reply.code, reply.message)
        proto.write(_wire(data))
        reply = await proto.read_response(timeout=timeout)
        if reply.code != 250:
            raise aiosmtplib.SMTPDataError(reply.code, reply.message)

    @asynccontextmanager
    async def _slot(self) -> AsyncIterator[list[aiosmtplib.SMTP | None]]:
        client = await self._idle.get()
        holder = [client]
        try:
            yield holder
        finally:
            self._idle.put_nowait(holder[0])

    async def send(self, sender: str, recipient: str, data: bytes) -> Outcome:
        """Send one message to one recipient. A connection that was dropped (or a greeting that said
        "try later") is reopened once; a refusal is returned at once, classified. The outcome names the
        connection that answered (`Outcome.connection`)."""
        async with self._slot() as holder:
            outcome = await self._send(holder, sender, recipient, data)
            if outcome.ok:
                return outcome
            client = holder[0]
            number = self._numbers.get(id(client)) if client is not None else None
            return replace(outcome, connection=number) if number is not None else outcome

    async def _send(
        self, holder: list[aiosmtplib.SMTP | None], sender: str, recipient: str, data: bytes
    ) -> Outcome:
        outcome = Outcome(ok=False, fault="connection", detail="unreachable")
        for _attempt in (1, 2):
            where: list[Stage] = ["connect"]
            try:
                client = holder[0]
                if client is None or not client.is_connected:
                    if client is not None:
                        self._numbers.pop(id(client), None)
                        holder[0] = None
                    client = holder[0] = await self._connect()
                await self._deliver(client, sender, recipient, data, where)
                return sent(connection=self._numbers.get(id(client)))
            except _SetupFailed as exc:
                self._discard(holder)
                outcome = _setup_outcome(exc, sender)
                if not outcome.transient:
                    return outcome
            except aiosmtplib.SMTPRecipientsRefused as exc:
                err = exc.recipients[0] if exc.recipients else None
                return classify("rcpt", err.code if err else 550, err.message if err else str(exc))
            except aiosmtplib.SMTPSenderRefused as exc:
                return classify("mail", exc.code, exc.message, sender=sender)
            except aiosmtplib.SMTPDataError as exc:
                return classify("data", exc.code, exc.message, sender=sender)
            except aiosmtplib.SMTPResponseException as exc:
                self._discard(holder)
                outcome = classify(where[0], exc.code, exc.message, sender=sender)
                if not outcome.transient:
                    return outcome
            except _NO_REPLY as exc:
                self._discard(holder)
                outcome = no_reply(where[0], exc)
            except aiosmtplib.SMTPException as exc:  # e.g. SMTPUTF8 not offered for a non-ASCII address
                self._discard(holder)
                return Outcome(ok=False, fault="server", stage=where[0], detail=str(exc)[:300])
        return outcome

    def _discard(self, holder: list[aiosmtplib.SMTP | None]) -> None:
        client = holder[0]
        holder[0] = None
        if client is not None:
            self._numbers.pop(id(client), None)
            try:
                client.close()
            except Exception:  # already broken
                pass

    async def close(self) -> None:
        clients = []
        while not self._idle.empty():
            clients.append(self._idle.get_nowait())
        self._numbers.clear()
        for c in clients:
            if c is not None and c.is_connected:
                try:
                    await asyncio.wait_for(c.quit(), 2)
                except Exception:  # closing is best effort
                    c.close()
        for _ in range(self.size):
            self._idle.put_nowait(None)


_LINE_END = re.compile(rb"\r\n|\r|\n")


def _wire(data: bytes) -> bytes:
    """The message as DATA carries it: CRLF line ends, a dot doubled at the start of a line, and the dot
    line that ends it. A message built here is CRLF already: then it is one bytes.replace, and `WireBytes`
    (the composer's and the DKIM signer's, CRLF by construction) are not even counted."""
    if type(data) is not WireBytes and not _crlf_only(data):
        data = _LINE_END.sub(b"\r\n", data)
    payload = (b"." + data if data.startswith(b".") else data).replace(b"\r\n.", b"\r\n..")
    if not payload.endswith(b"\r\n"):
        payload += b"\r\n"
    return payload + b".\r\n"


def _refused_at(
    stage: Stage, reply: aiosmtplib.SMTPResponse, sender: str, recipient: str
) -> Exception | None:
    """The refusal a reply to MAIL, RCPT or DATA is, as aiosmtplib raises it in lock-step; None if accepted."""
    if stage == "mail":
        return None if reply.code == 250 else aiosmtplib.SMTPSenderRefused(reply.code, reply.message, sender)
    if stage == "rcpt":
        return None if reply.code in (250, 251) else _recipient_refused(reply, recipient)
    return None if reply.code == 354 else aiosmtplib.SMTPDataError(reply.code, reply.message)


def _recipient_refused(reply: aiosmtplib.SMTPResponse, recipient: str) -> aiosmtplib.SMTPRecipientsRefused:
    return aiosmtplib.SMTPRecipientsRefused(
        [aiosmtplib.SMTPRecipientRefused(reply.code, reply.message, recipient)]
    )


async def _reset(client: aiosmtplib.SMTP) -> None:
    try:
        await client.rset()
    except (ConnectionError, aiosmtplib.SMTPException):
        pass


def _crlf_only(data: bytes) -> bool:
    crlf = data.count(b"\r\n")
    return data.count(b"\n") == crlf and data.count(b"\r") == crlf


def _setup_outcome(exc: _SetupFailed, sender: str) -> Outcome:
    error = exc.error
    if isinstance(error, aiosmtplib.SMTPResponseException):
        return classify(exc.stage, error.code, error.message, sender=sender)
    if isinstance(error, _NO_REPLY):
        return no_reply(exc.stage, error)
    # The server lacks what the settings ask for: STARTTLS, or AUTH when a username is set.
    return Outcome(
        ok=False,
        fault="auth" if exc.stage == "auth" else "server",
        stage=exc.stage,
        detail=" ".join(str(error).split())[:300],
    )
