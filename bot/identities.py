"""The (platform, user id) → email mapping kept in the `identities` table.

The core caches what `Adapter.resolve` answers here; directory adapters (DingTalk, WeCom) also write
what their address-book events tell them, because a person who has left can no longer be looked up.
"""

from __future__ import annotations

from sqlalchemy import select, update

from bot.addresses import normalise
from bot.context import Context
from bot.db.models import Identity, utcnow
from bot.db.upsert import insert_ignore


async def remember(ctx: Context, platform: str, user_id: str, email: str, name: str | None = None) -> None:
    """Record or refresh who `user_id` is; the newest email wins."""
    email = normalise(email)
    async with ctx.sessions() as session, session.begin():
        fresh = await insert_ignore(session, Identity, [{"platform": platform, "user_id": user_id, "email": email,
                                                         "name": name, "updated_at": utcnow()}],
                                    ["platform", "user_id"])
        if not fresh:
            values: dict[str, object] = {"email": email, "updated_at": utcnow()}
            if name:
                values["name"] = name
            await session.execute(update(Identity).where(Identity.platform == platform, Identity.user_id == user_id)
                                  .values(**values))


async def known(ctx: Context, platform: str, user_id: str) -> tuple[str, str | None] | None:
    """The (email, name) last recorded for `user_id`, or None."""
    async with ctx.sessions() as session:
        row = (await session.execute(select(Identity.email, Identity.name)
                                     .where(Identity.platform == platform, Identity.user_id == user_id))).first()
    return (row.email, row.name) if row else None
