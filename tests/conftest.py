"""Fixtures: real databases (SQLite always, PostgreSQL when POSTROOM_TEST_DATABASE_URL is set),
a real SMTP server on loopback, and a console chat with the bot — like errbot's testbot."""

from __future__ import annotations

import asyncio
import io
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from adapters.console import ConsoleAdapter, render_message
from bot.app import App, build_app
from bot.config import Settings, load_settings, normalise_database_url
from bot.events import Message
from tests.smtp import SmtpServer

DEMO_TEMPLATES = Path(__file__).parents[1] / "bot" / "demo_data" / "templates"
PG_URL = os.environ.get("POSTROOM_TEST_DATABASE_URL")

HR = "hannah@corp.example"
SENDER = "sam@corp.example"
APPROVER = "maria@corp.example"
APPROVER2 = "omar@corp.example"
ADMIN = "admin@corp.example"
NOBODY = "nora@corp.example"
# The company's people on record (as an HR import would have put them), so that adding them to a group
# by hand is adding a colleague, not an address nobody knows (/addgroup asks for --unknown-ok then).
COLLEAGUES = [HR, SENDER, APPROVER, APPROVER2, ADMIN, NOBODY] + [
    f"{name}@corp.example"
    for name in ("alice", "bob", "carl", "carol", "chen", "dana", "erin", "frank", "gus")
]


async def put_on_record(app: App, emails: list[str]) -> None:
    """People on record for these addresses, as an HR import would have made them."""
    from bot.db.models import Person

    async with app.ctx.sessions() as session, session.begin():
        for i, email in enumerate(emails):
            session.add(
                Person(employee_id=f"T{i:03d}", email=email, name=email.split("@")[0].title(), source="test")
            )


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str | None]:
    """A throwaway PostgreSQL database for this test session, dropped at the end."""
    if not PG_URL:
        yield None
        return
    base = normalise_database_url(PG_URL)
    name = f"postroom_t_{uuid.uuid4().hex[:10]}"

    async def admin(sql: str) -> None:
        engine = create_async_engine(base, isolation_level="AUTOCOMMIT")
        async with engine.connect() as conn:
            await conn.execute(text(sql))
        await engine.dispose()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    # A commit then returns without waiting for its WAL record to reach the disk (~2-3 ms a commit here, on a
    # disk other suites share): what a PostgreSQL crash could lose, which no test makes happen. Every commit
    # is still atomic and visible to the other connections as before; `postroom` processes get it too.
    asyncio.run(admin(f'ALTER DATABASE "{name}" SET synchronous_commit = off'))
    yield base.rsplit("/", 1)[0] + "/" + name
    asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


# Empty every table but alembic_version and restart every sequence, as `TRUNCATE ... RESTART IDENTITY` would.
# DELETE with the foreign-key triggers off (superuser: session_replication_role) takes ~0.05 s on these
# small tables where TRUNCATE of all ~30 takes ~1 s (new files for each table and index), once a test.
RESET_POSTGRES = """
DO $$
DECLARE
  t text;
  s record;
BEGIN
  SET LOCAL session_replication_role = replica;
  FOR t IN SELECT tablename FROM pg_tables WHERE schemaname = current_schema() AND tablename <> 'alembic_version'
  LOOP
    EXECUTE format('DELETE FROM %I', t);
  END LOOP;
  FOR s IN SELECT sequencename FROM pg_sequences WHERE schemaname = current_schema() AND last_value IS NOT NULL
  LOOP
    EXECUTE format('ALTER SEQUENCE %I RESTART', s.sequencename);
  END LOOP;
END $$
"""


async def _reset_postgres(url: str) -> None:
    engine = create_async_engine(url)
    async with engine.begin() as conn:
        await conn.execute(text(RESET_POSTGRES))
    await engine.dispose()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite database migrated to head once per test session (per xdist worker): each test gets a copy,
    as PostgreSQL tests get the session's migrated database truncated. Migrating a new file costs ~0.7 s,
    ~350 times a run; building a new empty database is still tested where it matters (test_schema,
    test_cli, test_demo)."""
    from bot.db.engine import make_engine, upgrade

    path = tmp_path_factory.mktemp("sqlite-template") / "postroom.db"

    async def migrate() -> None:
        engine = make_engine(f"sqlite+aiosqlite:///{path}")
        try:
            await upgrade(engine)
        finally:
            await engine.dispose()

    asyncio.run(migrate())
    # The last connection closed checkpoints the write-ahead log into the file: the file alone is the database.
    wal = path.with_name(path.name + "-wal")
    assert not wal.exists() or wal.stat().st_size == 0
    return path


@pytest.fixture(params=["sqlite", "postgresql"])
async def database_url(
    request: pytest.FixtureRequest, tmp_path: Path, pg_server_url: str | None, sqlite_template: Path
) -> str:
    if request.param == "sqlite":
        shutil.copyfile(sqlite_template, tmp_path / "postroom.db")
        return f"sqlite+aiosqlite:///{tmp_path / 'postroom.db'}"
    if pg_server_url is None:
        pytest.skip("POSTROOM_TEST_DATABASE_URL is not set (CI sets it)")
    await _reset_postgres(pg_server_url)
    return pg_server_url


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    with SmtpServer() as server:
        yield server


def make_settings(database_url: str, smtp_port: int, tmp_path: Path, **sections: Any) -> Settings:
    templates = tmp_path / "templates"
    if not templates.exists():
        shutil.copytree(DEMO_TEMPLATES, templates)
    data: dict[str, Any] = {
        "database": {"url": database_url},
        "smtp": {"host": "127.0.0.1", "port": smtp_port, "connections": 2, "timeout_s": 5},
        "org": {
            "name": "Example Corp",
            "domains": ["corp.example"],
            "postal_address": "1 Example Street, Berlin",
        },
        "roles": {"hr": [HR], "senders": [SENDER], "approvers": [APPROVER, APPROVER2], "admins": [ADMIN]},
        "web": {"base_url": "http://127.0.0.1:8080", "secret": "test-secret-0123456789"},
        "campaigns": {
            "templates_dir": str(templates),
            "from_address": "news@corp.example",
            "from_name": "Example Corp",
            "reports_dir": str(tmp_path / "reports"),  # charts stay in the test's folder
            # A SpamAssassin run costs ~1 s and ~120 MB; tests/test_spam_score.py turns it on (and tests
            # the default, "auto"), the rest of the suite doesn't wait for it.
            "spam_check": "off",
        },
    }
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    return load_settings(read_file=False, **data)


class ChatBot:
    """Talk to the bot as different people through the real console adapter."""

    def __init__(self, app: App, console: ConsoleAdapter, out: io.StringIO):
        self.app = app
        self.core = app.core
        self.console = console
        self.out = out

    async def say(self, as_email: str, text: str) -> str:
        self.console.as_email = as_email
        reply = await self.console.say(text)
        return render_message(reply, self.console.locale) if reply is not None else ""

    async def settle(self) -> None:
        await asyncio.wait_for(self.app.drain(), 30)

    def cards(self, conversation: str = "approvals") -> list[Message]:
        return [m for kind, conv, m in self.console.transcript if conv == conversation and m.card is not None]


@pytest.fixture
async def settings(database_url: str, smtp: SmtpServer, tmp_path: Path) -> Settings:
    return make_settings(database_url, smtp.port, tmp_path)


@pytest.fixture
async def bot(settings: Settings) -> AsyncIterator[ChatBot]:
    app = await build_app(settings)
    await put_on_record(app, COLLEAGUES)
    out = io.StringIO()
    console = ConsoleAdapter(HR, out=out, prompt=False)
    app.attach(console)
    await console.start(app.core)
    try:
        yield ChatBot(app, console, out)
    finally:
        await app.close()


# -- Slack: the fake Slack API and a Postroom with the Slack adapter on it (tests/slack_rig.py) ----------
@pytest.fixture
async def fake() -> AsyncIterator[Any]:
    """The fake Slack Web API (tests/slack_fake.py) on loopback, with the test directory of people."""
    from tests.slack_fake import FakeSlack
    from tests.slack_rig import directory

    server = await FakeSlack(users=directory()).start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def rig(
    request: pytest.FixtureRequest, database_url: str, smtp: SmtpServer, tmp_path: Path, fake: Any
) -> AsyncIterator[Any]:
    """Postroom with the Slack adapter on `fake`; a test module's SLACK_OVERRIDES change the [slack] section
    (e.g. socket mode)."""
    from tests.slack_rig import running

    overrides = getattr(request.module, "SLACK_OVERRIDES", {})
    async with running(database_url, smtp.port, tmp_path, fake, **overrides) as r:
        yield r


def pytest_configure(config: pytest.Config) -> None:
    """The `postroom` processes the tests start run this checkout's code, from cached bytecode.

    - PYTHONPATH names this checkout first: an editable install imports `bot` from wherever it was installed
      (a shared virtualenv points at another checkout), so without it a CLI test would run other code.
    - Each such process imports ~120 of our modules. With PYTHONDONTWRITEBYTECODE set (as in some shells and
      containers) each of the hundreds of processes a run starts compiled them all again (~0.2 s of CPU each); their
      bytecode now goes to a cache under .pytest_cache (PYTHONPYCACHEPREFIX), never beside the sources, and
      is checked against each source's mtime as any bytecode is.
    """
    root = str(Path(__file__).resolve().parents[1])
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != root]
    os.environ["PYTHONPATH"] = os.pathsep.join([root, *paths])
    if os.environ.get("PYTHONDONTWRITEBYTECODE") and "PYTHONPYCACHEPREFIX" not in os.environ:
        cache = getattr(config, "cache", None)
        if cache is not None:
            os.environ["PYTHONPYCACHEPREFIX"] = str(cache.mkdir("child-pycache"))
            del os.environ["PYTHONDONTWRITEBYTECODE"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under `-n 2 --dist loadgroup` (make test) the tests on the real Mailman run on one worker: each worker
    starts its own session servers, and Mailman takes ~20 s to start and ~10 s to stop."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        params = callspec.params.values() if callspec is not None else ()
        if "mailman" in getattr(item, "fixturenames", ()) or "mailman" in params:
            item.add_marker(pytest.mark.xdist_group("mailman"))
