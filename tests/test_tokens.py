"""bot/tokens.py: the token cache the WeCom and DingTalk clients share (review 21)."""

from __future__ import annotations

import asyncio

import pytest

from bot.tokens import StaleToken, TokenCache


async def test_token_cache_fetches_once_refreshes_early_and_retries_a_refused_token_once() -> None:
    now = [0.0]
    issued: list[str] = []

    async def fetch() -> tuple[str, float]:
        await asyncio.sleep(0)
        issued.append(f"t{len(issued) + 1}")
        return issued[-1], 7200.0

    cache = TokenCache(fetch, clock=lambda: now[0], margin_s=300)
    assert await asyncio.gather(*(cache.get() for _ in range(5))) == ["t1"] * 5  # one fetch for all
    now[0] = 7200 - 301
    assert await cache.get() == "t1"
    now[0] = 7200 - 299  # inside the margin: fetched again before it expires
    assert await cache.get() == "t2" and cache.fetches == 2

    refused = {"t2"}

    async def call(token: str) -> str:
        if token in refused:
            raise StaleToken(RuntimeError(f"{token} refused"))
        return f"done with {token}"

    assert await cache.call(call) == "done with t3"
    refused.update({"t3", "t4"})
    with pytest.raises(RuntimeError, match="t4 refused"):  # refused twice: the platform's error, no loop
        await cache.call(call)
    assert issued == ["t1", "t2", "t3", "t4"]
