"""What the report page and its chart cost the server, bounded: a built report (figures or PNG) is kept
for `TTL_S` per key (campaign id, language, what), concurrent requests for the same key wait for the one
render under way (single flight), and at most `MAX_RENDERS` renders run at once across all keys —
past that a request is told to come back (`Busy`), so a burst of chart requests can't stall the event
loop or fill memory.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Any

TTL_S = 60.0
MAX_RENDERS = 2
MAX_KEPT = 64  # built reports kept at most (the oldest go first)


class Busy(Exception):
    """Every render slot is taken: try again in a few seconds."""


class RenderCache:
    def __init__(self, ttl_s: float = TTL_S, max_renders: int = MAX_RENDERS) -> None:
        self.ttl_s = ttl_s
        self.max_renders = max_renders
        self.active = 0
        self.renders = 0  # renders started, for tests and the benchmark
        self._kept: dict[Hashable, tuple[float, Any]] = {}
        self._flying: dict[Hashable, asyncio.Future[Any]] = {}

    async def get(self, key: Hashable, make: Callable[[], Awaitable[Any]]) -> Any:
        now = time.monotonic()
        kept = self._kept.get(key)
        if kept is not None and kept[0] > now:
            return kept[1]
        flying = self._flying.get(key)
        if flying is not None:
            return await asyncio.shield(flying)
        if self.active >= self.max_renders:
            raise Busy
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._flying[key] = future
        self.active += 1
        self.renders += 1
        try:
            value = await make()
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning when nobody waited
            raise
        else:
            future.set_result(value)
            self._keep(key, value)
            return value
        finally:
            self.active -= 1
            del self._flying[key]

    def _keep(self, key: Hashable, value: Any) -> None:
        now = time.monotonic()
        self._kept = {k: v for k, v in self._kept.items() if v[0] > now}
        while len(self._kept) >= MAX_KEPT:
            self._kept.pop(next(iter(self._kept)))
        self._kept[key] = (now + self.ttl_s, value)
