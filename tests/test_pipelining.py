"""SMTP pipelining (RFC 2920) against real servers on loopback: MAIL, RCPT and DATA go in one write when
the server offers PIPELINING, every reply is read in order and judged at its own command, so a refusal
in a pipelined group is classified exactly as in lock-step; a server that does not offer it (or
`smtp.pipelining = false`) is spoken to one command at a time.

The aiosmtpd servers (tests/smtp.py, tests/smtp_faults.py) note, at each MAIL FROM, what the client had
already sent after it (`ahead`); the scripted server here answers a whole group in one write, the way
Postfix does, which is what aiosmtplib's own protocol cannot read.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from sqlalchemy import select

from bot.db.models import Suppression
from bot.mail.replies import Outcome
from bot.mail.transport import SmtpTarget, SmtpTransport
from tests.provider_rig import loopback_certificate
from tests.smtp import RecordingHandler, SmtpServer
from tests.smtp_faults import FaultyServer
from tests.test_campaign_delivery import state_of
from tests.test_send_failures import addresses, approve, audience, make_bot

__all__ = ["make_bot"]  # the fixture, used by name

SENDER = "news@corp.example"


def message(i: int) -> bytes:
    return b"Subject: note %d\r\n\r\nHello %d,\r\n.a line with a dot\r\nbye\r\n" % (i, i)


def group(recipient: str) -> bytes:
    """What a pipelining client has sent after MAIL FROM when the server reads it."""
    return b"RCPT TO:<" + recipient.encode() + b">\r\nDATA\r\n"


async def send_each(port: int, recipients: list[str], **target: object) -> list[Outcome]:
    transport = SmtpTransport(SmtpTarget("127.0.0.1", port, timeout_s=5, connections=1, **target))  # type: ignore[arg-type]
    try:
        return [await transport.send(SENDER, r, message(i)) for i, r in enumerate(recipients)]
    finally:
        await transport.close()


async def test_several_messages_go_pipelined_over_one_connection(smtp: SmtpServer) -> None:
    people = [f"p{i}@example.com" for i in range(6)]
    outcomes = await send_each(smtp.port, people)
    assert [o.ok for o in outcomes] == [True] * 6
    assert len({o.connection for o in outcomes}) == 1
    assert [m.rcpt_tos for m in smtp.messages] == [[p] for p in people]
    assert len({m.connection for m in smtp.messages}) == 1
    # Each MAIL FROM arrived with its RCPT TO and DATA behind it, unanswered: one write for the three.
    assert smtp.handler.ahead == [group(p) for p in people]
    for i, m in enumerate(smtp.messages):  # the body in its own write, dot-stuffing undone by the server
        assert m.data.split(b"\r\n\r\n", 1)[1] == b"Hello %d,\r\n.a line with a dot\r\nbye\r\n" % i


async def test_a_rcpt_refusal_in_the_middle_of_pipelined_groups_is_that_recipients_only(
    smtp: SmtpServer,
) -> None:
    people = [f"p{i}@example.com" for i in range(5)]
    smtp.handler.fail_rcpt["p2@example.com"] = [550]  # "550 5.1.1 no such user"
    outcomes = await send_each(smtp.port, people)
    refused = outcomes[2]
    assert (refused.ok, refused.fault, refused.stage, refused.code, refused.status) == (
        False,
        "recipient",
        "rcpt",
        550,
        "5.1.1",
    )
    assert refused.detail == "550 5.1.1 no such user"
    assert [o.ok for i, o in enumerate(outcomes) if i != 2] == [True] * 4
    # Nobody else's reply was taken for theirs: the ones after it arrived, to the right people, over the
    # same connection, and still pipelined.
    assert [m.rcpt_tos for m in smtp.messages] == [[p] for p in people if p != "p2@example.com"]
    assert len({o.connection for o in outcomes}) == 1
    assert smtp.handler.ahead == [group(p) for p in people]


async def test_a_mail_from_refusal_is_the_senders_and_the_next_message_is_answered_in_step() -> None:
    with FaultyServer() as server:
        server.handler.mail_reply = "553 5.7.1 Sender address rejected: not owned by user"
        transport = SmtpTransport(SmtpTarget("127.0.0.1", server.port, timeout_s=5, connections=1))
        try:
            refused = await transport.send(SENDER, "p0@example.com", message(0))
            server.handler.fix()
            after = await transport.send(SENDER, "p1@example.com", message(1))
        finally:
            await transport.close()
    # The RCPT and DATA behind the refused MAIL got 503s: those are not the answer, the 553 is.
    assert (refused.fault, refused.stage, refused.code) == ("sender", "mail", 553)
    assert refused.detail == "553 5.7.1 Sender address rejected: not owned by user"
    assert refused.stops_send and not refused.about_recipient
    assert after.ok and after.connection == refused.connection
    assert [m.rcpt_tos for m in server.messages] == [["p1@example.com"]]
    assert server.handler.ahead == [group("p0@example.com"), group("p1@example.com")]


async def test_a_throttle_at_mail_from_is_transient_and_not_the_recipients() -> None:
    with FaultyServer() as server:
        server.handler.mail_reply = "451 4.7.1 Try again later"
        [outcome] = await send_each(server.port, ["p0@example.com"])
    assert (outcome.fault, outcome.stage, outcome.code) == ("transient", "mail", 451)
    assert not outcome.about_recipient


async def test_a_refusal_at_the_end_of_data_is_the_relays_and_the_connection_goes_on() -> None:
    with FaultyServer() as server:
        server.handler.data_reply = "554 Transaction failed"
        transport = SmtpTransport(SmtpTarget("127.0.0.1", server.port, timeout_s=5, connections=1))
        try:
            refused = await transport.send(SENDER, "p0@example.com", message(0))
            server.handler.fix()
            after = await transport.send(SENDER, "p1@example.com", message(1))
        finally:
            await transport.close()
    assert (refused.fault, refused.stage, refused.code) == ("server", "data", 554)
    assert after.ok and after.connection == refused.connection
    assert [m.rcpt_tos for m in server.messages] == [["p1@example.com"]]


@pytest.mark.parametrize(
    ("offered", "switch"),
    [(False, True), (True, False)],
    ids=["server does not offer PIPELINING", "smtp.pipelining = false"],
)
async def test_lock_step_when_pipelining_is_not_offered_or_switched_off(offered: bool, switch: bool) -> None:
    people = [f"p{i}@example.com" for i in range(3)]
    with SmtpServer(pipelining=offered) as server:
        server.handler.fail_rcpt["p1@example.com"] = [550]
        outcomes = await send_each(server.port, people, pipelining=switch)
    assert [o.ok for o in outcomes] == [True, False, True]
    assert (outcomes[1].fault, outcomes[1].stage) == ("recipient", "rcpt")
    assert [m.rcpt_tos for m in server.messages] == [["p0@example.com"], ["p2@example.com"]]
    assert server.handler.ahead == [b"", b"", b""]  # nothing sent before MAIL FROM was answered


@pytest.mark.parametrize("starttls", [False, True], ids=["plain", "STARTTLS"])
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_pipelining_on_each_event_loop_and_after_starttls(
    loop: str, starttls: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`postroom` runs on uvloop, the tests on asyncio's loop; a relay on port 587 is reached by STARTTLS:
    the switch to the queueing protocol (Transport.set_protocol) must work on both, over TLS too."""
    import uvloop

    tls = None
    if starttls:
        cert, key = loopback_certificate(tmp_path)
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(cert, key)
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # the client trusts this one certificate
    people = [f"p{i}@example.com" for i in range(4)]
    with SmtpServer(tls_context=tls) as server:
        server.handler.fail_rcpt["p1@example.com"] = [550]
        factory = uvloop.new_event_loop if loop == "uvloop" else asyncio.new_event_loop
        with asyncio.Runner(loop_factory=factory) as runner:
            outcomes = runner.run(send_each(server.port, people, starttls=starttls))
    assert [(o.ok, o.fault) for o in outcomes] == [
        (True, None),
        (False, "recipient"),
        (True, None),
        (True, None),
    ]
    assert [m.rcpt_tos for m in server.messages] == [[p] for p in people if p != "p1@example.com"]
    assert server.handler.ahead == [group(p) for p in people]


class _TakesDataAnyway(RecordingHandler):
    """Refuses one recipient but still answers 354 to the DATA behind it, as some servers do."""

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # type: ignore[no-untyped-def]
        envelope.rcpt_tos.append(address)  # so aiosmtpd's DATA says 354 rather than 503
        return "550 5.1.1 no such user" if address == "p0@example.com" else "250 OK"


async def test_data_accepted_after_a_refused_rcpt_gets_an_empty_message_not_the_body() -> None:
    handler = _TakesDataAnyway()
    with SmtpServer(handler=handler) as server:
        outcomes = await send_each(server.port, ["p0@example.com", "p1@example.com"])
    assert (outcomes[0].fault, outcomes[0].stage) == ("recipient", "rcpt")
    assert outcomes[1].ok and outcomes[1].connection == outcomes[0].connection
    # RFC 2920, 3.1: the client ends the DATA it did not mean to send with a lone dot; the body never goes.
    assert [m.data for m in handler.messages][0] == b""
    assert handler.messages[1].rcpt_tos == ["p1@example.com"]
    assert b"Hello 1," in handler.messages[1].data


@asynccontextmanager
async def scripted(
    replies: list[list[bytes]], *, close_after: bool = False
) -> AsyncIterator[tuple[int, list[bytes]]]:
    """A server offering PIPELINING that answers each MAIL/RCPT/DATA group with `replies[n]`, every chunk in
    one write (the way Postfix answers a group: one segment); the message's reply after the body is 250. With
    `close_after` it hangs up after the first group's replies. Yields its port and the bodies it received."""
    bodies: list[bytes] = []
    script = iter(replies)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 scripted ESMTP\r\n")
        try:
            while line := await reader.readline():
                verb = line[:4].upper()
                if verb == b"EHLO":
                    writer.write(b"250-scripted\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
                elif verb == b"MAIL":
                    assert (await reader.readline()).startswith(b"RCPT TO:")
                    assert await reader.readline() == b"DATA\r\n"
                    answer = next(script, None)
                    if answer is None:  # more groups than the test scripted
                        return
                    for chunk in answer:
                        writer.write(chunk)
                        await writer.drain()
                    if close_after:
                        writer.close()
                        return
                    if answer[-1].rstrip().endswith(b"go ahead"):
                        bodies.append(await reader.readuntil(b"\r\n.\r\n"))
                        writer.write(b"250 2.0.0 queued\r\n")
                elif verb == b"QUIT":
                    writer.write(b"221 bye\r\n")
                    return
                else:  # RSET
                    writer.write(b"250 2.0.0 ok\r\n")
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], bodies
    finally:
        server.close()
        await server.wait_closed()


async def test_replies_that_arrive_together_are_each_read_in_order() -> None:
    ok = b"250 2.1.0 ok\r\n250-2.1.5 ok\r\n250 2.1.5 recipient ok\r\n354 go ahead\r\n"
    split = [b"250 2.1.0 ok\r\n250 2.1", b".5 ok\r\n354 go ahead\r\n"]  # a reply cut across two writes
    refused = b"250 2.1.0 ok\r\n550 5.1.1 <p2@example.com>: Recipient address rejected\r\n554 5.5.1 no valid recipients\r\n"
    async with scripted([[ok], split, [refused], [ok]]) as (port, bodies):
        outcomes = await send_each(port, [f"p{i}@example.com" for i in range(1, 5)])
    assert [o.ok for o in outcomes] == [True, True, False, True]
    assert (outcomes[2].fault, outcomes[2].stage, outcomes[2].status) == ("recipient", "rcpt", "5.1.1")
    assert len({o.connection for o in outcomes}) == 1
    assert [b.split(b"\r\n", 1)[0] for b in bodies] == [
        b"Subject: note 0",
        b"Subject: note 1",
        b"Subject: note 3",
    ]


async def test_a_refusal_stands_when_the_server_hangs_up_before_the_rest_of_the_group() -> None:
    async with scripted([[b"550 5.7.1 Sender address rejected\r\n"]], close_after=True) as (port, _bodies):
        [outcome] = await send_each(port, ["p0@example.com"])
    assert (outcome.fault, outcome.stage, outcome.code) == ("sender", "mail", 550)


async def test_a_421_ends_the_group_and_the_next_message_gets_a_new_connection() -> None:
    ok = b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n354 go ahead\r\n"
    async with scripted([[b"421 4.3.2 closing\r\n"], [ok]]) as (port, bodies):
        transport = SmtpTransport(SmtpTarget("127.0.0.1", port, timeout_s=5, connections=1))
        try:
            closing = await transport.send(SENDER, "p0@example.com", message(0))
            after = await transport.send(SENDER, "p1@example.com", message(1))
        finally:
            await transport.close()
    assert (closing.fault, closing.stage, closing.code) == ("transient", "mail", 421)
    assert not closing.about_recipient
    assert after.ok and after.connection != closing.connection
    assert len(bodies) == 1


async def test_a_campaign_pipelines_and_a_refused_recipient_among_them_is_the_only_one_suppressed(
    make_bot, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    with FaultyServer() as server:
        server.handler.rcpt_replies["r3@example.net"] = (
            "550 5.1.1 <r3@example.net>: Recipient address rejected"
        )
        bot = await make_bot(smtp_section={"port": server.port})
        to = await audience(bot, tmp_path, 12)
        await approve(bot, "spring", to)
        assert await state_of(bot, "spring") == "completed"
        assert Counter(r for m in server.messages for r in m.rcpt_tos) == Counter(
            a for a in addresses(12) if a != "r3@example.net"
        )
        async with bot.core.ctx.sessions() as session:
            rows = (await session.execute(select(Suppression.email))).scalars().all()
        assert rows == ["r3@example.net"]
        assert sorted(server.handler.ahead) == sorted(group(a) for a in addresses(12))


async def test_smtp_pipelining_false_sends_a_campaign_in_lock_step(make_bot, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with FaultyServer() as server:
        bot = await make_bot(smtp_section={"port": server.port, "pipelining": False})
        to = await audience(bot, tmp_path, 4)
        await approve(bot, "spring", to)
        assert await state_of(bot, "spring") == "completed"
        assert len(server.messages) == 4
        assert server.handler.ahead == [b""] * 4
