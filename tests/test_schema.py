"""The migrations build exactly the schema the models declare, on SQLite and on PostgreSQL."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.ext.asyncio import create_async_engine

from bot.db.engine import upgrade
from bot.db.models import Base


def _differences(conn):  # type: ignore[no-untyped-def]
    diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    # APScheduler creates and owns its job table; it is not part of the models.
    return [d for d in diff if "apscheduler" not in repr(d)]


async def test_migrations_match_the_models(database_url: str, tmp_path: Path) -> None:
    if database_url.startswith("sqlite"):
        # a new empty file, not the fixture's copy of a migrated one: here the migrations build it
        database_url = f"sqlite+aiosqlite:///{tmp_path / 'new.db'}"
    engine = create_async_engine(database_url)
    try:
        await upgrade(engine)
        async with engine.connect() as conn:
            assert await conn.run_sync(_differences) == []
    finally:
        await engine.dispose()


def test_the_scripts_head_read_as_text_is_alembics() -> None:
    from bot.db.engine import head_revision, scripted_head

    assert scripted_head() == head_revision() is not None
