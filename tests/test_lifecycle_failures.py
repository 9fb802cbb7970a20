"""A step that fails is retried and reported; a leaver is never left behind because of it."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from bot.db.models import AuditEntry
from tests.lifecycle_kit import groups_of, hr_event, lifecycle_bot, post_event, web_client

IVAN = "ivan@corp.example"


@pytest.fixture
async def lbot(database_url, smtp, tmp_path):  # type: ignore[no-untyped-def]
    async for b in lifecycle_bot(database_url, smtp.port, tmp_path):
        yield b


async def test_a_failed_leaver_removal_is_reported_and_retried(lbot) -> None:  # type: ignore[no-untyped-def]
    async with web_client(lbot) as client:
        r = await post_event(
            client, hr_event("joined", "f1", "E1", IVAN, "2026-11-02T09:00:00Z", department="Engineering")
        )
        assert r.status_code == 200
        # The audit table disappears: every write of the leaver's removal fails.
        async with lbot.core.ctx.engine.begin() as conn:
            await conn.execute(text("DROP TABLE audit"))
        r = await post_event(client, hr_event("left", "f2", "E1", IVAN, "2026-11-05T09:00:00Z"))
    assert r.status_code == 503 and "send it again later" in r.json()["error"]
    assert (
        "Removing leaver ivan@corp.example from their groups failed; I will try again in a minute."
        in lbot.out.getvalue()
    )
    assert set(await groups_of(lbot, IVAN)) == {"all-staff", "eng"}  # rolled back whole, event not consumed
    async with lbot.core.ctx.sessions() as s:
        ids = (await s.execute(text("SELECT event_id FROM processed_events"))).scalars().all()
    assert "f2" not in ids

    async with lbot.core.ctx.engine.begin() as conn:
        await conn.run_sync(lambda c: AuditEntry.__table__.create(c))
    # the stored retry, as the scheduler runs it a minute later
    await lbot.app.scheduler.run_now("hr.retry:hr-webhook:f2")
    assert await groups_of(lbot, IVAN) == {}
    assert (
        "ivan@corp.example left: removed from all-staff@corp.example, eng@corp.example."
        in lbot.out.getvalue()
    )
