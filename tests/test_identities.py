"""Review 13: one identities cache (bot/identities.py) with a TTL: a fresh entry answers without the
directory, an entry older than the TTL is resolved again and the newer address recorded."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import update

from bot import identities
from bot.db.models import Identity, utcnow


async def test_identify_uses_fresh_entries_and_re_resolves_old_ones(bot) -> None:  # type: ignore[no-untyped-def]
    ctx = bot.core.ctx
    ids = bot.app.identities
    directory = {"U1": ("Carl@Corp.example", "Carl")}
    asked: list[str] = []

    async def resolve() -> tuple[str | None, str | None] | None:
        asked.append("U1")
        return directory.get("U1")

    assert await ids.identify("chat", "U1", resolve) == "carl@corp.example"
    directory["U1"] = ("carl.new@corp.example", "Carl")
    assert await ids.identify("chat", "U1", resolve) == "carl@corp.example"  # cached, fresh
    assert asked == ["U1"]
    async with ctx.sessions() as session, session.begin():
        await session.execute(
            update(Identity)
            .where(Identity.user_id == "U1")
            .values(updated_at=utcnow() - identities.TTL - timedelta(minutes=1))
        )
    assert await ids.identify("chat", "U1", resolve) == "carl.new@corp.example"
    assert asked == ["U1", "U1"]
    assert await ids.known("chat", "U1") == ("carl.new@corp.example", "Carl")
    assert await ids.identify("chat", "U1", resolve) == "carl.new@corp.example"
    assert asked == ["U1", "U1"]  # refreshed: fresh again

    async def nobody() -> None:
        return None

    assert await ids.identify("chat", "U2", nobody) is None
