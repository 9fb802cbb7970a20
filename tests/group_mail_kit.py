"""Helpers for the group-mail tests: wait (with a bound) for the fan-out to finish, read the post store."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from sqlalchemy import select

from bot.app import App
from bot.db.models import GroupPost, GroupPostDelivery


async def until(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def fanned_out(app: App, timeout: float = 30.0) -> list[GroupPost]:
    """Every post stored so far has left `sending`; returns the posts."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        async with app.ctx.sessions() as session:
            posts = list((await session.execute(select(GroupPost).order_by(GroupPost.id))).scalars())
        if all(p.state != "sending" for p in posts):
            return posts
        if loop.time() > deadline:
            raise AssertionError(f"posts still sending: {[p.id for p in posts if p.state == 'sending']}")
        await asyncio.sleep(0.05)


async def deliveries(app: App, post_id: int) -> dict[str, str]:
    async with app.ctx.sessions() as session:
        rows = await session.execute(
            select(GroupPostDelivery.email, GroupPostDelivery.status).where(
                GroupPostDelivery.post_id == post_id
            )
        )
        return {email: status for email, status in rows}
