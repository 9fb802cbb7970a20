"""Persistent scheduled jobs (APScheduler 3 with its SQLAlchemy job store, in Postroom's database).

A job survives a restart: it lives in the `apscheduler_jobs` table. Every process may add jobs (the
store opens, paused, on the first one), but only one runs them: on PostgreSQL the holder of an
advisory lock (the others stay paused and take over when the holder goes), on SQLite the `serve`
process.

A stored job names a *handler* ("hr.finish-leaver") and its keyword arguments, never a code path:
the composition root registers each handler (a bound method of the capability that owns the job)
with `handle()`, and this scheduler's executor dispatches a due job to it. Moving or renaming code
therefore never strands a stored job, and no job reaches for a process-wide global.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from apscheduler.executors.asyncio import AsyncIOExecutor
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

log = logging.getLogger(__name__)

ADVISORY_LOCK_KEY = 0x706F7374726F6F6D  # "postroom"
JOBS_TABLE = "apscheduler_jobs"
STORED_JOB = "bot.scheduler:stored_job"

JobHandler = Callable[..., Awaitable[Any]]


async def stored_job(**kwargs: Any) -> None:
    """What the job table names for every Postroom job; the executor runs the handler instead."""
    raise RuntimeError(f"job handler {kwargs.get('handler')!r} runs only through bot.scheduler.Scheduler")


def sync_url(url: str) -> str:
    """The synchronous driver URL for APScheduler's job store."""
    if url.startswith("sqlite+aiosqlite://"):
        return "sqlite://" + url.split("://", 1)[1]
    if url.startswith("postgresql+asyncpg://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def now() -> datetime:
    return datetime.now(UTC)


class _Dispatched:
    """A stored job as the executor runs it: its function is the scheduler's dispatcher."""

    def __init__(self, job: Any, dispatch: JobHandler):
        self._job = job
        self.func = functools.partial(dispatch)
        self.args = job.args
        self.kwargs = job.kwargs
        self.id = job.id
        self.misfire_grace_time = job.misfire_grace_time
        self._jobstore_alias = job._jobstore_alias

    def __str__(self) -> str:
        return str(self._job)


class _DispatchingExecutor(AsyncIOExecutor):
    def __init__(self, dispatch: JobHandler):
        super().__init__()
        self._dispatch = dispatch

    def _do_submit_job(self, job: Any, run_times: Any) -> None:
        super()._do_submit_job(_Dispatched(job, self._dispatch), run_times)


class Scheduler:
    def __init__(self, engine: AsyncEngine, database_url: str, *, poll_s: float = 5.0):
        self.engine = engine
        self.poll_s = poll_s
        self.leader = False
        self.handlers: dict[str, JobHandler] = {}
        self._lock_conn: AsyncConnection | None = None
        self._watch: asyncio.Task[Any] | None = None
        self.aps = AsyncIOScheduler(
            jobstores={"default": SQLAlchemyJobStore(url=sync_url(database_url), tablename=JOBS_TABLE)},
            executors={"default": _DispatchingExecutor(self._dispatch)},
            timezone=UTC,
            job_defaults={"coalesce": True, "misfire_grace_time": None, "max_instances": 1},
        )

    # -- handlers -------------------------------------------------------------------------------
    def handle(self, name: str, handler: JobHandler) -> None:
        """Register what runs a job named `name` (before the store is opened)."""
        self.handlers[name] = handler

    async def _dispatch(self, handler: str, **kwargs: Any) -> Any:
        run = self.handlers.get(handler)
        if run is None:
            raise LookupError(f"no handler is registered for scheduled job {handler!r}")
        return await run(**kwargs)

    async def run_now(self, job_id: str) -> Any:
        """Run a stored job's handler once, as the scheduler would when it is due (operators, tests)."""
        self._open()
        job = self.aps.get_job(job_id)
        if job is None:
            raise LookupError(f"there is no scheduled job {job_id!r}")
        return await self._dispatch(**job.kwargs)

    # -- running --------------------------------------------------------------------------------
    def _open(self) -> None:
        if not self.aps.running:
            self.aps.start(paused=True)

    async def start(self, *, run_jobs: bool = True) -> None:
        """Open the job store (paused); then run jobs if this process wins leadership."""
        self._open()
        if not run_jobs or self.leader or self._watch is not None:
            return
        if await self._try_lead():
            self._become_leader()
        else:
            self._watch = asyncio.get_running_loop().create_task(self._wait_for_leadership())

    def _become_leader(self) -> None:
        self.leader = True
        self.aps.resume()
        self.aps.wakeup()
        log.info("this process runs the scheduled jobs")

    async def _try_lead(self) -> bool:
        if self.engine.dialect.name != "postgresql":
            return True
        if self._lock_conn is None:
            self._lock_conn = await self.engine.connect()
        got = (
            await self._lock_conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": ADVISORY_LOCK_KEY})
        ).scalar()
        return bool(got)

    async def _wait_for_leadership(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                if await self._try_lead():
                    self._become_leader()
                    return
            except Exception:
                log.exception("leadership check failed")

    def wakeup(self) -> None:
        """Look at the store again now (a job added by another process, e.g. `postroom chat`)."""
        if self.leader:
            self.aps.wakeup()

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        if self.aps.running:
            self.aps.shutdown(wait=False)
        if self._lock_conn is not None:
            await self._lock_conn.close()
            self._lock_conn = None
        self.leader = False

    # -- jobs -----------------------------------------------------------------------------------
    def at(self, job_id: str, when: datetime, handler: str, **kwargs: Any) -> None:
        """Run `handler` once at `when`; replaces a job with the same id."""
        self._add(job_id, handler, kwargs, trigger="date", run_date=when)

    def cron(self, job_id: str, expression: str, handler: str, **kwargs: Any) -> None:
        self._add(job_id, handler, kwargs, trigger=CronTrigger.from_crontab(expression, timezone=UTC))

    def _add(self, job_id: str, handler: str, kwargs: dict[str, Any], **trigger: Any) -> None:
        if handler not in self.handlers:
            raise LookupError(f"no handler is registered for scheduled job {handler!r}")
        self._open()
        self.aps.add_job(
            STORED_JOB, id=job_id, kwargs={"handler": handler, **kwargs}, replace_existing=True, **trigger
        )

    def cancel(self, job_id: str) -> bool:
        if not self.aps.running:
            self._open()
        try:
            self.aps.remove_job(job_id)
        except Exception:
            return False
        return True

    def next_run(self, job_id: str) -> datetime | None:
        self._open()
        job = self.aps.get_job(job_id)
        return job.next_run_time if job is not None else None
