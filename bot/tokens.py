"""A platform access token held by an API client: fetched on demand (one fetch at a time), kept until
shortly before it expires, and fetched again once when the platform says the token is no longer good.

Platform-neutral: the WeCom and DingTalk clients (which must not import each other) both use it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")
REFRESH_MARGIN_S = 300  # refetch this long before the token expires


class StaleToken(Exception):
    """Raised by a call that the platform refused because of the token; `error` is what to raise if a
    freshly fetched token is refused too."""

    def __init__(self, error: Exception):
        super().__init__(str(error))
        self.error = error


class TokenCache:
    def __init__(
        self,
        fetch: Callable[[], Awaitable[tuple[str, float]]],
        *,
        clock: Callable[[], float] = time.monotonic,
        margin_s: float = REFRESH_MARGIN_S,
    ):
        """`fetch()` answers (token, lifetime in seconds)."""
        self._fetch = fetch
        self._clock = clock
        self._margin = margin_s
        self._token: str | None = None
        self._expires_at = 0.0
        self._lock = asyncio.Lock()
        self.fetches = 0

    @property
    def current(self) -> str | None:
        return self._token

    async def get(self) -> str:
        async with self._lock:
            if self._token and self._clock() < self._expires_at - self._margin:
                return self._token
            token, lifetime = await self._fetch()
            self.fetches += 1
            self._token = token
            self._expires_at = self._clock() + lifetime
            return token

    def forget(self, token: str) -> None:
        if self._token == token:
            self._token = None

    async def call(self, attempt: Callable[[str], Awaitable[T]]) -> T:
        """`attempt(token)`; when it raises StaleToken the token is dropped and the call made once more
        with a fresh one (a second StaleToken raises its error)."""
        token = await self.get()
        try:
            return await attempt(token)
        except StaleToken:
            self.forget(token)
        token = await self.get()
        try:
            return await attempt(token)
        except StaleToken as exc:
            raise exc.error from None
