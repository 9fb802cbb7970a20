"""A time limit for template renders, and a way to run them off the event loop.

Why a watchdog thread: a Jinja loop that produces no output (`{% for a in range(10000) %}{% for b in
range(10000) %}{% endfor %}{% endfor %}`) never hands control back to code Postroom owns, and a single
filter over a 2 MB value (`urlize`, `map`, `select`) runs for seconds inside Jinja, so a deadline
checked between output chunks, or even on every loop iteration, does not stop everything. Instead one
daemon thread per process keeps the deadlines of the renders under way and, when one passes, raises
`_Interrupted` in the rendering thread with `PyThreadState_SetAsyncExc`: CPython delivers it at the
next bytecode boundary, whatever Jinja is doing. (C code such as one `re.sub` or `list.sort` is not
interrupted: those are bounded by the 2 MB value cap in templates.py.)

Why it is safe: the interrupt is raised only while the render is registered, and `release` — under
the same lock — ends the registration and clears an interrupt not yet delivered, so none lands after
the render has returned. `_Interrupted` derives from BaseException, so no `except Exception` in Jinja
or in Postroom swallows it, and `run_within` turns it into `OutOfTime` before it leaves.

A CPU-bound render still holds the event loop while it runs in the loop's thread: `off_loop` runs it
in a worker thread instead (CPython hands the GIL back to the loop every 5 ms), which is what the
previews and the review before a submit do; a send renders on the loop for at most a short slice and
moves to a thread when that is not enough (bot/campaigns/messages.py).
"""

from __future__ import annotations

import asyncio
import ctypes
import math
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
    done: bool = False
    fired: bool = False


class _Watchdog:
    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._jobs: set[_Job] = set()
        self._next = math.inf  # the deadline the thread sleeps until
        self._thread: threading.Thread | None = None

    def watch(self, job: _Job) -> None:
        with self._cond:
            self._jobs.add(job)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="postroom-render-watchdog", daemon=True
                )
                self._thread.start()
            elif job.deadline < self._next:
                self._cond.notify()

    def release(self, job: _Job) -> None:
        with self._cond:
            if job.done:
                return
            job.done = True
            self._jobs.discard(job)
            if job.fired:  # an interrupt raised but not delivered yet must not land after the render
                _raise_in(job.thread_id, None)

    def _run(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                for job in self._jobs:
                    if not job.fired and job.deadline <= now:
                        job.fired = True
                        _raise_in(job.thread_id, _Interrupted)
                waiting = [j.deadline for j in self._jobs if not j.fired]
                self._next = min(waiting) if waiting else math.inf
                self._cond.wait(None if not waiting else max(self._next - now, 0.001))


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
    """`fn()`, or OutOfTime when it runs longer than `seconds` (in whichever thread this is called)."""
    dog = _watchdog()
    job = _Job(threading.get_ident(), time.monotonic() + seconds)
    try:
        try:
            dog.watch(job)
            return fn()
        finally:
            dog.release(job)
    except _Interrupted:
        dog.release(job)  # again: the interrupt may have landed inside the first release
        raise OutOfTime from None


async def off_loop(fn: Callable[[], T]) -> T:
    """`fn()` in a worker thread (with this task's context: the locale), so the event loop keeps
    answering while it runs."""
    return await asyncio.to_thread(fn)
