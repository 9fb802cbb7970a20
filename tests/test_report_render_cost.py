"""What a report link costs the server is bounded (issue 15): the chart and the page are built once
per campaign and language for a short while, concurrent requests share that one render, a HEAD
renders nothing, and past the global cap a request gets 503 with Retry-After and a sentence."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from bot.campaigns.report import REPORT_KIND
from bot.campaigns.report_cache import RenderCache
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
    found = bot.core.ctx.extras["report_renders"]
    assert isinstance(found, RenderCache)
    return found


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
        assert cache.renders == 1  # one draw for six requests
        assert (await client.get(path + "/chart.png")).content == got[0].content and cache.renders == 1
        page = await client.get(path)
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
        assert chart.status_code == 503 and chart.headers["retry-after"] == "5"
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
