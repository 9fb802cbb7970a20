"""Previews and the review before a submit render in other processes, so the server keeps its GIL.

Why processes: a CPU-bound Jinja render in a worker thread of the server holds the GIL, and the event
loop gets it back only at each 5 ms switch interval; a /healthz answer needs some twenty hand-offs, so it
took 130–300 ms while one template bomb was previewed (benchmarks/preview_load.py). These renders are
the untrusted ones (a template nobody has approved yet, possibly a bomb), so they go to
`campaigns.render_processes` processes (bot/campaigns/render_worker.py), started on the first render and
reused. A send's renders stay in the server (bot/campaigns/messages.py `build_async`): that content was
reviewed, and a message renders in well under a millisecond on the loop.

The budget is hard: the worker stops a render at `campaigns.render_timeout_s` itself (the watchdog of
bot/campaigns/render_time.py), and a worker that has not answered a while after that (a render in C code,
a stuck process) is killed and replaced; either way the answer is the same sentence. A worker is also
replaced after `campaigns.render_process_renders` renders or when its memory passes
`campaigns.render_process_mb`. Only plain data crosses (the template's source, the subject, the context
dict, the locale): the worker compiles the template itself and keeps it by a hash of its source.

A worker exits when the pool closes its stdin (`close`, when the app stops) and also when the server dies
without closing anything (kill -9): the kernel closes the pipe, and a thread in the worker that reads it
sees the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import sys
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bot.campaigns.render_worker import HEADER, MAX_FRAME, frame
from bot.campaigns.templates import Rendered, TemplateProblem, TemplateSource, timed_out
from bot.config import CampaignSettings
from bot.context import Context
from bot.i18n import current, t

log = logging.getLogger(__name__)

START_TIMEOUT_S = 30.0  # a fresh interpreter importing Jinja: ~0.15 s; a loaded machine is slower
STOP_WAIT_S = 2.0


class Unavailable(Exception):
    """No render process: the pool is closed (the app is stopping) or one could not be started. The caller
    renders in a thread of its own process instead."""


@dataclass(eq=False)
class _Worker:
    proc: asyncio.subprocess.Process
    pid: int
    renders: int = 0
    rss: int = 0
    healthy: bool = True

    async def request(self, payload: bytes, timeout: float) -> tuple[Any, ...]:
        """One reply, or TimeoutError/EOF (the worker is then unusable: the caller kills it)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(payload)
        await self.proc.stdin.drain()
        return await asyncio.wait_for(_read_frame(self.proc.stdout), timeout)

    async def stop(self, *, kill: bool = False) -> None:
        """Closed stdin makes it exit; killed if it has not within STOP_WAIT_S (or at once with kill)."""
        self.healthy = False
        proc = self.proc
        if proc.returncode is None and not kill and proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), STOP_WAIT_S)
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


async def _read_frame(stream: asyncio.StreamReader) -> tuple[Any, ...]:
    (size,) = HEADER.unpack(await stream.readexactly(HEADER.size))
    if size > MAX_FRAME:
        raise EOFError(f"a reply of {size} bytes")
    return tuple(pickle.loads(await stream.readexactly(size)))


@dataclass
class RenderPool:
    """`processes` render processes, started when first needed; `render` hands one render to one."""

    processes: int = 1
    max_renders: int = 1000
    max_bytes: int = 256 * 1024 * 1024
    # A worker that has not answered this long past the budget is killed (its own watchdog stops a render
    # at the budget; this is for what it cannot stop): the larger of 1 s and the budget again.
    grace_s: float = 1.0
    _idle: list[_Worker] = field(default_factory=list)
    _busy: set[_Worker] = field(default_factory=set)
    _slots: asyncio.Semaphore | None = None
    _closed: bool = False
    replaced: int = 0  # workers killed at the hard deadline or lost, for the curious and the tests
    recent: deque[int] = field(
        default_factory=lambda: deque(maxlen=64)
    )  # the pid of each render, latest last

    def pids(self) -> list[int]:
        """The worker processes now (idle and busy)."""
        return sorted(w.pid for w in (*self._idle, *self._busy))

    def busy_pids(self) -> list[int]:
        return sorted(w.pid for w in self._busy)

    async def render(
        self, source: TemplateSource, subject: str, context: dict[str, Any], budget_s: float
    ) -> Rendered:
        """The template rendered for `context` in a render process: TemplateProblem with a sentence when
        it can't be (TemplateTimeout past `budget_s`), Unavailable when there is no render process."""
        request = {
            "name": source.name,
            "html": source.html,
            "text": source.text,
            "subject": subject,
            "budget_s": budget_s,
            "context": context,
            "locale": current(),
        }
        payload = frame(request)  # before a worker is taken: a value that can't be pickled fails here
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.processes)
        async with self._slots:
            worker = await self._take()
            self.recent.append(worker.pid)
            try:
                reply = await worker.request(payload, budget_s + max(self.grace_s, budget_s))
            except TimeoutError:
                log.warning("render process %s did not stop at the budget: killed and replaced", worker.pid)
                await self._lose(worker)
                raise timed_out(source.name, budget_s) from None
            except (EOFError, asyncio.IncompleteReadError, ConnectionError, pickle.UnpicklingError) as exc:
                code = worker.proc.returncode
                await self._lose(worker)
                raise TemplateProblem(
                    t(
                        "The template failed to render: {error}.",
                        error=f"its render process exited ({code if code is not None else type(exc).__name__})",
                    )
                ) from None
            except BaseException:  # cancelled mid-render: its reply would answer the next request
                await self._lose(worker)
                raise
            await self._give_back(worker, reply[-1])
        kind = reply[0]
        if kind == "ok":
            return Rendered(subject=reply[1], html=reply[2], text=reply[3])
        if kind == "timeout":
            raise timed_out(source.name, budget_s)
        if kind == "problem":
            raise TemplateProblem(reply[1])
        raise TemplateProblem(t("The template failed to render: {error}.", error=reply[1]))

    async def _take(self) -> _Worker:
        if self._closed:
            raise Unavailable("closed")
        while self._idle:
            worker = self._idle.pop()
            if worker.proc.returncode is None:
                self._busy.add(worker)
                return worker
            await worker.stop()
        try:
            worker = await self._start()
        except Exception as exc:
            log.exception("a render process could not be started: rendering in a thread instead")
            raise Unavailable(str(exc)) from exc
        self._busy.add(worker)
        return worker

    async def _start(self) -> _Worker:
        root = str(Path(__file__).resolve().parents[2])  # the folder holding this `bot` package
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bot.campaigns.render_worker",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=env,
        )
        worker = _Worker(proc, proc.pid)
        try:
            assert proc.stdout is not None
            ready = await asyncio.wait_for(_read_frame(proc.stdout), START_TIMEOUT_S)
            if ready[0] != "ready":
                raise EOFError(repr(ready[0]))
        except BaseException:
            await worker.stop(kill=True)
            raise
        return worker

    async def _give_back(self, worker: _Worker, rss: int) -> None:
        self._busy.discard(worker)
        worker.renders += 1
        worker.rss = rss
        if self._closed or worker.renders >= self.max_renders or rss > self.max_bytes:
            await worker.stop()  # recycled: the next render starts a fresh one
        else:
            self._idle.append(worker)

    async def _lose(self, worker: _Worker) -> None:
        self._busy.discard(worker)
        self.replaced += 1
        await worker.stop(kill=True)

    async def close(self) -> None:
        """Stop every worker (busy ones are killed); later renders raise Unavailable."""
        self._closed = True
        idle, busy = list(self._idle), list(self._busy)
        self._idle.clear()
        await asyncio.gather(
            *(w.stop() for w in idle), *(w.stop(kill=True) for w in busy), return_exceptions=True
        )


def from_settings(settings: CampaignSettings) -> RenderPool | None:
    """The pool `campaigns.render_processes` asks for; None for 0 (renders in threads of the server)."""
    if not settings.render_processes:
        return None
    return RenderPool(
        settings.render_processes,
        max_renders=settings.render_process_renders,
        max_bytes=settings.render_process_mb * 1024 * 1024,
    )


def of(ctx: Context) -> RenderPool | None:
    """The app's render pool (bot/app.py puts it in the context), if it has one."""
    found = ctx.extras.get("render_pool")
    return found if isinstance(found, RenderPool) else None
