"""A failure of the send — the login, the sender, the relay, the message, the connection — changes nobody's
data (invariant 8): every recipient stays unsuppressed and `pending`, the campaign pauses at once with a
sentence naming the server's reply, and once the server is fixed `/campaign resume` delivers to everyone
exactly once. Only a recipient's own 5xx at RCPT suppresses, and `/suppressions show` gives the evidence.

Against a real aiosmtpd relay on loopback (tests/smtp_faults.py) and a real database, for an audience of
three and for one larger than `error_min_samples` (the error-rate pause waits for 50 samples; the circuit
breaker must not).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from bot.contacts.importer import import_contacts
from bot.db.models import Campaign, Delivery, Suppression
from tests.conftest import ADMIN, APPROVER, SENDER, ChatBot
from tests.smtp import free_port
from tests.smtp_faults import PASSWORD, USERNAME, FaultyServer
from tests.test_campaign_delivery import make_bot, state_of

__all__ = ["make_bot"]  # the fixture, used by name
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")  # loopback only

SMALL = 3
LARGE = 80  # more than error_min_samples (50)


async def audience(bot: ChatBot, tmp_path: Path, size: int) -> str:
    name = f"people{size}"
    rows = "".join(f"r{i}@example.net,R {i},2026-01-01T00:00:00+00:00,form\n" for i in range(size))
    path = tmp_path / f"{name}.csv"
    path.write_text("email,name,consent_at,consent_source\n" + rows)
    report = await import_contacts(bot.core.ctx, path, name)
    assert report.added == size
    return name


def addresses(size: int) -> list[str]:
    return [f"r{i}@example.net" for i in range(size)]


async def approve(bot: ChatBot, name: str, to: str) -> None:
    assert "Draft campaign" in await bot.say(SENDER, f"/campaign new {name} --to {to} --template welcome")
    assert "Submitted" in await bot.say(SENDER, f"/campaign submit {name}")
    assert "Approved" in await bot.say(APPROVER, f"/approve {name}")
    await bot.settle()


async def suppressed(bot: ChatBot) -> int:
    async with bot.core.ctx.sessions() as session:
        return (await session.execute(select(func.count()).select_from(Suppression))).scalar_one()


async def statuses(bot: ChatBot, name: str) -> Counter[tuple[str, int]]:
    async with bot.core.ctx.sessions() as session:
        cid = (await session.execute(select(Campaign.id).where(Campaign.name == name))).scalar_one()
        rows = (
            await session.execute(
                select(Delivery.status, Delivery.attempts).where(Delivery.campaign_id == cid)
            )
        ).all()
    return Counter((status, attempts) for status, attempts in rows)


def said(bot: ChatBot) -> list[str]:
    return [m.text for _kind, conv, m in bot.console.transcript if conv == "approvals" and m.card is None]


def received(server: FaultyServer) -> Counter[str]:
    return Counter(r for m in server.messages for r in m.rcpt_tos)


# case: (how the relay is broken, the settings' smtp section, what the sentence must name)
CASES: dict[str, tuple[dict[str, Any], list[str]]] = {
    "wrong password (535 at AUTH)": ({}, ["535", "smtp.username and smtp.password"]),
    "sender refused (550 at MAIL FROM)": (
        {"mail_reply": "550 5.7.1 Sender address rejected: not permitted"},
        ["550 5.7.1 Sender address rejected", "campaigns.from_address"],
    ),
    "sender refused (553 at MAIL FROM)": (
        {"mail_reply": "553 5.1.8 Domain of sender address does not exist"},
        ["553 5.1.8", "campaigns.from_address"],
    ),
    "relay access denied (554 5.7.1 at RCPT)": (
        {"rcpt_reply": "554 5.7.1 Relay access denied"},
        ["Relay access denied", "smtp.username and smtp.password"],
    ),
    "misconfigured relay (500 at DATA)": (
        {"data_reply": "500 Error: command not recognized"},
        ["500 Error: command not recognized", "smtp.host and smtp.port"],
    ),
    "relay refuses the message (554 at DATA)": (
        {"data_reply": "554 Transaction failed"},
        ["554 Transaction failed", "smtp.host and smtp.port"],
    ),
    "connection refused": ({}, ["could not talk to the mail server", "smtp.host, smtp.port"]),
}


@pytest.mark.parametrize("size", [SMALL, LARGE], ids=["3 recipients", f"{LARGE} recipients"])
@pytest.mark.parametrize("case", list(CASES))
async def test_a_failure_of_the_send_pauses_at_once_suppresses_nobody_and_resume_delivers_once(
    make_bot, tmp_path: Path, case: str, size: int
) -> None:  # type: ignore[no-untyped-def]
    replies, names = CASES[case]
    port = free_port()
    server = FaultyServer(port, auth=True)
    for attr, value in replies.items():
        setattr(server.handler, attr, value)
    right = {"port": port, "username": USERNAME, "password": PASSWORD}
    wrong = {**right, "password": "wrong-password"} if "535" in case else right
    listening = "connection refused" not in case
    if listening:
        server.__enter__()
    try:
        bot = await make_bot(smtp_section=wrong)
        to = await audience(bot, tmp_path, size)
        await approve(bot, "spring", to)

        assert await state_of(bot, "spring") == "paused"
        assert await suppressed(bot) == 0
        assert await statuses(bot, "spring") == Counter({("pending", 0): size})  # no attempt counted
        assert server.messages == []
        # At once: the messages in flight on the two connections, not error_min_samples of them.
        assert len(server.handler.refused_logins) + len(server.handler.refused) <= 2
        sentence = [text for text in said(bot) if "Paused by itself" in text]
        assert len(sentence) == 1 and all(n in sentence[0] for n in names), said(bot)
        assert "Nobody was suppressed" in sentence[0] and "/campaign resume spring" in sentence[0]
        status = await bot.say(SENDER, "/campaign status spring")
        assert "is paused" in status and all(n in status for n in names), status

        # The admin fixes it; /campaign resume delivers to everyone, once.
        if not listening:
            server.__enter__()
            listening = True
        server.handler.fix()
        if wrong is not right:
            bot = await make_bot(smtp_section=right)  # the corrected password, after a restart
        assert "Resumed" in await bot.say(SENDER, "/campaign resume spring")
        await bot.settle()
        assert await state_of(bot, "spring") == "completed"
        assert received(server) == Counter({e: 1 for e in addresses(size)})
        assert await suppressed(bot) == 0
    finally:
        if listening:
            server.__exit__()


async def test_a_5xx_at_rcpt_suppresses_that_address_only_with_the_reply_as_evidence(
    make_bot, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    with FaultyServer() as server:
        server.handler.rcpt_replies["r1@example.net"] = (
            "550 5.1.1 <r1@example.net>: Recipient address rejected"
        )
        bot = await make_bot(smtp_section={"port": server.port})
        to = await audience(bot, tmp_path, SMALL)
        await approve(bot, "spring", to)
        assert await state_of(bot, "spring") == "completed"
        assert received(server) == Counter({"r0@example.net": 1, "r2@example.net": 1})
        async with bot.core.ctx.sessions() as session:
            rows = (await session.execute(select(Suppression))).scalars().all()
        assert [(s.email, s.reason, s.kind) for s in rows] == [("r1@example.net", "hard_bounce", "rcpt")]
        shown = await bot.say(ADMIN, "/suppressions show r1@example.net")
        assert "r1@example.net is suppressed: hard bounce" in shown
        assert "550 5.1.1 <r1@example.net>: Recipient address rejected" in shown
        assert "campaign: spring" in shown and "RCPT" in shown
        assert "r0@example.net is not suppressed." in await bot.say(
            ADMIN, "/suppressions show r0@example.net"
        )


async def test_a_full_mailbox_or_a_policy_refusal_at_rcpt_suppresses_nobody(make_bot, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with FaultyServer() as server:
        server.handler.rcpt_replies["r0@example.net"] = "552 5.2.2 Mailbox full"
        server.handler.rcpt_replies["r1@example.net"] = "550 5.7.1 Message refused by local policy"
        bot = await make_bot(smtp_section={"port": server.port}, max_attempts=2)
        to = await audience(bot, tmp_path, SMALL)
        await approve(bot, "spring", to)
        assert await state_of(bot, "spring") == "completed"
        assert await suppressed(bot) == 0
        assert received(server) == Counter({"r2@example.net": 1})


async def test_a_throttle_that_outlasts_the_retries_pauses_rather_than_failing_recipients(
    make_bot, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    with FaultyServer() as server:
        server.handler.mail_reply = "454 4.7.0 Throttling failure: Maximum sending rate exceeded"
        bot = await make_bot(smtp_section={"port": server.port}, max_attempts=2)
        to = await audience(bot, tmp_path, SMALL)
        await approve(bot, "spring", to)
        assert await state_of(bot, "spring") == "paused"
        assert await statuses(bot, "spring") == Counter({("pending", 1): SMALL})  # the last try not counted
        assert any("kept answering 454" in text for text in said(bot)), said(bot)
        server.handler.fix()
        assert "Resumed" in await bot.say(SENDER, "/campaign resume spring")
        await bot.settle()
        assert await state_of(bot, "spring") == "completed"
        assert received(server) == Counter({e: 1 for e in addresses(SMALL)})
        assert await suppressed(bot) == 0


# Attacker tryout: a relay answering a generic "550 Requested action not taken: mailbox unavailable" (no
# enhanced status code) at RCPT for every recipient suppressed 50 of them as hard bounces before the
# error-rate pause. The same bare reply repeated for campaigns.same_refusal_limit (3) recipients in a row
# with no delivery in between is the server's doing: pause at once, suppress nobody.
GENERIC_550 = "550 Requested action not taken: mailbox unavailable"


async def test_a_generic_550_at_rcpt_for_everyone_pauses_and_suppresses_nobody(
    make_bot, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    with FaultyServer() as server:
        server.handler.rcpt_reply = GENERIC_550
        bot = await make_bot(smtp_section={"port": server.port})
        to = await audience(bot, tmp_path, LARGE)
        await approve(bot, "spring", to)
        assert await state_of(bot, "spring") == "paused"
        assert await suppressed(bot) == 0
        assert await statuses(bot, "spring") == Counter({("pending", 0): LARGE})
        sentence = [text for text in said(bot) if "Paused by itself" in text]
        assert len(sentence) == 1 and GENERIC_550 in sentence[0], said(bot)
        assert "Nobody was suppressed" in sentence[0] and "in a row" in sentence[0]
        server.handler.fix()
        assert "Resumed" in await bot.say(SENDER, "/campaign resume spring")
        await bot.settle()
        assert await state_of(bot, "spring") == "completed"
        assert received(server) == Counter({e: 1 for e in addresses(LARGE)})
        assert await suppressed(bot) == 0


async def test_a_generic_550_for_one_mailbox_among_good_ones_still_suppresses_it(
    make_bot, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    with FaultyServer() as server:
        server.handler.rcpt_replies["r1@example.net"] = GENERIC_550
        server.handler.rcpt_replies["r5@example.net"] = GENERIC_550
        bot = await make_bot(smtp_section={"port": server.port})
        to = await audience(bot, tmp_path, 8)
        await approve(bot, "spring", to)
        assert await state_of(bot, "spring") == "completed"
        async with bot.core.ctx.sessions() as session:
            rows = (await session.execute(select(Suppression))).scalars().all()
        assert sorted(s.email for s in rows) == ["r1@example.net", "r5@example.net"]


async def audience_of(bot: ChatBot, tmp_path: Path, name: str, emails: list[str]) -> str:
    """A list of `emails`, imported in this order (the delivery rows are claimed by id, so in this order)."""
    rows = "".join(f"{e},{e.split('@')[0]},2026-01-01T00:00:00+00:00,form\n" for e in emails)
    path = tmp_path / f"{name}.csv"
    path.write_text("email,name,consent_at,consent_source\n" + rows)
    report = await import_contacts(bot.core.ctx, path, name)
    assert report.added == len(emails)
    return name


async def suppressed_emails(bot: ChatBot) -> list[str]:
    async with bot.core.ctx.sessions() as session:
        return sorted((await session.execute(select(Suppression.email))).scalars())


DEAD = ["dead1@provider.example", "dead2@provider.example", "dead3@provider.example"]
LIVE = ["live1@provider.example", "a@example.net", "b@example.org", "live2@provider.example"]


# Review: three dead mailboxes in a row at one provider, each answered with the bare 550, paused the campaign
# as the server's fault; `/campaign resume` claimed the same three first and paused again, every time, and
# nobody after them was ever mailed. A relay that refuses everything answers the same at every domain; a
# provider's dead mailboxes are refused only at that provider, and its live ones are delivered.
async def test_dead_mailboxes_in_a_row_at_one_provider_do_not_pause_and_end_suppressed(
    make_bot, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    with FaultyServer() as server:
        for e in DEAD:
            server.handler.rcpt_replies[e] = GENERIC_550
        bot = await make_bot(smtp_section={"port": server.port, "connections": 1})
        to = await audience_of(bot, tmp_path, "mixed", ["first@example.com", *DEAD, *LIVE])
        await approve(bot, "spring", to)
        assert await state_of(bot, "spring") == "completed", said(bot)
        assert not [text for text in said(bot) if "Paused by itself" in text]
        assert received(server) == Counter(dict.fromkeys(["first@example.com", *LIVE], 1))
        assert await suppressed_emails(bot) == sorted(DEAD)
        shown = await bot.say(ADMIN, "/suppressions show dead2@provider.example")
        assert "suppressed: hard bounce" in shown and GENERIC_550 in shown, shown


async def test_dead_mailboxes_that_open_a_campaign_pause_it_once_and_resume_sends_past_them(
    make_bot, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """Before anything is delivered, three bare refusals in a row can't be told from a relay refusing
    everyone: the campaign pauses. The resume must not pause on the same three again."""
    with FaultyServer() as server:
        for e in DEAD:
            server.handler.rcpt_replies[e] = GENERIC_550
        bot = await make_bot(smtp_section={"port": server.port, "connections": 1})
        to = await audience_of(bot, tmp_path, "mixed", [*DEAD, *LIVE])
        await approve(bot, "spring", to)
        assert await state_of(bot, "spring") == "paused"
        assert await suppressed_emails(bot) == [] and server.messages == []
        assert await statuses(bot, "spring") == Counter({("pending", 0): 7})
        for _resume in range(2):  # main paused again on every resume, the same three first
            if await state_of(bot, "spring") == "paused":
                assert "Resumed" in await bot.say(SENDER, "/campaign resume spring")
                await bot.settle()
        assert await state_of(bot, "spring") == "completed", said(bot)
        assert len([text for text in said(bot) if "Paused by itself" in text]) == 1, said(bot)
        assert received(server) == Counter(dict.fromkeys(LIVE, 1))
        assert await suppressed_emails(bot) == sorted(DEAD)


# Review: a bare 550 for the last recipient of a batch had no delivery after it in its batch, so it was
# retried and, after max_attempts, failed "not suppressed" although the next batch delivered to the same
# domain over the same connection a moment later.
async def test_a_bare_550_at_the_end_of_a_batch_is_proven_by_a_delivery_in_the_next_batch(
    make_bot, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    with FaultyServer() as server:
        server.handler.rcpt_replies["r1@example.net"] = GENERIC_550  # the second, last of batch one
        bot = await make_bot(
            smtp_section={"port": server.port, "connections": 1}, batch_size=2, max_attempts=1
        )
        to = await audience(bot, tmp_path, 6)
        await approve(bot, "spring", to)
        assert await state_of(bot, "spring") == "completed", said(bot)
        assert await suppressed_emails(bot) == ["r1@example.net"]
        assert await statuses(bot, "spring") == Counter({("sent", 1): 5, ("bounced", 1): 1})
        assert received(server) == Counter({e: 1 for e in addresses(6) if e != "r1@example.net"})


# A provider that refuses every address of its domain with the bare 550 (the relay can't reach it, or it
# refuses the relay) says nothing about any of its mailboxes: deliveries to other domains around them
# proved them before, and suppressed every recipient there.
async def test_a_domain_that_refuses_all_its_addresses_suppresses_none_of_them(
    make_bot, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    gone = [f"g{i}@gone.example" for i in range(3)]
    good = [f"r{i}@example.net" for i in range(6)]
    emails = [good[0], gone[0], good[1], good[2], gone[1], good[3], good[4], gone[2], good[5]]
    with FaultyServer() as server:
        for e in gone:
            server.handler.rcpt_replies[e] = GENERIC_550
        bot = await make_bot(
            smtp_section={"port": server.port, "connections": 1}, batch_size=3, max_attempts=2
        )
        to = await audience_of(bot, tmp_path, "withgone", emails)
        await approve(bot, "spring", to)
        assert await state_of(bot, "spring") == "completed", said(bot)
        assert await suppressed_emails(bot) == []
        assert received(server) == Counter(dict.fromkeys(good, 1))
        assert await statuses(bot, "spring") == Counter({("sent", 1): 6, ("failed", 2): 3})


# Review: any delivery on any connection proved every earlier bare refusal, so one pooled connection gone
# bad (answering the bare 550 to everything) got innocent recipients suppressed because the other
# connection was delivering. Proof now has to come from the connection that refused.
async def test_one_bad_connection_among_good_ones_suppresses_nobody(make_bot, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    emails = [f"p{i}@{d}" for i in range(5) for d in ("example.net", "example.org", "example.com")]
    with FaultyServer() as server:
        server.handler.bad_connection_reply = GENERIC_550
        bot = await make_bot(smtp_section={"port": server.port, "connections": 2})
        to = await audience_of(bot, tmp_path, "pooled", emails)
        await approve(bot, "spring", to)
        assert await suppressed_emails(bot) == []
        assert server.handler.refused  # the bad connection did refuse some
        assert await state_of(bot, "spring") == "paused", said(bot)
        sentence = [text for text in said(bot) if "Paused by itself" in text]
        assert len(sentence) == 1 and "in a row" in sentence[0] and GENERIC_550 in sentence[0], said(bot)
        server.handler.fix()
        assert "Resumed" in await bot.say(SENDER, "/campaign resume spring")
        await bot.settle()
        assert await state_of(bot, "spring") == "completed"
        assert received(server) == Counter(dict.fromkeys(emails, 1))
        assert await suppressed_emails(bot) == []


async def test_a_relay_that_starts_refusing_everyone_midway_pauses_and_suppresses_nobody(
    make_bot, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """After a delivery a one-domain run of bare refusals may be dead mailboxes; at several domains it is
    the relay's, and the campaign pauses as before."""
    emails = [f"q{i}@{d}" for i in range(6) for d in ("example.net", "example.org", "example.com")]
    with FaultyServer() as server:
        for e in emails[1:]:
            server.handler.rcpt_replies[e] = GENERIC_550
        bot = await make_bot(smtp_section={"port": server.port, "connections": 1})
        to = await audience_of(bot, tmp_path, "midway", emails)
        await approve(bot, "spring", to)
        assert await state_of(bot, "spring") == "paused", said(bot)
        assert await suppressed_emails(bot) == []
        assert await statuses(bot, "spring") == Counter({("sent", 1): 1, ("pending", 0): len(emails) - 1})
        assert any("in a row" in text and GENERIC_550 in text for text in said(bot)), said(bot)


async def test_a_one_domain_audience_refused_after_a_delivery_pauses_at_the_error_window(
    make_bot, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """At one domain after a delivery, a run of bare refusals can't be told from dead mailboxes, so the
    streak does not pause; the error window still does, and nobody is suppressed or counted."""
    size = 60
    with FaultyServer() as server:
        for e in addresses(size)[1:]:
            server.handler.rcpt_replies[e] = GENERIC_550
        bot = await make_bot(smtp_section={"port": server.port, "connections": 1})
        to = await audience(bot, tmp_path, size)
        await approve(bot, "spring", to)
        assert await state_of(bot, "spring") == "paused", said(bot)
        assert await suppressed_emails(bot) == []
        assert await statuses(bot, "spring") == Counter({("sent", 1): 1, ("pending", 0): size - 1})
        sentence = [text for text in said(bot) if "Paused by itself" in text]
        assert len(sentence) == 1 and "of the last" in sentence[0] and GENERIC_550 in sentence[0], said(bot)
