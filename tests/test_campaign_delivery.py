"""The delivery engine against a real SMTP server on loopback: retries, bounces, drops, pause,
resume, cancel, unsubscribe mid-campaign, frequency cap, consent, tracking, scheduling, reports."""

from __future__ import annotations

import asyncio
import io
import re
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from adapters.console import ConsoleAdapter
from bot.app import build_app
from bot.contacts.importer import import_contacts
from bot.db.models import Campaign, CampaignEvent, Contact, Delivery, Suppression
from bot.links import Signer
from tests.conftest import ADMIN, APPROVER, APPROVER2, HR, SENDER, ChatBot, make_settings
from tests.smtp import RecordingHandler, free_port

CSV = """email,name,consent_at,consent_source,company
lena@example.com,Lena Fischer,2026-03-02T10:15:00+00:00,signup form,Fischer GmbH
raj@example.net,Raj Patel,2026-04-11T08:00:00+00:00,trade fair,Patel Ltd
kim@example.org,Kim Park,2026-04-12T08:00:00+00:00,webinar,Park Co
ode@example.com,Ode Obi,2026-04-13T08:00:00+00:00,webinar,Obi Inc
nocon@example.com,No Consent,,,
"""
CONSENTED = ["lena@example.com", "raj@example.net", "kim@example.org", "ode@example.com"]

FAST = {"retry_base_s": 0, "error_min_samples": 50}


@pytest.fixture
async def make_bot(database_url: str, smtp, tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:  # type: ignore[no-untyped-def]
    made: list[ChatBot] = []

    async def factory(smtp_section: dict[str, Any] | None = None, **campaigns: Any) -> ChatBot:
        settings = make_settings(
            database_url,
            smtp.port,
            tmp_path,
            smtp=smtp_section or {},
            campaigns={**FAST, "reports_dir": str(tmp_path / "reports"), **campaigns},
        )
        app = await build_app(settings)
        core = app.core
        console = ConsoleAdapter(HR, out=io.StringIO(), prompt=False)
        app.attach(console)
        await console.start(core)
        bot = ChatBot(app, console, console.out)  # type: ignore[arg-type]
        made.append(bot)
        path = tmp_path / "contacts.csv"
        if not path.exists():
            path.write_text(CSV)
            report = await import_contacts(core.ctx, path, "customers")
            assert report.without_consent == 1 and "1 contact has no consent record" in report.summary()
        return bot

    yield factory
    for bot in made:
        await bot.app.close()


async def send(bot: ChatBot, name: str, *extra: str) -> None:
    reply = await bot.say(SENDER, f"/campaign new {name} --to customers --template welcome {' '.join(extra)}")
    assert "Draft campaign" in reply, reply
    reply = await bot.say(SENDER, f"/campaign submit {name}")
    assert "Submitted" in reply, reply
    reply = await bot.say(APPROVER, f"/approve {name}")
    assert "Approved" in reply, reply


async def until(condition: Callable[[], Any], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")


async def deliveries(bot: ChatBot, name: str) -> dict[str, Delivery]:
    async with bot.core.ctx.sessions() as session:
        cid = (await session.execute(select(Campaign.id).where(Campaign.name == name))).scalar_one()
        rows = (await session.execute(select(Delivery).where(Delivery.campaign_id == cid))).scalars().all()
    return {d.email: d for d in rows}


async def state_of(bot: ChatBot, name: str) -> str:
    async with bot.core.ctx.sessions() as session:
        return (await session.execute(select(Campaign.state).where(Campaign.name == name))).scalar_one()


def received(smtp) -> Counter[str]:  # type: ignore[no-untyped-def]
    return Counter(r for m in smtp.messages for r in m.rcpt_tos)


def web(bot: ChatBot) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=bot.app.web()), base_url="http://t", follow_redirects=False
    )


async def test_a_4xx_is_retried_until_it_is_accepted(make_bot, smtp) -> None:  # type: ignore[no-untyped-def]
    bot = await make_bot()
    smtp.handler.fail_rcpt["raj@example.net"] = [451, 451]
    await send(bot, "retry")
    await bot.settle()
    assert received(smtp) == Counter({e: 1 for e in CONSENTED})
    rows = await deliveries(bot, "retry")
    assert rows["raj@example.net"].status == "sent" and rows["raj@example.net"].attempts == 3
    assert "nocon@example.com" not in rows  # no consent record: never mailed


async def test_a_5xx_is_a_hard_bounce_and_suppresses_the_address(make_bot, smtp) -> None:  # type: ignore[no-untyped-def]
    bot = await make_bot()
    smtp.handler.fail_rcpt["kim@example.org"] = [550]
    await send(bot, "first")
    await bot.settle()
    rows = await deliveries(bot, "first")
    assert rows["kim@example.org"].status == "bounced" and "550" in rows["kim@example.org"].last_error
    async with bot.core.ctx.sessions() as session:
        reasons = (await session.execute(select(Suppression.email, Suppression.reason))).all()
    assert ("kim@example.org", "hard_bounce") in reasons
    smtp.handler.messages.clear()
    await send(bot, "second")
    await bot.settle()
    assert "kim@example.org" not in received(smtp) and len(received(smtp)) == 3


async def test_a_dropped_connection_reconnects_and_nobody_is_skipped(make_bot, smtp) -> None:  # type: ignore[no-untyped-def]
    bot = await make_bot()
    smtp.handler.drop_after = 2
    await send(bot, "drop")
    await bot.settle()
    got = received(smtp)
    assert set(got) == set(CONSENTED)
    assert sum(got.values()) - len(got) <= 1  # at most the one message in flight when it dropped
    assert {d.status for d in (await deliveries(bot, "drop")).values()} == {"sent"}


async def test_pause_stops_within_a_second_and_resume_finishes_without_repeats(make_bot, smtp) -> None:  # type: ignore[no-untyped-def]
    bot = await make_bot(rate_per_s=4, batch_size=2)
    await send(bot, "slow")
    await until(lambda: len(smtp.messages) >= 1)
    t0 = time.monotonic()
    reply = await bot.say(SENDER, "/campaign pause slow")
    assert "Paused" in reply
    await until(lambda: all(t.done() for t in bot.app.runs._runs.values()), timeout=2)
    assert time.monotonic() - t0 < 1.0
    stopped_at = len(smtp.messages)
    assert stopped_at < len(CONSENTED)
    assert await state_of(bot, "slow") == "paused"
    rows = await deliveries(bot, "slow")
    assert sum(d.status == "pending" for d in rows.values()) == len(CONSENTED) - stopped_at
    reply = await bot.say(SENDER, "/campaign resume slow")
    assert "Resumed" in reply
    await bot.settle()
    assert received(smtp) == Counter({e: 1 for e in CONSENTED})
    assert await state_of(bot, "slow") == "completed"


async def test_cancel_stops_the_send_for_good(make_bot, smtp) -> None:  # type: ignore[no-untyped-def]
    bot = await make_bot(rate_per_s=4, batch_size=4)
    await send(bot, "oops")
    await until(lambda: len(smtp.messages) >= 1)
    reply = await bot.say(APPROVER, "/campaign cancel oops")
    assert "Cancelled" in reply
    await bot.settle()
    count = len(smtp.messages)
    assert count < len(CONSENTED)
    rows = await deliveries(bot, "oops")
    assert sum(d.status == "cancelled" for d in rows.values()) == len(CONSENTED) - count
    assert not any(d.status in ("pending", "sending") for d in rows.values())
    reply = await bot.say(SENDER, "/campaign resume oops")
    assert "can't be" in reply


async def test_an_unsubscribe_mid_campaign_stops_the_next_message(make_bot, smtp) -> None:  # type: ignore[no-untyped-def]
    # One batch holds everyone, on one connection: the unsubscribe lands while that batch is being sent.
    # The second message is held at the server until the unsubscribe has had time (2 s, eight of the
    # engine's 0.25 s looks) to reach the engine, so a loaded machine can't send the last one first.
    raj_held = threading.Event()
    smtp.handler.hold["raj@example.net"] = raj_held
    bot = await make_bot({"connections": 1}, batch_size=10)
    await send(bot, "mid")
    await until(lambda: len(smtp.messages) >= 1)
    first = smtp.messages[0].message
    assert first["To"].addresses[0].addr_spec == "lena@example.com"
    async with bot.core.ctx.sessions() as session:
        cid = (await session.execute(select(Campaign.id).where(Campaign.name == "mid"))).scalar_one()
    token = bot.core.ctx.signer.sign("u", str(cid), "ode@example.com")
    async with web(bot) as client:
        done = await client.post(
            f"/u/{token}",
            content="List-Unsubscribe=One-Click",
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
    assert done.status_code == 200
    await asyncio.sleep(2)
    raj_held.set()
    await bot.settle()
    assert "ode@example.com" not in received(smtp)
    assert (await deliveries(bot, "mid"))["ode@example.com"].status == "suppressed"


async def test_an_unsubscribe_while_a_message_waits_for_its_rate_slot_stops_it(make_bot, smtp) -> None:  # type: ignore[no-untyped-def]
    # 0.5 messages a second over two connections: the last recipient (ode) is taken from the batch as the
    # second message goes out, then waits about 4 s for its slot. An unsubscribe in that wait must hold.
    bot = await make_bot(rate_per_s=0.5, batch_size=10)
    await send(bot, "slow")
    await until(lambda: len(smtp.messages) >= 2, timeout=30)
    assert "ode@example.com" not in received(smtp)
    async with bot.core.ctx.sessions() as session:
        cid = (await session.execute(select(Campaign.id).where(Campaign.name == "slow"))).scalar_one()
    token = bot.core.ctx.signer.sign("u", str(cid), "ode@example.com")
    async with web(bot) as client:
        done = await client.post(
            f"/u/{token}",
            content="List-Unsubscribe=One-Click",
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
    assert done.status_code == 200
    await bot.settle()
    assert "ode@example.com" not in received(smtp)
    assert (await deliveries(bot, "slow"))["ode@example.com"].status == "suppressed"


async def test_too_many_errors_pause_the_campaign_and_say_why_in_chat(make_bot, smtp) -> None:  # type: ignore[no-untyped-def]
    bot = await make_bot(error_min_samples=3, error_pause_share=0.5, max_attempts=5)
    for email in CONSENTED:
        smtp.handler.fail_rcpt[email] = [451] * 5
    await send(bot, "bad")
    await bot.settle()
    assert await state_of(bot, "bad") == "paused"
    said = [m.text for kind, conv, m in bot.console.transcript if conv == "approvals" and m.card is None]
    assert any("Paused by itself" in t and "451" in t for t in said), said


async def test_frequency_cap_skips_contacts_mailed_enough_this_period(make_bot, smtp) -> None:  # type: ignore[no-untyped-def]
    bot = await make_bot(frequency_cap=1, frequency_period_days=7)
    await send(bot, "one")
    await bot.settle()
    assert len(received(smtp)) == 4
    smtp.handler.messages.clear()
    await send(bot, "two")
    await bot.settle()
    assert smtp.messages == []
    assert {d.status for d in (await deliveries(bot, "two")).values()} == {"capped"}


async def test_tracked_links_redirect_only_when_signed(make_bot, smtp) -> None:  # type: ignore[no-untyped-def]
    bot = await make_bot()
    await send(bot, "tracked")
    await bot.settle()
    msg = smtp.handler.to("lena@example.com")[0]
    html = msg.message.get_body(("html",)).get_content()
    clicks = re.findall(r'href="http://127\.0\.0\.1:8080(/c/[^"]+)"', html)
    pixel = re.search(r'src="http://127\.0\.0\.1:8080(/o/[^"]+)"', html)
    assert clicks and pixel
    assert msg.mail_from.startswith("bounces+") and msg.mail_from.endswith("@corp.example")
    async with web(bot) as client:
        ok = await client.get(clicks[0])
        assert ok.status_code == 302 and ok.headers["location"].startswith("https://")
        body, mac = clicks[0].removeprefix("/c/").split(".")
        for bad in (
            f"/c/{body[:-2]}AA.{mac}",
            f"/c/{body}.{mac[:-2]}AA",
            "/c/" + Signer("another-secret-0123456789").sign("c", "1", "https://evil.example/"),
            "/c/" + bot.core.ctx.signer.sign("c", "1", "javascript:alert(1)"),
            "/c/%C3%A9" + clicks[0][4:],
            "/c/" + "A" * 5000,
        ):
            refused = await client.get(bad)
            assert refused.status_code == 400 and "location" not in refused.headers
        assert (await client.get(pixel.group(1))).status_code == 200
        assert (await client.get(pixel.group(1)[:-8] + "AAAA.gif")).status_code == 400
    async with bot.core.ctx.sessions() as session:
        kinds = (await session.execute(select(CampaignEvent.kind))).scalars().all()
    assert sorted(kinds) == ["click", "open"]
    reply = await bot.say(SENDER, "/campaign report tracked")
    assert "opens 1 of 4 delivered (25.0%); clicks 1 of 4 delivered (25.0%" in reply and "privacy" in reply
    assert "(picture saved: " in reply
    png = Path(reply.split("(picture saved: ")[1].split(" — ")[0])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


async def test_no_tracking_means_no_tracking_links(make_bot, smtp) -> None:  # type: ignore[no-untyped-def]
    bot = await make_bot()
    await send(bot, "quiet", "--no-tracking")
    await bot.settle()
    html = smtp.handler.to("lena@example.com")[0].message.get_body(("html",)).get_content()
    assert "/c/" not in html and "/o/" not in html and "/u/" in html


async def test_a_scheduled_start_survives_a_restart(make_bot, smtp, tmp_path) -> None:  # type: ignore[no-untyped-def]

    bot = await make_bot()
    at = (datetime.now(UTC) + timedelta(seconds=3)).isoformat(timespec="seconds")
    await bot.say(SENDER, "/campaign new later --to customers --template welcome")
    reply = await bot.say(SENDER, f"/campaign submit later --at {at}")
    assert "It starts at" in reply
    reply = await bot.say(APPROVER, "/approve later")
    assert "it starts at" in reply
    status = await bot.say(SENDER, "/campaign status later")
    assert "scheduled" in status and "persistent schedule" in status
    await bot.app.close()  # the process stops before the start time
    assert smtp.messages == []
    again = await make_bot()
    scheduler = again.app.scheduler
    await scheduler.start(run_jobs=True)
    assert scheduler.next_run("campaign-start-1") is not None
    await until(lambda: len(smtp.messages) >= 4, timeout=20)
    await again.settle()
    assert received(smtp) == Counter({e: 1 for e in CONSENTED})


async def test_bad_start_times_are_refused(make_bot, smtp) -> None:  # type: ignore[no-untyped-def]
    bot = await make_bot()
    await bot.say(SENDER, "/campaign new when --to customers --template welcome")
    for bad, says in (
        ("tomorrow", "not an ISO 8601"),
        ("2030-01-01T09:00:00", "no offset"),
        ("2020-01-01T09:00:00+00:00", "in the past"),
    ):
        reply = await bot.say(SENDER, f"/campaign submit when --at {bad}")
        assert says in reply and "Usage:" in reply
    assert await state_of(bot, "when") == "draft"


async def test_two_approvers_are_needed_when_configured(make_bot, smtp) -> None:  # type: ignore[no-untyped-def]
    bot = await make_bot(required_approvals=2)
    await bot.say(SENDER, "/campaign new pair --to customers --template welcome")
    await bot.say(SENDER, "/campaign submit pair")
    reply = await bot.say(APPROVER, "/approve pair")
    assert "1 of 2" in reply
    assert "already decided" in await bot.say(APPROVER, "/approve pair")
    await bot.settle()
    assert smtp.messages == []
    reply = await bot.say(APPROVER2, "/approve pair")
    assert "sending has started" in reply
    await bot.settle()
    assert len(received(smtp)) == 4
    card = bot.cards()[-1].card
    assert any(name == "Approvals" and "2 of 2" in value for name, value in card.fields)
    assert any(name == "Progress" and value.startswith("4/4") for name, value in card.fields)


async def test_privacy_export_and_erase(make_bot, smtp, tmp_path) -> None:  # type: ignore[no-untyped-def]
    bot = await make_bot()
    await send(bot, "before")
    await bot.settle()
    reply = await bot.say(ADMIN, "/privacy export lena@example.com")
    assert "Lena Fischer" in reply and "signup form" in reply and "before: sent" in reply
    assert "is for admins" in await bot.say(SENDER, "/privacy erase lena@example.com")
    reply = await bot.say(ADMIN, "/privacy erase lena@example.com --confirm")
    assert "Erased lena@example.com" in reply
    async with bot.core.ctx.sessions() as session:
        assert (
            await session.execute(select(Contact).where(Contact.email == "lena@example.com"))
        ).first() is None
        sup = (await session.execute(select(Suppression))).scalars().all()
        left = (await session.execute(select(Delivery.email))).scalars().all()
    assert [(s.email, s.reason) for s in sup] == [(None, "erased")]
    assert "lena@example.com" not in left
    report = await import_contacts(bot.core.ctx, tmp_path / "contacts.csv", "customers")
    assert report.erased_skipped == 1
    assert "not a valid email" in await bot.say(ADMIN, "/privacy erase not-an-address@")


async def _approved_campaign(bot: ChatBot, tmp_path: Path, n: int) -> int:
    """A campaign to n consented contacts, approved, not yet started (the engine is driven by hand)."""
    from bot.campaigns import service
    from bot.db.models import Approval

    rows = "".join(f"p{i}@example.com,P {i},2026-01-01T00:00:00+00:00,form,C{i}\n" for i in range(n))
    path = tmp_path / "many.csv"
    path.write_text("email,name,consent_at,consent_source,company\n" + rows)
    await import_contacts(bot.core.ctx, path, "many")
    await bot.say(SENDER, "/campaign new shared --to many --template welcome")
    await bot.say(SENDER, "/campaign submit shared")
    async with bot.core.ctx.sessions() as session, session.begin():
        campaign = (await session.execute(select(Campaign).where(Campaign.name == "shared"))).scalar_one()
        session.add(
            Approval(
                campaign_id=campaign.id,
                submission=campaign.submission,
                approver=APPROVER,
                decision="approved",
                content_hash=service.current_hash(bot.core.ctx, campaign),
                expires_at=datetime.now(UTC) + timedelta(hours=1),
            )
        )
        assert await service.transition(session, campaign.id, ("pending_approval",), "approved")
        return campaign.id


async def test_two_workers_share_a_campaign_without_sending_twice(make_bot, smtp, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from bot.campaigns.engine import DeliveryEngine, EngineOptions

    bot = await make_bot()
    cid = await _approved_campaign(bot, tmp_path, 40)
    options = EngineOptions.from_settings(bot.core.ctx.settings, batch_size=3)
    a = DeliveryEngine(bot.core.ctx, options=options, worker_id="worker-a")
    b = DeliveryEngine(bot.core.ctx, options=options, worker_id="worker-b")
    assert await a.start(cid) == "sending"
    results = await asyncio.gather(a.run(cid), b.run(cid))
    assert {r.state for r in results} <= {"completed", "sending"} and await state_of(
        bot, "shared"
    ) == "completed"
    got = received(smtp)
    assert len(got) == 40 and set(got.values()) == {1}
    assert a.sent_total > 0 and b.sent_total > 0 and a.sent_total + b.sent_total == 40


async def test_a_dead_workers_batch_is_claimed_again_when_its_lease_runs_out(
    make_bot, smtp, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    from bot.campaigns.engine import DeliveryEngine, EngineOptions

    bot = await make_bot()
    cid = await _approved_campaign(bot, tmp_path, 10)
    options = EngineOptions.from_settings(bot.core.ctx.settings, batch_size=4, lease_s=0.3)
    dead = DeliveryEngine(bot.core.ctx, options=options, worker_id="dead")
    assert await dead.start(cid) == "sending"
    claimed = await dead._claim(cid)  # claimed, then the process "dies" without sending or recording
    assert len(claimed) == 4
    alive = DeliveryEngine(bot.core.ctx, options=options, worker_id="alive")
    result = await asyncio.wait_for(alive.run(cid), 20)
    assert result.state == "completed"
    assert received(smtp) == Counter({f"p{i}@example.com": 1 for i in range(10)})
    rows = await deliveries(bot, "shared")
    assert {d.claimed_by for d in rows.values()} == {"alive"}


async def test_submit_needs_an_unsubscribe_link_and_the_postal_address(make_bot, smtp) -> None:  # type: ignore[no-untyped-def]
    bot = await make_bot()
    templates = Path(bot.core.ctx.settings.campaigns.templates_dir)
    (templates / "bare.html").write_text("<html><body><p>Hello {{ first_name }}</p></body></html>")
    await bot.say(SENDER, '/campaign new bare --to customers --template bare --subject "Hi"')
    reply = await bot.say(SENDER, "/campaign submit bare")
    assert "can't be submitted" in reply and "unsubscribe link" in reply and "postal address" in reply
    assert await state_of(bot, "bare") == "draft"
    assert "no report until it is sent" in await bot.say(SENDER, "/campaign report bare")
    assert "There is no campaign" in await bot.say(SENDER, "/campaign report nope")
    assert "needs a name" in await bot.say(SENDER, "/campaign report")
    assert "on or off" in await bot.say(SENDER, "/campaign edit bare --tracking maybe")


class SlowServerHandler(RecordingHandler):
    """Takes a moment over each message and notes how many were in flight per recipient domain."""

    def __init__(self) -> None:
        super().__init__()
        self.in_flight: Counter[str] = Counter()
        self.peak: Counter[str] = Counter()

    async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
        domain = envelope.rcpt_tos[0].rsplit("@", 1)[-1]
        self.in_flight[domain] += 1
        self.peak[domain] = max(self.peak[domain], self.in_flight[domain])
        await asyncio.sleep(0.1)  # the server being slow, so that sends overlap
        self.in_flight[domain] -= 1
        return await super().handle_DATA(server, session, envelope)


@pytest.mark.parametrize("per_domain", [1, 0])
async def test_connections_per_domain_limits_messages_in_flight_to_one_domain(make_bot, per_domain) -> None:  # type: ignore[no-untyped-def]
    from aiosmtpd.controller import Controller

    handler = SlowServerHandler()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port, decode_data=False)
    controller.start()
    try:
        bot = await make_bot(smtp_section={"port": port, "connections": 4}, connections_per_domain=per_domain)
        await send(bot, "spread")
        await bot.settle()
    finally:
        controller.stop()
    assert sorted(r for m in handler.messages for r in m.rcpt_tos) == sorted(CONSENTED)
    # lena@ and ode@ share example.com: one at a time with the limit, together without it.
    assert handler.peak["example.com"] == (1 if per_domain else 2)
