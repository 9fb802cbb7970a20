"""`postroom` starts without what a command does not use: `--help` and `init` import neither pydantic's
settings nor SQLAlchemy nor Alembic, and a start on an up-to-date schema does not import Alembic."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("alembic", "sqlalchemy", "pydantic", "bot.config", "asyncio")


def loaded_after(code: str) -> list[str]:
    probe = f"""
import sys
{code}
print("loaded:" + ",".join(m for m in {HEAVY!r} if m in sys.modules))
"""
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=60, check=True
    )
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
