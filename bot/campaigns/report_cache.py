"""What reports cost the server, bounded: a built report (its figures, or a chart's PNG) is kept for
`TTL_S` per key, concurrent requests for the same key wait for the one render under way (single
flight), and at most `MAX_RENDERS` renders run at once across all keys and all paths — the report
page, its chart, and `/campaign report` in chat — past that a request is told to come back (`Busy`,
with how long to wait), so a burst of reports can't stall the event loop or fill memory.

A render belongs to the cache, not to the request that started it: it runs in a task of its own and
every requester waits on it shielded, so a requester that goes away (a browser closed, its request
cancelled) leaves the render running for the others, and its result is kept for the next.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from bot.context import Context

TTL_S = 60.0
MAX_RENDERS = 2
MAX_KEPT = 64  # built reports kept at most (the oldest go first)
MEASURED = 8  # the last renders whose durations say how long the next one will take


class Busy(Exception):
    """Every render slot is taken: try again in `retry_after_s` seconds."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(retry_after_s)
        self.retry_after_s = retry_after_s


class RenderCache:
    def __init__(
        self,
        ttl_s: float = TTL_S,
        max_renders: int = MAX_RENDERS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_s = ttl_s
        self.max_renders = max_renders
        self.clock = clock
        self.renders = 0  # renders started, for tests and the benchmark
        self._kept: dict[Hashable, tuple[float, Any]] = {}
        self._flying: dict[Hashable, asyncio.Task[Any]] = {}
        self._started: dict[Hashable, float] = {}  # when each render under way started
        self._took: deque[float] = deque(maxlen=MEASURED)

    @property
    def active(self) -> int:
        return len(self._flying)

    async def get(self, key: Hashable, make: Callable[[], Awaitable[Any]]) -> Any:
        kept = self._kept.get(key)
        if kept is not None and kept[0] > self.clock():
            return kept[1]
        task = self._flying.get(key)
        if task is None:
            if self.active >= self.max_renders:
                raise Busy(self.retry_after_s())
            task = asyncio.create_task(self._render(make))
            self._flying[key] = task
            self._started[key] = self.clock()
            self.renders += 1
            task.add_done_callback(lambda done: self._landed(key, done))
        return await asyncio.shield(task)

    async def _render(self, make: Callable[[], Awaitable[Any]]) -> Any:
        return await make()

    def _landed(self, key: Hashable, task: asyncio.Task[Any]) -> None:
        del self._flying[key]
        started = self._started.pop(key)
        if task.cancelled():
            return
        if task.exception() is not None:  # retrieved: no "never retrieved" warning when nobody waited
            return
        self._took.append(self.clock() - started)
        self.put(key, task.result())

    def put(self, key: Hashable, value: Any) -> None:
        """Keep `value` for `key` for the next `ttl_s` (a report built elsewhere, fresher than any kept)."""
        now = self.clock()
        self._kept = {k: v for k, v in self._kept.items() if v[0] > now}
        self._kept.pop(key, None)
        while len(self._kept) >= MAX_KEPT:
            self._kept.pop(next(iter(self._kept)))
        self._kept[key] = (now + self.ttl_s, value)

    def retry_after_s(self) -> int:
        """Whole seconds until a render slot is likely free: the slowest of the last renders' durations,
        less how long the oldest render under way has run (while none has finished yet, as long again
        as that one has run); at least 1, at most the time a report is kept."""
        now = self.clock()
        running = max((now - at for at in self._started.values()), default=0.0)
        expected = max(self._took) if self._took else 2 * running
        wait = math.ceil(max(0.0, expected - running))
        return int(min(max(1, wait), math.ceil(self.ttl_s)))


def report_renders(ctx: Context) -> RenderCache:
    """The one RenderCache of this process' reports (page, chart and chat share its cap)."""
    return cast(RenderCache, ctx.extras.setdefault("report_renders", RenderCache()))
