"""Fixed-window counters in the database (`rate_counts`): every `postroom serve` process behind a load
balancer counts against the same limit, which memory in one process could not do."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, select, update

from bot.context import Context
from bot.db.models import RateCount
from bot.db.upsert import insert_ignore


def window_start(now: datetime, window_s: int) -> datetime:
    epoch = int(now.timestamp())
    return datetime.fromtimestamp(epoch - epoch % window_s, UTC)


def seconds_left(now: datetime, window_s: int) -> int:
    """Seconds until the window holding `now` ends (a 429's Retry-After), at least 1."""
    return max(1, int((window_start(now, window_s) + timedelta(seconds=window_s) - now).total_seconds()))


async def hit(ctx: Context, key: str, window_s: int) -> int:
    """Count one hit for `key` in the current window, in its own transaction (a refused request still
    counts); returns the hits so far in this window, this one included."""
    start = window_start(ctx.now(), window_s)
    key = key[:200]
    async with ctx.sessions() as session, session.begin():
        await insert_ignore(
            session, RateCount, [{"key": key, "window_start": start, "count": 0}], ["key", "window_start"]
        )
        await session.execute(
            update(RateCount)
            .where(RateCount.key == key, RateCount.window_start == start)
            .values(count=RateCount.count + 1)
            .execution_options(synchronize_session=False)
        )
        return (
            await session.execute(
                select(RateCount.count).where(RateCount.key == key, RateCount.window_start == start)
            )
        ).scalar_one()


async def peek(ctx: Context, key: str, window_s: int) -> int:
    start = window_start(ctx.now(), window_s)
    async with ctx.sessions() as session:
        return (
            await session.execute(
                select(RateCount.count).where(RateCount.key == key[:200], RateCount.window_start == start)
            )
        ).scalar() or 0


async def forget_before(ctx: Context, days: int = 2) -> None:
    async with ctx.sessions() as session, session.begin():
        await session.execute(
            delete(RateCount).where(RateCount.window_start < ctx.now() - timedelta(days=days))
        )
