"""Engines, sessions and the schema's version check. Built from settings by `bot.app`, never at import."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import event, text
from sqlalchemy.engine import URL, Connection
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, async_sessionmaker, create_async_engine

if TYPE_CHECKING:
    from alembic.config import Config

# Alembic is imported only to migrate or to explain a version mismatch: a start on an up-to-date schema
# (every `postroom` command but `db upgrade`) reads the version row and the scripts' text instead.
MIGRATIONS = Path(__file__).parent / "migrations"
_REVISION = re.compile(r'^(down_revision|revision)\s*=\s*(None|"([^"]*)")\s*$', re.MULTILINE)


class SchemaError(Exception):
    """The database's schema is not the one this version of Postroom expects."""


class DatabaseUnreachable(Exception):
    """The database database.url names can't be opened or reached; str() is the sentence saying so."""


_DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306, "mariadb": 3306}


def unreachable_sentence(url: URL, exc: BaseException) -> str:
    """One sentence naming database.url's host and port (or file), never its password, and the cause."""
    if url.get_backend_name() == "sqlite":
        where = url.database or "memory"
    else:
        where = f"{url.host or 'localhost'}:{url.port or _DEFAULT_PORTS.get(url.get_backend_name(), '?')}"
    cause = getattr(exc, "orig", None) or exc
    if isinstance(cause, TimeoutError):
        reason = "it did not answer in time"
    elif isinstance(cause, OSError) and cause.strerror:
        reason = cause.strerror[0].lower() + cause.strerror[1:]
    else:
        reason = " ".join(str(cause).split())[:200] or type(cause).__name__
    if url.password:
        reason = reason.replace(str(url.password), "***")
    return (
        f"Postroom can't connect to the database at database.url ({where}): {reason.rstrip('.')}; "
        "check that the database server is running and that database.url names it."
    )


async def _connect(engine: AsyncEngine) -> AsyncConnection:
    """The first connection of a command: one that can't be made is a DatabaseUnreachable sentence."""
    try:
        return await engine.connect()
    except (OperationalError, InterfaceError, OSError) as exc:
        raise DatabaseUnreachable(unreachable_sentence(engine.url, exc)) from None


def make_engine(url: str) -> AsyncEngine:
    if url.startswith("sqlite"):
        _check_sqlite_folder(url)
        engine = create_async_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    return create_async_engine(url, pool_size=10, max_overflow=10, pool_pre_ping=True)


def _check_sqlite_folder(url: str) -> None:
    # aiosqlite fails a connection in a worker thread that can outlive the event loop; say it first.
    from sqlalchemy.engine import make_url

    from bot.config import ConfigError

    database = make_url(url).database
    if database and database != ":memory:" and not Path(database).parent.is_dir():
        raise ConfigError(f"database.url points into {Path(database).parent}, a folder that does not exist.")


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker:
    return async_sessionmaker(engine, expire_on_commit=False)


def alembic_config() -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def head_revision() -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def scripted_head() -> str | None:
    """The one head of the migration scripts, read from their `revision`/`down_revision` lines without
    importing them; None when that reading is not plain (two heads, a tuple, a missing line)."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for script in (MIGRATIONS / "versions").glob("*.py"):
        found = dict((m[0], m[2] or None) for m in _REVISION.findall(script.read_text(encoding="utf-8")))
        if "revision" not in found or "down_revision" not in found or found["revision"] is None:
            return None
        revisions.add(found["revision"])
        if found["down_revision"] is not None:
            parents.add(found["down_revision"])
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else None


def _current(conn: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(conn).get_current_revision()


def _version_rows(conn: Connection) -> list[str] | None:
    """alembic_version's rows, or None when the table is not there."""
    from sqlalchemy import inspect

    if not inspect(conn).has_table("alembic_version"):
        return None
    return list(conn.execute(text("SELECT version_num FROM alembic_version")).scalars())


def _has_tables(conn: Connection) -> bool:
    from sqlalchemy import inspect

    return bool(inspect(conn).get_table_names())


def _upgrade(conn: Connection) -> None:
    from alembic import command

    cfg = alembic_config()
    cfg.attributes["connection"] = conn
    command.upgrade(cfg, "head")


def _known(revision: str) -> bool:
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    try:
        return ScriptDirectory.from_config(alembic_config()).get_revision(revision) is not None
    except CommandError:  # alembic raises, rather than returning None, for an id it has never seen
        return False


NO_VERSION = (
    "The database has tables but no Postroom schema version: point database.url at an empty "
    "database or at one Postroom created."
)


def _newer(current: str) -> str:
    return (
        f"The database's schema ({current}) is newer than this version of Postroom knows: upgrade Postroom."
    )


async def upgrade(engine: AsyncEngine) -> tuple[str | None, str | None]:
    """Apply every pending migration. Returns (revision before, revision after)."""
    await (await _connect(engine)).close()  # an unreachable database is a sentence, not a traceback
    async with engine.begin() as conn:
        before = await conn.run_sync(_current)
        if before is None and await conn.run_sync(_has_tables):
            raise SchemaError(NO_VERSION)
        if before is not None and not _known(before):
            raise SchemaError(_newer(before))
        await conn.run_sync(_upgrade)
        after = await conn.run_sync(_current)
    return before, after


async def ensure_schema(engine: AsyncEngine) -> str:
    """Migrate a new empty database; refuse an out-of-date one with a sentence saying what to do."""
    conn = await _connect(engine)
    try:
        rows = await conn.run_sync(_version_rows)
    finally:
        await conn.close()
    if rows is not None and len(rows) == 1 and rows[0] == scripted_head():
        return "ready"
    async with engine.connect() as conn:
        current = await conn.run_sync(_current)
        has_tables = await conn.run_sync(_has_tables)
    head = head_revision()
    if current == head:
        return "ready"
    if current is None and not has_tables:
        await upgrade(engine)
        return "created"
    if current is None:
        raise SchemaError(NO_VERSION)
    if not _known(current):
        raise SchemaError(_newer(current))
    raise SchemaError(
        f"The database's schema is out of date ({current}, this version needs {head}): "
        "run `postroom db upgrade` first."
    )
