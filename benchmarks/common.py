"""Shared set-up for the campaign benchmarks: a loopback SMTP sink, a seeded database, an approved campaign."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SMTP_SINK = "/usr/sbin/smtp-sink"


def count(text: str) -> int:
    """An argparse type: a whole number above 0, or a sentence saying what was expected."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"“{text}” is not a whole number; give a count like 200.") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is too small; give a count of 1 or more.")
    return value


HTML = (
    """<!doctype html><html><head><meta charset="utf-8"><title>News for {{ first_name }}</title>
<style>body{font-family:sans-serif;color:#222}.box{padding:12px;border:1px solid #ddd}</style></head>
<body><h1>Hello {{ first_name }},</h1>
<p>Thanks for being a customer of {{ org.name }}{% if company is defined %} at {{ company }}{% endif %}. Here is what is new this
month, chosen for people in {{ city }}.</p>
"""
    + "".join(
        f'<div class="box"><h2>Item {i}</h2><p>Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod '
        f"tempor incididunt ut labore et dolore magna aliqua. Ut enim ad minim veniam, quis nostrud exercitation.</p>"
        f'<p><a href="https://www.example.com/articles/{i}?utm_campaign=news&amp;ref={{{{ ref }}}}">Read more</a></p></div>\n'
        for i in range(1, 9)
    )
    + """<p>Your reference: {{ ref }}</p>
<p style="font-size:12px;color:#888">{{ org.name }}, {{ org.postal_address }} —
<a href="{{ unsubscribe_url }}">unsubscribe</a></p></body></html>
"""
)

TEXT = (
    """Hello {{ first_name }},

Thanks for being a customer of {{ org.name }}{% if company is defined %} at {{ company }}{% endif %}.
"""
    + "".join(
        f"Item {i}: Lorem ipsum dolor sit amet, consectetur adipiscing elit. https://www.example.com/articles/{i}\n"
        for i in range(1, 9)
    )
    + """
Your reference: {{ ref }}
{{ org.name }}, {{ org.postal_address }}
Unsubscribe: {{ unsubscribe_url }}
"""
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Sink:
    """Postfix's smtp-sink when installed (the fast C sink), else an aiosmtpd one in a subprocess."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.kind = ""

    def __enter__(self) -> Sink:
        if os.path.exists(SMTP_SINK):
            args = [SMTP_SINK]
            if os.geteuid() == 0:
                args += ["-u", "nobody"]
            args += [f"127.0.0.1:{self.port}", "1024"]
            self.kind = "postfix smtp-sink"
        else:
            args = [
                sys.executable,
                str(Path(__file__).parent / "recording_sink.py"),
                str(self.port),
                os.devnull,
            ]
            self.kind = "aiosmtpd sink"
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(5)


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def settings_for(
    folder: Path, database_url: str, smtp_port: int, dkim: dict[str, Any] | None = None, **campaigns: Any
) -> Any:
    from bot.config import load_settings
    from bot.secret_policy import generate_secret

    templates = folder / "templates"
    templates.mkdir(parents=True, exist_ok=True)
    (templates / "news.html").write_text(HTML)
    (templates / "news.txt").write_text(TEXT)
    return load_settings(
        read_file=False,
        database={"url": database_url},
        smtp={
            "host": "127.0.0.1",
            "port": smtp_port,
            "connections": campaigns.pop("connections", 4),
            "pipelining": campaigns.pop("pipelining", True),
            "timeout_s": 30,
        },
        org={
            "name": "Example Corp",
            "domains": ["corp.example"],
            "postal_address": "1 Example Street, Berlin",
        },
        web={"base_url": "https://postroom.corp.example", "secret": generate_secret()},
        campaigns={
            "templates_dir": str(templates),
            "from_address": "news@corp.example",
            "from_name": "Example Corp",
            "reports_dir": str(folder / "reports"),
            **campaigns,
        },
        dkim=dkim or {},
    )


def recipient(i: int) -> dict[str, Any]:
    cities = ("Berlin", "Shanghai", "Lisbon", "Austin", "Nairobi")
    return {
        "email": f"person{i:07d}@d{i % 50}.example",
        "name": f"Person{i} Example",
        "attributes": {
            "city": cities[i % 5],
            "company": f"Company {i % 997}" if i % 3 else "",
            "ref": f"R{i:08d}",
        },
    }


async def seed_campaign(core: Any, n: int, name: str = "bench") -> int:
    """n consented contacts in list `customers`, and an approved campaign to them. Returns its id."""
    from sqlalchemy import insert, select

    from bot.campaigns import service
    from bot.db.models import Approval, Campaign, Contact, ContactList, ListMember

    ctx = core.ctx
    now = datetime.now(UTC)
    async with ctx.sessions() as session, session.begin():
        lst = (
            await session.execute(select(ContactList).where(ContactList.name == "customers"))
        ).scalar_one_or_none()
        if lst is None:
            lst = ContactList(name="customers")
            session.add(lst)
            await session.flush()
            step = 5000
            for start in range(0, n, step):
                rows = []
                for i in range(start, min(n, start + step)):
                    r = recipient(i)
                    rows.append(
                        {
                            "id": i + 1,
                            "email": r["email"],
                            "name": r["name"],
                            "attributes": r["attributes"],
                            "consent_at": now - timedelta(days=30),
                            "consent_source": "benchmark",
                            "created_at": now,
                            "updated_at": now,
                        }
                    )
                await session.execute(insert(Contact), rows)
                await session.execute(
                    insert(ListMember), [{"list_id": lst.id, "contact_id": r["id"]} for r in rows]
                )
        campaign = Campaign(
            name=name,
            template="news",
            subject="News for {{ first_name }}",
            audience_kind="list",
            audience_name="customers",
            from_address="news@corp.example",
            from_name="Example Corp",
            created_by="sam@corp.example",
            submitted_by="sam@corp.example",
            state="approved",
        )
        session.add(campaign)
        await session.flush()
        digest = service.current_hash(ctx, campaign)
        campaign.content_hash = digest
        session.add(
            Approval(
                campaign_id=campaign.id,
                approver="maria@corp.example",
                decision="approved",
                content_hash=digest,
                expires_at=now + timedelta(days=1),
            )
        )
        return campaign.id


def fresh_folder(name: str) -> Path:
    folder = Path(os.environ.get("TMPDIR", "/tmp")) / f"postroom-bench-{name}-{os.getpid()}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def run(coro: Any) -> Any:
    return asyncio.run(coro)


class RecordingSink:
    """recording_sink.py in a subprocess: every accepted message's recipient, one per line, in a file."""

    def __init__(self, path: Path):
        self.path = path
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> RecordingSink:
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).parent / "recording_sink.py"), str(self.port), str(self.path)]
        )
        wait_port(self.port)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def received(self) -> list[str]:
        return self.path.read_text().split() if self.path.exists() else []


def tally(received: list[str], expected: set[str]) -> tuple[int, int]:
    """(lost, duplicated): expected recipients never received, and extra copies received."""
    from collections import Counter

    counts = Counter(received)
    lost = len(expected - set(counts))
    duplicated = sum(n - 1 for n in counts.values() if n > 1)
    return lost, duplicated


async def run_worker(
    database_url: str, folder: Path, port: int, campaign_id: int, **campaigns: Any
) -> dict[str, Any]:
    """One sending process: what `postroom serve` does for a campaign that is `sending`."""
    from bot.app import build_app
    from bot.campaigns.engine import DeliveryEngine

    settings = settings_for(folder, database_url, port, **campaigns)
    app = await build_app(settings)
    core = app.core
    try:
        engine = DeliveryEngine(core.ctx, worker_id=f"bench-{os.getpid()}")
        started = time.time()
        if await engine.start(campaign_id) not in ("sending",):
            pass  # already sending: this is a restart or a second worker
        result = await engine.run(campaign_id)
        return {"state": result.state, "started": started, "ended": time.time(), "sent": engine.sent_total}
    finally:
        await app.close()


def run_async(coro: Any) -> Any:
    """As `postroom` runs its loop (uvloop when installed)."""
    from bot.cli import run_coroutine

    return run_coroutine(coro)


def fresh_postgres(url: str) -> str:
    """A throwaway database beside the one named, so a benchmark never writes into a real one."""
    import asyncio
    import uuid

    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    from bot.config import normalise_database_url

    base = normalise_database_url(url)
    name = f"postroom_bench_{uuid.uuid4().hex[:8]}"

    async def make() -> None:
        engine = create_async_engine(base, isolation_level="AUTOCOMMIT")
        async with engine.connect() as conn:
            await conn.execute(text(f'CREATE DATABASE "{name}"'))
        await engine.dispose()

    asyncio.run(make())
    return base.rsplit("/", 1)[0] + "/" + name


def drop_postgres(url: str, throwaway: str) -> None:
    import asyncio

    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    from bot.config import normalise_database_url

    async def drop() -> None:
        engine = create_async_engine(normalise_database_url(url), isolation_level="AUTOCOMMIT")
        async with engine.connect() as conn:
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{throwaway.rsplit("/", 1)[1]}" WITH (FORCE)'))
        await engine.dispose()

    asyncio.run(drop())
