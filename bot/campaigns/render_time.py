"""A time limit for template renders, and a way to run them off the event loop.

Why a watchdog thread: a Jinja loop that produces no output (`{% for a in range(10000) %}{% for b in
range(10000) %}{% endfor %}{% endfor %}`) never hands control back to code Postroom owns, and a single
filter over a 2 MB value (`urlize`, `map`, `select`) runs for seconds inside Jinja, so a deadline
checked between output chunks, or even on every loop iteration, does not stop everything. Instead one
daemon thread per process keeps the deadlines of the renders under way and, when one passes, raises
`_Interrupted` in the rendering thread with `PyThreadState_SetAsyncExc`: CPython delivers it at the
next bytecode boundary, whatever Jinja is doing. (C code such as one `re.sub` or `list.sort` is not
interrupted: those are bounded by the 2 MB value cap in templates.py.)

Why it is safe: the interrupt is raised only for a render registered in the watchdog's set, under a
plain lock; leaving the set (under the same lock) clears an interrupt raised but not yet delivered, so
none lands after the render has returned, and both ways out of `run_within` take the job out of the set
wherever in that stretch the interrupt lands. `_Interrupted` derives from BaseException, so no
`except Exception` in Jinja or in Postroom swallows it, and `run_within` turns it into `OutOfTime`.

A CPU-bound render still holds the event loop while it runs in the loop's thread: `off_loop` runs it
in a worker thread instead (CPython hands the GIL back to the loop every 5 ms, so the loop is slowed,
not stopped). A send renders on the loop for at most a short slice and moves to a thread when that is
not enough (bot/campaigns/messages.py); previews and the review before a submit render in other
processes (bot/campaigns/render_pool.py), which use this module's watchdog inside themselves.
"""

from __future__ import annotations

import asyncio
import ctypes
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


class OutOfTime(Exception):
    """The render was stopped at its deadline."""


class _Interrupted(BaseException):
    """Raised inside a render by the watchdog thread; never leaves `run_within`."""


def _raise_in(thread_id: int, exc: type[BaseException] | None) -> None:
    # None clears a pending interrupt (NULL for the C API, which ctypes passes for None).
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(exc) if exc is not None else None
    )


@dataclass(eq=False, slots=True)
class _Job:
    thread_id: int
    deadline: float
    fired: bool = False


# How often the watchdog looks at the renders under way (at most; sooner when a deadline is nearer).
_IDLE_S = 0.05
_BUSY_S = 0.01


class _Watchdog:
    """Only plain `threading.Lock`s on the rendering side: their `with` acquires and releases in C, so an
    interrupt can't land between acquiring and the block that releases (a Condition's Python-level
    `__enter__` could, and the lock would stay held — the stress test in tests/test_render_budget.py found
    exactly that)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.jobs: set[_Job] = set()
        self._thread = threading.Thread(target=self._run, name="postroom-render-watchdog", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            with self.lock:
                now = time.monotonic()
                for job in self.jobs:
                    if not job.fired and job.deadline <= now:
                        job.fired = True
                        _raise_in(job.thread_id, _Interrupted)
                waiting = [j.deadline for j in self.jobs if not j.fired]
            time.sleep(min(max(min(waiting) - now, 0.001), _BUSY_S) if waiting else _IDLE_S)


_dog: _Watchdog | None = None
_dog_lock = threading.Lock()


def _watchdog() -> _Watchdog:
    """The process's watchdog, started on first use (a render, not an import)."""
    global _dog
    if _dog is None:
        with _dog_lock:
            if _dog is None:
                _dog = _Watchdog()
    return _dog


def run_within(fn: Callable[[], T], seconds: float) -> T:
    """`fn()`, or OutOfTime when it runs longer than `seconds` (in whichever thread this is called).

    The interrupt can only arrive between the job entering and leaving `dog.jobs` (the watchdog raises it
    under `dog.lock`, for jobs in the set): wherever it lands in that stretch, one of the two handlers
    below takes it out of the set and turns it into OutOfTime, and leaving the set clears one that was
    raised but not yet delivered."""
    dog = _watchdog()
    job = _Job(threading.get_ident(), time.monotonic() + seconds)
    try:
        try:
            with dog.lock:
                dog.jobs.add(job)
            return fn()
        finally:
            with dog.lock:
                dog.jobs.discard(job)
                if job.fired:
                    _raise_in(job.thread_id, None)
    except _Interrupted:
        with dog.lock:
            dog.jobs.discard(job)  # a job fires once, and this is its interrupt: nothing is pending
        raise OutOfTime from None


async def off_loop(fn: Callable[[], T]) -> T:
    """`fn()` in a worker thread (with this task's context: the locale), so the event loop keeps
    answering while it runs."""
    return await asyncio.to_thread(fn)
