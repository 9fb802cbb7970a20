"""Persistent scheduled jobs (APScheduler 3 with its SQLAlchemy job store, in Postroom's database).

A job survives a restart: it lives in the `apscheduler_jobs` table. Every process opens the
store so it can add jobs, but only one runs them: on PostgreSQL the holder of an advisory lock
(the others stay paused and take over when the holder goes), on SQLite the `serve` process.

Job functions are module-level coroutines named by "module:function" (APScheduler stores the
reference, not the object); they get the running core from `current_core()`.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger

if TYPE_CHECKING:
    from bot.core import Core

log = logging.getLogger(__name__)

ADVISORY_LOCK_KEY = 0x706F7374726F6F6D  # "postroom"
JOBS_TABLE = "apscheduler_jobs"

_current: dict[str, Core] = {}


def current_core() -> Core:
    """The core of the process running jobs. Set by `Scheduler.start`."""
    core = _current.get("core")
    if core is None:
        raise RuntimeError("no scheduler is running in this process")
    return core


def sync_url(url: str) -> str:
    """The synchronous driver URL for APScheduler's job store."""
    if url.startswith("sqlite+aiosqlite://"):
        return "sqlite://" + url.split("://", 1)[1]
    if url.startswith("postgresql+asyncpg://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


class Scheduler:
    def __init__(self, core: Core, *, run_jobs: bool = True, poll_s: float = 5.0):
        self.core = core
        self.run_jobs = run_jobs
        self.poll_s = poll_s
        self.leader = False
        self._lock_conn: Any = None
        self._watch: asyncio.Task[Any] | None = None
        store = SQLAlchemyJobStore(url=sync_url(core.ctx.settings.database.url), tablename=JOBS_TABLE)
        self.aps = AsyncIOScheduler(
            jobstores={"default": store},
            timezone=UTC,
            job_defaults={"coalesce": True, "misfire_grace_time": None, "max_instances": 1},
        )

    async def start(self) -> None:
        """Open the job store (paused), then run jobs if this process wins leadership."""
        _current["core"] = self.core
        self.core.services["scheduler"] = self
        self.aps.start(paused=True)
        if self.run_jobs:
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
        if self.core.ctx.dialect != "postgresql":
            return True
        from sqlalchemy import text

        if self._lock_conn is None:
            self._lock_conn = await self.core.ctx.engine.connect()
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

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
        if self.aps.running:
            self.aps.shutdown(wait=False)
        if self._lock_conn is not None:
            await self._lock_conn.close()
            self._lock_conn = None
        if _current.get("core") is self.core:
            _current.pop("core", None)
        self.core.services.pop("scheduler", None)

    # -- jobs ----------------------------------------------------------------------------------
    def at(self, job_id: str, when: datetime, func: str, **kwargs: Any) -> None:
        """Run `func` ("module:function") once at `when`; replaces a job with the same id."""
        self.aps.add_job(func, "date", run_date=when, id=job_id, kwargs=kwargs, replace_existing=True)

    def cron(self, job_id: str, expression: str, func: str, **kwargs: Any) -> None:
        self.aps.add_job(
            func,
            CronTrigger.from_crontab(expression, timezone=UTC),
            id=job_id,
            kwargs=kwargs,
            replace_existing=True,
        )

    def cancel(self, job_id: str) -> bool:
        try:
            self.aps.remove_job(job_id)
        except Exception:
            return False
        return True

    def next_run(self, job_id: str) -> datetime | None:
        job = self.aps.get_job(job_id)
        return job.next_run_time if job is not None else None


def now() -> datetime:
    return datetime.now(UTC)


async def ensure_scheduler(core: Core, *, run_jobs: bool) -> Scheduler:
    """The process's scheduler, started if needed (`postroom chat` opens it paused to add jobs)."""
    existing = core.services.get("scheduler")
    if isinstance(existing, Scheduler):
        return existing
    scheduler = Scheduler(core, run_jobs=run_jobs)
    await scheduler.start()
    return scheduler
