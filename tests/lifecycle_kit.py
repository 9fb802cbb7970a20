"""Shared set-up for the HR lifecycle tests: a rules file, a webhook secret, signed requests."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select

from bot.app import build_app
from bot.db.models import Group, Membership
from bot.hr.webhook import sign
from tests.conftest import HR, ChatBot, make_settings

SECRET = "hr-webhook-secret-0123456789"
RULES = """\
groups:
  - address: all-staff
    name: Everyone
    owners: [hannah@corp.example]
    members: everyone
  - address: eng
    owners: [alice@corp.example]
    post: members
    members:
      department: Engineering
  - address: sales
    members: {department: Sales}
  - address: berlin
    members:
      location: [Berlin, Potsdam]
    except:
      title: Contractor
  - address: partners
    kind: external-allowed
    post: anyone
  - address: social
"""


def write_rules(tmp_path: Path, text: str = RULES) -> Path:
    path = tmp_path / "groups.yaml"
    path.write_text(text)
    return path


async def lifecycle_bot(
    database_url: str, smtp_port: int, tmp_path: Path, rules: str = RULES, **sections: Any
) -> AsyncIterator[ChatBot]:
    import io

    from adapters.console import ConsoleAdapter
    from bot.groups import planner

    groups = {"rules_file": str(write_rules(tmp_path, rules)), **sections.pop("groups", {})}
    settings = make_settings(
        database_url,
        smtp_port,
        tmp_path,
        groups=groups,
        hr={"webhook_secret": SECRET, **sections.pop("hr", {})},
        **sections,
    )
    app = await build_app(settings)
    out = io.StringIO()
    console = ConsoleAdapter(HR, out=out, prompt=False)
    app.attach(console)
    await console.start(app.core)
    async with app.ctx.sessions() as session, session.begin():
        await planner.sync_group_definitions(session, app.rules.current(), settings, actor="test", via="test")
    try:
        yield ChatBot(app, console, out)
    finally:
        await app.close()


def hr_event(
    kind: str,
    event_id: str,
    emp_id: str,
    email: str | None,
    at: str,
    name: str | None = None,
    **attributes: Any,
) -> dict[str, Any]:
    employee: dict[str, Any] = {"id": emp_id, "attributes": attributes}
    if email is not None:
        employee["email"] = email
    if name is not None:
        employee["name"] = name
    return {"event_id": event_id, "type": kind, "occurred_at": at, "employee": employee}


def signed(body: bytes, *, secret: str = SECRET, ts: int | None = None) -> dict[str, str]:
    stamp = int(time.time()) if ts is None else ts
    return {
        "X-Postroom-Timestamp": str(stamp),
        "X-Postroom-Signature": sign(secret, stamp, body),
        "Content-Type": "application/json",
    }


async def post_event(client: httpx.AsyncClient, payload: dict[str, Any]) -> httpx.Response:
    body = json.dumps(payload).encode()
    return await client.post("/hooks/hr", content=body, headers=signed(body))


def web_client(bot: ChatBot) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=bot.app.web()), base_url="http://postroom")


async def groups_of(bot: ChatBot, email: str) -> dict[str, str]:
    """{group local part: membership source} for one address."""
    async with bot.core.ctx.sessions() as s:
        rows = (
            await s.execute(
                select(Group.local_part, Membership.source)
                .join(Membership, Membership.group_id == Group.id)
                .where(Membership.email == email)
            )
        ).all()
    return dict(rows)
