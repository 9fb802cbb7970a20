"""The send snapshot in chunks of the audience's key: the first with the start, the rest written while the
first messages leave; each recipient once, through a cut-off snapshot, two workers, and later additions."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sqlalchemy import func, select

from bot.campaigns.engine import DeliveryEngine, EngineOptions
from bot.contacts.importer import import_contacts
from bot.db.models import Campaign, Delivery
from tests.test_campaign_delivery import _approved_campaign, make_bot, received, state_of

__all__ = ["make_bot"]  # the fixture, used by name

SMALL = {"snapshot_first_keys": 8, "snapshot_chunk_keys": 7, "batch_size": 5}


async def _snapshot_state(bot, cid: int) -> tuple[int, int | None]:  # type: ignore[no-untyped-def]
    async with bot.core.ctx.sessions() as session:
        rows = (await session.execute(select(func.count()).where(Delivery.campaign_id == cid))).scalar_one()
        after = (
            await session.execute(select(Campaign.snapshot_after).where(Campaign.id == cid))
        ).scalar_one()
    return rows, after


async def test_the_first_chunk_comes_with_the_start_and_the_rest_while_sending(
    make_bot,
    smtp,
    tmp_path: Path,
) -> None:  # type: ignore[no-untyped-def]
    bot = await make_bot()
    cid = await _approved_campaign(bot, tmp_path, 40)
    engine = DeliveryEngine(bot.core.ctx, options=EngineOptions.from_settings(bot.core.ctx.settings, **SMALL))
    assert await engine.start(cid) == "sending"
    rows, after = await _snapshot_state(bot, cid)
    assert rows < 40 and after == 8  # only the contacts with ids up to 8 so far (5 from the fixture's list)
    result = await asyncio.wait_for(engine.run(cid), 60)
    assert result.state == "completed" and await state_of(bot, "shared") == "completed"
    got = received(smtp)
    assert len(got) == 40 and set(got.values()) == {1}
    assert await _snapshot_state(bot, cid) == (40, None)


async def test_a_snapshot_cut_off_half_way_is_finished_once_by_the_next_run_and_later_contacts_stay_out(
    make_bot,
    smtp,
    tmp_path: Path,
) -> None:  # type: ignore[no-untyped-def]
    bot = await make_bot()
    cid = await _approved_campaign(bot, tmp_path, 30)
    options = EngineOptions.from_settings(bot.core.ctx.settings, **SMALL)
    first = DeliveryEngine(bot.core.ctx, options=options, worker_id="dead")
    assert await first.start(cid) == "sending"  # then this process "dies": nothing sent, the rest unwritten
    # Someone joins the list after the start: a larger contact id than the audience had, not in this send.
    late = tmp_path / "late.csv"
    late.write_text(
        "email,name,consent_at,consent_source,company\nlate@example.com,Late,2026-01-01T00:00:00+00:00,form,L\n"
    )
    await import_contacts(bot.core.ctx, late, "many")
    second = DeliveryEngine(bot.core.ctx, options=options, worker_id="alive")
    result = await asyncio.wait_for(second.run(cid), 60)
    assert result.state == "completed"
    got = received(smtp)
    assert len(got) == 30 and set(got.values()) == {1} and "late@example.com" not in got


async def test_two_workers_writing_one_snapshot_send_each_recipient_once(
    make_bot,
    smtp,
    tmp_path: Path,
) -> None:  # type: ignore[no-untyped-def]
    bot = await make_bot()
    cid = await _approved_campaign(bot, tmp_path, 60)
    options = EngineOptions.from_settings(bot.core.ctx.settings, **{**SMALL, "snapshot_chunk_keys": 3})
    a = DeliveryEngine(bot.core.ctx, options=options, worker_id="worker-a")
    b = DeliveryEngine(bot.core.ctx, options=options, worker_id="worker-b")
    assert await a.start(cid) == "sending"
    results = await asyncio.wait_for(asyncio.gather(a.run(cid), b.run(cid)), 90)
    assert {r.state for r in results} <= {"completed", "sending"} and await state_of(
        bot, "shared"
    ) == "completed"
    got = received(smtp)
    assert len(got) == 60 and set(got.values()) == {1}
    assert await _snapshot_state(bot, cid) == (60, None)
