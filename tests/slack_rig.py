"""A Postroom with the Slack adapter on a fake Slack, driven the way Slack drives it."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from adapters.slack.adapter import SlackAdapter
from bot.app import App, build_app, load_adapter
from bot.core import Core
from tests.conftest import ADMIN, APPROVER, APPROVER2, HR, NOBODY, SENDER, make_settings
from tests.slack_fake import (
    APP_TOKEN,
    BOT_TOKEN,
    SIGNING_SECRET,
    FakeSlack,
    command_body,
    form,
    signed_headers,
    user,
)

U_HR, U_SENDER, U_APPROVER, U_APPROVER2 = "U0HANNAH", "U0SAM", "U0MARIA", "U0OMAR"
U_NOBODY, U_ADMIN, U_ALICE, U_NOMAIL = "U0NORA", "U0ADMIN", "U0ALICE", "U0NOMAIL"
APPROVALS, HR_CHANNEL = "C0APPROVALS", "C0HR"


def directory() -> dict[str, dict[str, Any]]:
    people = {
        U_HR: (HR, "Hannah Hart"),
        U_SENDER: (SENDER, "Sam Sender"),
        U_APPROVER: (APPROVER, "Maria Muster"),
        U_APPROVER2: (APPROVER2, "Omar Okafor"),
        U_NOBODY: (NOBODY, "Nora Nobody"),
        U_ADMIN: (ADMIN, "Ada Admin"),
        U_ALICE: ("alice@corp.example", "Alice Archer"),
        U_NOMAIL: (None, "Mailless Bot"),
    }
    return {uid: user(uid, email, name) for uid, (email, name) in people.items()}


def slack_section(fake: FakeSlack, **overrides: Any) -> dict[str, Any]:
    section = {
        "bot_token": BOT_TOKEN,
        "signing_secret": SIGNING_SECRET,
        "mode": "http",
        "approvals_channel": APPROVALS,
        "hr_channel": HR_CHANNEL,
        "api_url": fake.api_url,
        "update_interval_s": 0.3,
        # Slack's longest in-ack wait: a loaded CI machine must not turn an in-ack answer into a follow-up
        # (the tests of the follow-up path shorten it themselves with `quick_ack`).
        "answer_within_s": 2.5,
    }
    if overrides.get("mode") == "socket":
        section["app_token"] = APP_TOKEN
    section.update(overrides)
    return section


@dataclass
class Rig:
    app: App
    adapter: SlackAdapter
    fake: FakeSlack
    http: httpx.AsyncClient

    @property
    def core(self) -> Core:
        return self.app.core

    async def command(
        self, user_id: str, command: str, text: str = ""
    ) -> tuple[httpx.Response, float, dict[str, str]]:
        fields = command_body(self.fake, user_id, command, text)
        body = form(fields)
        started = time.monotonic()
        resp = await self.http.post("/slack/events", content=body, headers=signed_headers(body))
        return resp, time.monotonic() - started, fields

    async def say(self, user_id: str, line: str) -> str:
        """A command whose answer rides in the ack; its text."""
        command, _, text = line.partition(" ")
        resp, _elapsed, _fields = await self.command(user_id, command, text)
        assert resp.status_code == 200, resp.text
        return resp.json()["text"]

    async def interact(self, payload: dict[str, Any]) -> httpx.Response:
        body = form({"payload": json.dumps(payload)})
        return await self.http.post("/slack/events", content=body, headers=signed_headers(body))

    async def event(self, envelope: dict[str, Any], **headers: str) -> httpx.Response:
        body = json.dumps(envelope).encode()
        return await self.http.post(
            "/slack/events",
            content=body,
            headers={**signed_headers(body, content_type="application/json"), **headers},
        )

    def quick_ack(self, seconds: float = 0.7) -> None:
        """Answer in the ack only within `seconds`, so a slowed-down lookup makes the answer follow."""
        self.adapter.cfg = self.adapter.cfg.model_copy(update={"answer_within_s": seconds})

    def answers(self) -> list[str]:
        """Texts of answers that went out after the ack: response URLs, ephemerals, DMs."""
        texts = [body.get("text", "") for _key, body in self.fake.responses]
        texts += [c.params.get("text", "") for c in self.fake.of("chat.postEphemeral")]
        return texts


@asynccontextmanager
async def running(
    database_url: str, smtp_port: int, tmp_path: Path, fake: FakeSlack, **overrides: Any
) -> AsyncIterator[Rig]:
    settings = make_settings(database_url, smtp_port, tmp_path, slack=slack_section(fake, **overrides))
    app = await build_app(settings)
    core = app.core
    try:
        adapter = load_adapter("slack", settings)
        assert isinstance(adapter, SlackAdapter)
        app.attach(adapter)
        await adapter.start(core)
        transport = httpx.ASGITransport(app=app.web())
        async with httpx.AsyncClient(transport=transport, base_url="http://postroom.test") as http:
            yield Rig(app, adapter, fake, http)
    finally:
        await app.close()


async def load_customers(core: Core, tmp_path: Path) -> None:
    """Two consented external contacts (and one without consent) in the list `customers`."""
    from bot.contacts.importer import import_contacts
    from tests.test_campaign_flow import CSV

    path = tmp_path / "customers.csv"
    path.write_text(CSV)
    await import_contacts(core.ctx, path, "customers")
