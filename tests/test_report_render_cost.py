"""What a report link costs the server is bounded (issue 15): the chart and the page are built once
per campaign and language for a short while, concurrent requests share that one render, a HEAD
renders nothing, and past the global cap a request gets 503 with Retry-After and a sentence."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import event

from bot.campaigns.report import REPORT_KIND
from bot.campaigns.report_cache import Busy, RenderCache, report_renders
from bot.db.models import Campaign, Delivery
from tests.audience_kit import web
from tests.conftest import SENDER

T0 = datetime(2026, 12, 1, 9, 0, 0, tzinfo=UTC)


async def make_campaign(bot, deliveries: int) -> str:  # type: ignore[no-untyped-def]
    """A sent campaign written straight into the database; its report path."""
    ctx = bot.core.ctx
    async with ctx.sessions() as session, session.begin():
        campaign = Campaign(
            name="bulk",
            state="completed",
            template="welcome",
            subject="Hi",
            audience_kind="list",
            audience_name="customers",
            from_address=SENDER,
            created_by=SENDER,
            started_at=T0,
            finished_at=T0 + timedelta(minutes=30),
        )
        session.add(campaign)
        await session.flush()
        session.add_all(
            Delivery(
                campaign_id=campaign.id,
                email=f"p{i}@example.com",
                status="sent",
                sent_at=T0 + timedelta(seconds=i % 1800),
            )
            for i in range(deliveries)
        )
        cid = campaign.id
    token = ctx.signer.sign_expiring(REPORT_KIND, str(cid), ttl_s=3600)
    return f"/report/{token}"


def renders_of(bot) -> RenderCache:  # type: ignore[no-untyped-def]
    return report_renders(bot.core.ctx)


async def test_concurrent_chart_requests_share_one_render_and_head_renders_nothing(bot) -> None:  # type: ignore[no-untyped-def]
    path = await make_campaign(bot, 50)
    async with web(bot) as client:
        cache = renders_of(bot)
        head = await client.head(path + "/chart.png")
        assert head.status_code == 200 and cache.renders == 0
        assert (await client.head(path)).status_code == 200 and cache.renders == 0
        got = await asyncio.gather(*(client.get(path + "/chart.png") for _ in range(6)))
        assert {r.status_code for r in got} == {200}
        assert len({r.content for r in got}) == 1 and got[0].content[:4] == b"\x89PNG"
        assert cache.renders == 2  # one build of the figures and one draw for six requests
        assert (await client.get(path + "/chart.png")).content == got[0].content and cache.renders == 2
        page = await client.get(path)  # the page reuses the chart's figures
        assert page.status_code == 200 and "sent 50" in page.text and cache.renders == 2
        assert (await client.get(path)).status_code == 200 and cache.renders == 2


async def test_past_the_render_cap_a_request_is_told_to_come_back(bot) -> None:  # type: ignore[no-untyped-def]
    path = await make_campaign(bot, 5)
    async with web(bot) as client:
        cache = renders_of(bot)
        release = asyncio.Event()

        async def slow() -> None:
            await release.wait()

        holders = [asyncio.create_task(cache.get(("elsewhere", n), slow)) for n in range(cache.max_renders)]
        await asyncio.sleep(0)
        chart = await client.get(path + "/chart.png")
        assert chart.status_code == 503 and int(chart.headers["retry-after"]) >= 1
        assert "try again in a few seconds" in chart.text
        page = await client.get(path)
        assert page.status_code == 503 and "try again in a few seconds" in page.text
        release.set()
        await asyncio.gather(*holders)
        assert (await client.get(path + "/chart.png")).status_code == 200


async def test_the_cached_report_expires(bot) -> None:  # type: ignore[no-untyped-def]
    cache = RenderCache(ttl_s=0.05)
    made: list[datetime] = []

    async def make() -> int:
        made.append(datetime.now(UTC))
        return len(made)

    assert await cache.get("k", make) == 1 and await cache.get("k", make) == 1
    await asyncio.sleep(0.06)
    assert await cache.get("k", make) == 2


async def test_the_page_and_its_chart_share_one_build_of_the_report(bot) -> None:  # type: ignore[no-untyped-def]
    """README: the report is built once for the page and its chart, not once for each."""
    path = await make_campaign(bot, 20)
    engine = bot.core.ctx.engine.sync_engine
    statements: list[str] = []

    def seen(conn, cursor, statement, parameters, context, executemany) -> None:  # type: ignore[no-untyped-def]
        statements.append(statement)

    async with web(bot) as client:
        page = await client.get(path)
        assert page.status_code == 200 and "sent 20" in page.text
        event.listen(engine, "before_cursor_execute", seen)
        try:
            chart = await client.get(path + "/chart.png")
        finally:
            event.remove(engine, "before_cursor_execute", seen)
    assert chart.status_code == 200 and chart.content[:4] == b"\x89PNG"
    assert statements and not [s for s in statements if "deliveries" in s or "campaign_events" in s]


async def test_retry_after_comes_from_how_long_renders_take(bot) -> None:  # type: ignore[no-untyped-def]
    path = await make_campaign(bot, 5)
    cache = renders_of(bot)
    now = [1000.0]
    cache.clock = lambda: now[0]

    async def twelve_seconds() -> None:
        now[0] += 12.0

    await cache.get("measured", twelve_seconds)  # a render that took 12 s
    release = asyncio.Event()

    async def held() -> None:
        await release.wait()

    holders = [asyncio.create_task(cache.get(("elsewhere", n), held)) for n in range(cache.max_renders)]
    await asyncio.sleep(0)
    now[0] += 3.0  # they have run 3 s: a slot is likely free in 9
    async with web(bot) as client:
        chart = await client.get(path + "/chart.png")
        page = await client.get(path)
    assert chart.status_code == page.status_code == 503
    assert chart.headers["retry-after"] == page.headers["retry-after"] == "9"
    release.set()
    await asyncio.gather(*holders)


async def test_a_cancelled_first_requester_leaves_the_render_to_the_others() -> None:
    cache = RenderCache()
    release = asyncio.Event()
    made = 0

    async def make() -> str:
        nonlocal made
        made += 1
        await release.wait()
        return "chart"

    first = asyncio.create_task(cache.get("k", make))
    await asyncio.sleep(0)
    second = asyncio.create_task(cache.get("k", make))
    await asyncio.sleep(0)
    first.cancel()  # its client went away
    await asyncio.sleep(0)
    release.set()
    assert await second == "chart"
    assert first.cancelled() and made == 1
    assert await cache.get("k", make) == "chart" and made == 1  # kept for the next
    assert cache.active == 0


async def test_a_render_that_fails_fails_for_every_waiter_and_frees_its_slot() -> None:
    cache = RenderCache(max_renders=1)
    go = asyncio.Event()

    async def broken() -> str:
        await go.wait()
        raise RuntimeError("no")

    waiters = [asyncio.create_task(cache.get("k", broken)) for _ in range(3)]
    await asyncio.sleep(0)
    try:
        await cache.get("other", broken)
    except Busy as exc:
        assert exc.retry_after_s >= 1
    else:
        raise AssertionError("the one slot was taken: Busy expected")
    go.set()
    got = await asyncio.gather(*waiters, return_exceptions=True)
    assert all(isinstance(e, RuntimeError) for e in got) and cache.active == 0


async def test_chat_reports_wait_for_the_same_render_cap(bot, tmp_path) -> None:  # type: ignore[no-untyped-def]
    await make_campaign(bot, 5)
    cache = renders_of(bot)
    folder = Path(bot.core.ctx.settings.campaigns.reports_dir)
    release = asyncio.Event()

    async def held() -> None:
        await release.wait()

    holders = [asyncio.create_task(cache.get(("elsewhere", n), held)) for n in range(cache.max_renders)]
    await asyncio.sleep(0)
    bot.console.as_email = SENDER
    reply = await bot.console.say("/campaign report bulk")
    assert "sent 5, delivered 5" in reply.text  # the figures go now…
    assert (
        not reply.images and "The chart is not attached: too many reports" in reply.text
    )  # …the chart waits
    assert not (folder.exists() and list(folder.glob("*.png")))  # nothing drawn
    release.set()
    await asyncio.gather(*holders)
    reply = await bot.console.say("/campaign report bulk")
    assert len(reply.images) == 1 and "not attached" not in reply.text
