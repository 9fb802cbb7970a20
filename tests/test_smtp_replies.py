"""Whose fault an SMTP reply is (bot/mail/replies.py), read from replies real relays give, and the
transport placing a failure at its stage against a real server on loopback."""

from __future__ import annotations

import pytest

from bot.mail.replies import classify
from bot.mail.transport import SmtpTarget, SmtpTransport
from tests.smtp import free_port
from tests.smtp_faults import PASSWORD, USERNAME, FaultyServer

SENDER = "bounces+12-abc@corp.example"

# (stage, code, message, fault): what Postfix, Exchange/Office 365, Gmail, Exim and aiosmtpd say.
REPLIES = [
    # the recipient's own permanent failure: suppress
    (
        "rcpt",
        550,
        "5.1.1 <kim@example.org>: Recipient address rejected: User unknown in local recipient table",
        "recipient",
    ),
    (
        "rcpt",
        550,
        "5.1.1 <kim@example.org>: Recipient address rejected: User unknown in relay recipient table",
        "recipient",
    ),
    (
        "rcpt",
        550,
        "5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup",
        "recipient",
    ),
    ("rcpt", 550, "5.2.1 The email account that you tried to reach is disabled.", "recipient"),
    ("rcpt", 553, "5.1.3 The recipient address <kim@> is not a valid RFC-5321 address.", "recipient"),
    ("rcpt", 550, "No such user here", "recipient"),
    ("rcpt", 550, "Requested action not taken: mailbox unavailable", "recipient"),
    ("rcpt", 556, "Domain does not accept mail", "recipient"),
    ("data", 550, "5.1.1 The email account that you tried to reach does not exist.", "recipient"),
    # not the recipient's fault: the relay will not take mail from us
    ("rcpt", 554, "5.7.1 <kim@example.org>: Relay access denied", "auth"),
    ("rcpt", 550, "5.7.1 Unable to relay", "auth"),
    ("rcpt", 550, "relay not permitted", "auth"),
    ("rcpt", 530, "5.7.0 Authentication required", "auth"),
    ("rcpt", 550, "5.7.1 Client was not authenticated to send anonymous mail", "auth"),
    ("mail", 530, "5.7.0 Must issue a STARTTLS command first", "auth"),
    ("mail", 530, "5.7.57 Client not authenticated to send mail", "auth"),
    ("auth", 535, "5.7.8 Username and Password not accepted", "auth"),
    ("auth", 535, "5.7.3 Authentication unsuccessful", "auth"),
    ("auth", 504, "5.5.4 Unrecognized authentication type", "auth"),
    # ... or the sender
    ("mail", 550, "5.7.1 Sender address rejected: not permitted", "sender"),
    ("mail", 553, "5.1.8 <news@corp.example>: Sender address rejected: Domain not found", "sender"),
    ("mail", 552, "5.3.4 Message size exceeds fixed limit", "sender"),
    ("rcpt", 553, "5.7.1 <news@corp.example>: Sender address rejected: not owned by user postroom", "sender"),
    ("rcpt", 550, f"5.7.1 <{SENDER}>: rejected", "sender"),
    ("rcpt", 550, "5.7.26 Unauthenticated email from corp.example is not accepted due to DMARC", "sender"),
    ("data", 550, "5.7.26 This mail has been blocked because the sender is unauthenticated.", "sender"),
    ("data", 554, "5.7.1 Message rejected as spam by Content Filtering", "sender"),
    ("data", 554, "5.6.0 Message content rejected", "sender"),
    # ... or the relay itself
    ("data", 500, "Error: command not recognized", "server"),
    ("data", 554, "Transaction failed", "server"),
    ("data", 550, "Administrative prohibition", "server"),
    ("mail", 500, "5.5.1 Command unrecognized", "server"),
    ("mail", 503, "5.5.1 Error: nested MAIL command", "server"),
    ("rcpt", 554, "5.7.1 <unknown[10.0.0.5]>: Client host rejected: Access denied", "server"),
    ("rcpt", 503, "5.5.1 Error: need MAIL command", "server"),
    ("connect", 554, "5.3.2 No SMTP service here", "server"),
    ("ehlo", 501, "Syntax: EHLO hostname", "server"),
    # soft: may work later, never suppressed
    ("rcpt", 452, "4.2.2 Mailbox full", "transient"),
    ("rcpt", 552, "5.2.2 Mailbox full", "transient"),
    ("rcpt", 451, "4.7.1 Greylisted, please try again", "transient"),
    ("mail", 454, "Throttling failure: Maximum sending rate exceeded.", "transient"),
    ("connect", 421, "4.3.2 Service not available", "transient"),
    ("auth", 454, "4.7.0 Temporary authentication failure", "transient"),
    ("data", 452, "4.3.1 Insufficient system storage", "transient"),
    # refused for this recipient, but the address is not shown to be bad: failed, not suppressed
    ("rcpt", 550, "5.7.1 Message refused by local policy", "rejected"),
    ("rcpt", 550, "5.4.1 Recipient address rejected: Access denied", "rejected"),
    ("rcpt", 554, "Transaction failed", "rejected"),
    ("rcpt", 552, "5.2.3 Message too large for this mailbox", "rejected"),
    # an address in the reply is not a word of it
    ("rcpt", 550, "<password@example.com> no such user", "recipient"),
    ("rcpt", 550, "5.1.1 <sender@example.com>: unknown", "recipient"),
]


@pytest.mark.parametrize(
    ("stage", "code", "message", "fault"), REPLIES, ids=[f"{r[1]} {r[2][:40]}" for r in REPLIES]
)
def test_a_reply_is_read_by_whose_fault_it_is(stage, code, message, fault) -> None:  # type: ignore[no-untyped-def]
    outcome = classify(stage, code, message, sender=SENDER)
    assert not outcome.ok and outcome.fault == fault and outcome.stage == stage and outcome.code == code
    assert outcome.detail.startswith(str(code))
    assert outcome.stops_send == (fault in ("sender", "auth", "server"))


def test_a_reply_is_kept_bounded_and_on_one_line() -> None:
    outcome = classify("rcpt", 550, "5.1.1 no such user\n5.1.1 \x1b[2J" + "x" * 5000)
    assert outcome.status == "5.1.1" and len(outcome.detail) <= 300
    assert "\n" not in outcome.detail and "\x1b" not in outcome.detail


def test_an_enhanced_code_of_another_class_is_ignored() -> None:
    assert classify("rcpt", 550, "4.2.2 full").status == ""
    assert classify("rcpt", 450, "4.2.2 full").status == "4.2.2"


async def _send_once(target: SmtpTarget):  # type: ignore[no-untyped-def]
    transport = SmtpTransport(target)
    try:
        return await transport.send(SENDER, "kim@example.org", b"Subject: x\r\n\r\nhello\r\n")
    finally:
        await transport.close()


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
async def test_the_transport_names_the_stage_a_send_failed_at() -> None:
    with FaultyServer(auth=True) as server:
        target = SmtpTarget("127.0.0.1", server.port, USERNAME, "wrong", timeout_s=5, connections=1)
        login = await _send_once(target)
        assert (login.fault, login.stage, login.code) == ("auth", "auth", 535)
        no_login = await _send_once(SmtpTarget("127.0.0.1", server.port, timeout_s=5, connections=1))
        assert (no_login.fault, no_login.stage, no_login.code) == ("auth", "mail", 530)
        good = SmtpTarget("127.0.0.1", server.port, USERNAME, PASSWORD, timeout_s=5, connections=1)
        server.handler.mail_reply = "553 5.1.8 Sender domain not found"
        assert ((await _send_once(good)).fault, (await _send_once(good)).stage) == ("sender", "mail")
        server.handler.fix()
        server.handler.data_reply = "500 Error: command not recognized"
        data = await _send_once(good)
        assert (data.fault, data.stage, data.code) == ("server", "data", 500)
        tls = await _send_once(
            SmtpTarget(
                "127.0.0.1", server.port, USERNAME, PASSWORD, starttls=True, timeout_s=5, connections=1
            )
        )
        assert (tls.fault, tls.stage) == ("server", "starttls") and "STARTTLS" in tls.detail
        server.handler.fix()
        assert (await _send_once(good)).ok and len(server.messages) == 1
    refused = await _send_once(SmtpTarget("127.0.0.1", free_port(), timeout_s=5, connections=1))
    assert (refused.fault, refused.stage, refused.code) == ("connection", "connect", None)
