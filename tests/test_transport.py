"""The pooled SMTP transport against a real server: dot-stuffing and line ends survive the lean DATA path."""

from __future__ import annotations

from bot.mail.transport import SmtpTarget, SmtpTransport
from bot.mail.wire import WireBytes


async def test_lines_starting_with_a_dot_arrive_intact(smtp) -> None:  # type: ignore[no-untyped-def]
    transport = SmtpTransport(SmtpTarget("127.0.0.1", smtp.port, timeout_s=5, connections=1))
    body = b".starts with a dot\r\n.\r\n..two dots\r\nend"
    try:
        crlf = await transport.send("a@corp.example", "b@example.com", b"Subject: dots\r\n\r\n" + body)
        bare = await transport.send("a@corp.example", "c@example.com", b"Subject: lf\n\n.x\nlast\n")
    finally:
        await transport.close()
    assert crlf.ok and bare.ok
    first, second = smtp.messages
    assert first.data.split(b"\r\n\r\n", 1)[1].rstrip(b"\r\n") == body
    assert second.data.split(b"\r\n\r\n", 1)[1] == b".x\r\nlast\r\n"


async def test_a_message_marked_crlf_is_sent_as_it_is_dot_stuffed(smtp) -> None:  # type: ignore[no-untyped-def]
    # WireBytes (the composer's, the signer's) skip the line-end count; dot-stuffing still applies.
    transport = SmtpTransport(SmtpTarget("127.0.0.1", smtp.port, timeout_s=5, connections=1))
    data = WireBytes(b".Subject: odd\r\n\r\n.\r\n..two dots\r\nend\r\n")
    try:
        assert (await transport.send("a@corp.example", "b@example.com", data)).ok
    finally:
        await transport.close()
    assert smtp.messages[0].data == bytes(data)
