"""The (platform, user id) → email mapping kept in the `identities` table: the core's directory port.

The core caches what `Adapter.resolve` answers here (`identify`, used by Core.identify); directory
adapters (Slack, DingTalk, WeCom) also record what their directory events tell them, through the
`Directory` port (bot/adapter.py), because a person who has left can no longer be looked up. An
entry older than `TTL` is resolved again, so roles follow an address change even when no directory
event arrived.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import async_sessionmaker

from bot.addresses import normalise
from bot.db.models import Identity, Person, utcnow
from bot.db.upsert import insert_ignore
from bot.values import clean_text

TTL = timedelta(hours=1)  # how long a resolved address is trusted without asking the directory again
Resolver = Callable[[], Awaitable[tuple[str | None, str | None] | None]]


def _aware(at: datetime | None) -> datetime | None:
    return at.replace(tzinfo=UTC) if at is not None and at.tzinfo is None else at


class Identities:
    def __init__(self, sessions: async_sessionmaker, *, ttl: timedelta = TTL):
        self.sessions = sessions
        self.ttl = ttl

    async def remember(self, platform: str, user_id: str, email: str, name: str | None = None) -> None:
        """Record or refresh who `user_id` is; the newest email wins."""
        email = normalise(email, existing=True)
        # A messenger's directory: nobody can correct it through Postroom, so it is cleaned, not refused.
        name = (clean_text(name)[:200] or None) if name is not None else None
        async with self.sessions() as session, session.begin():
            row = {
                "platform": platform,
                "user_id": user_id,
                "email": email,
                "name": name,
                "updated_at": utcnow(),
            }
            if not await insert_ignore(session, Identity, [row], ["platform", "user_id"]):
                values: dict[str, object] = {"email": email, "updated_at": utcnow()}
                if name:
                    values["name"] = name
                await session.execute(
                    update(Identity)
                    .where(Identity.platform == platform, Identity.user_id == user_id)
                    .values(**values)
                )

    async def known(self, platform: str, user_id: str) -> tuple[str, str | None] | None:
        """The (email, name) last recorded for `user_id`, or None."""
        async with self.sessions() as session:
            row = (
                await session.execute(
                    select(Identity.email, Identity.name).where(
                        Identity.platform == platform, Identity.user_id == user_id
                    )
                )
            ).first()
        return (row.email, row.name) if row else None

    async def unmapped(self, platform: str) -> list[str]:
        """Emails of active people whose user id on `platform` is not recorded yet."""
        async with self.sessions() as session:
            mapped = select(Identity.email).where(Identity.platform == platform)
            rows = await session.execute(
                select(Person.email)
                .where(Person.status == "active", Person.email.not_in(mapped))
                .order_by(Person.email)
            )
            return list(rows.scalars())

    async def identify(self, platform: str, user_id: str, resolve: Resolver) -> str | None:
        """The email of `user_id`: the cached one while it is younger than the TTL, else `resolve()`'s
        answer (recorded). None when neither the cache nor the directory has an address."""
        async with self.sessions() as session:
            row = (
                await session.execute(
                    select(Identity.email, Identity.updated_at).where(
                        Identity.platform == platform, Identity.user_id == user_id
                    )
                )
            ).first()
        if row is not None:
            at = _aware(row.updated_at)
            if at is not None and at > utcnow() - self.ttl:
                return str(row.email)
        found = await resolve()
        if not found or not found[0]:
            return None
        await self.remember(platform, user_id, found[0], found[1])
        return normalise(found[0], existing=True)
