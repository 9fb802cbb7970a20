"""`postroom` starts without what a command does not use: `--help` and `init` import neither pydantic's
settings nor SQLAlchemy nor Alembic, and a start on an up-to-date schema does not import Alembic."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("alembic", "sqlalchemy", "pydantic", "bot.config", "asyncio")


def loaded_after(code: str, watched: tuple[str, ...] = HEAVY) -> list[str]:
    probe = f"""
import sys
{code}
print("loaded:" + ",".join(m for m in {watched!r} if m in sys.modules))
"""
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    last = out.stdout.strip().splitlines()[-1]
    assert last.startswith("loaded:"), out.stdout
    return [m for m in last.removeprefix("loaded:").split(",") if m]


def test_help_imports_nothing_heavy() -> None:
    run_help = """
from bot.cli import main
try:
    main(["--help"])
except SystemExit:
    pass
"""
    assert loaded_after(run_help) == []


def test_an_up_to_date_schema_is_checked_without_alembic(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'p.db'}"
    migrate = f"""
import asyncio
from bot.db.engine import make_engine, ensure_schema
async def go():
    engine = make_engine({url!r})
    print(await ensure_schema(engine))
    await engine.dispose()
asyncio.run(go())
"""
    assert "alembic" in loaded_after(migrate)  # a new database is migrated: Alembic is needed
    assert "alembic" not in loaded_after(migrate)  # the second start finds it up to date


def test_a_chat_command_does_not_import_dnspython(tmp_path: Path) -> None:
    """Every `postroom` start builds the whole app (the relay's DMARC look-ups, the signup MX check): the
    tests start ~400 of them. dnspython (~50 ms) is imported by the first look-up, not by the start."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'p.db'}"
    chat = f"""
import asyncio
from adapters.console import ConsoleAdapter
from bot.app import build_app
from bot.config import load_settings
settings = load_settings(read_file=False, database={{"url": {url!r}}}, org={{"name": "Example Corp", "domains": ["corp.example"]}})
async def go():
    app = await build_app(settings)
    console = ConsoleAdapter("hannah@corp.example", prompt=False)
    app.attach(console)
    await console.start(app.core)
    reply = await console.say("/help")
    assert reply is not None and "/addgroup" in reply.text, reply
    await app.close()
asyncio.run(go())
"""
    assert loaded_after(chat, ("dns", "bot.app")) == ["bot.app"]


def test_an_unreachable_database_is_one_sentence_naming_database_url_for_every_command(
    tmp_path: Path,
) -> None:
    """Every command that opens the database says where it looked (host:port, never the password) and
    why it failed, in one sentence: no traceback, no bare "[Errno 111] Connection refused"."""
    import secrets

    from tests.smtp import free_port
    from tests.test_cli import HR, POSTROOM, clean_env, write_config

    port = free_port()  # nothing listens there
    password = "pw" + secrets.token_hex(6)
    url = f"postgresql+asyncpg://postroom:{password}@127.0.0.1:{port}/postroom"
    config = write_config(tmp_path, free_port(), free_port(), url)
    (tmp_path / "staff.csv").write_text("employee_id,email,name,status\nE1,ann@corp.example,Ann,active\n")
    (tmp_path / "contacts.csv").write_text("email\nbob@customer.example\n")
    commands = [
        ["hr", "import", "staff.csv"],
        ["serve"],
        ["chat", "--as", HR, "/help"],
        ["contacts", "import", "contacts.csv", "--list", "customers"],
        ["db", "upgrade"],
        ["groups", "export", "--format", "postfix"],
    ]
    for args in commands:
        done = subprocess.run(
            [POSTROOM, "--config", str(config), *args],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=clean_env(),
            timeout=60,
        )
        said = done.stderr.strip()
        assert done.returncode == 1 and "Traceback" not in said and len(said.splitlines()) == 1, (args, said)
        assert said.startswith("Error: ") and said.endswith("."), (args, said)
        assert f"database.url (127.0.0.1:{port})" in said and "refused" in said.lower(), (args, said)
        assert password not in said, args
