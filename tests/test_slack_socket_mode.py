"""Slack Socket Mode: the same adapter through bolt's AsyncSocketModeHandler and a local WebSocket."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from sqlalchemy import select

from bot.db.models import Campaign, Membership
from tests.slack_fake import APP_TOKEN, click_payload, command_body, event_envelope, user
from tests.slack_rig import APPROVALS, U_APPROVER, U_HR, U_SENDER, Rig, load_customers

SLACK_OVERRIDES = {
    "mode": "socket",
    "signing_secret": None,
}  # the `rig` fixture (tests/conftest.py) reads this


async def command(rig: Rig, user_id: str, line: str) -> dict:
    name, _, text = line.partition(" ")
    ack = await rig.fake.envelope("slash_commands", command_body(rig.fake, user_id, name, text))
    return ack["payload"]


async def test_socket_mode_connects_with_the_app_token_and_serves_no_http_route(rig: Rig) -> None:
    opened = (await rig.fake.wait_for(lambda: rig.fake.of("apps.connections.open")))[0]
    bot_calls = rig.fake.of("auth.test")[0]
    assert opened.params["_auth"] != bot_calls.params["_auth"]  # the app-level token, not the bot token
    import hashlib

    assert opened.params["_auth"] == hashlib.sha256(f"Bearer {APP_TOKEN}".encode()).hexdigest()[:8]
    assert rig.adapter.web_routes() == []
    resp = await rig.http.post("/slack/events", content=b"{}")
    assert resp.status_code == 404


async def test_a_command_and_an_approval_click_over_socket_mode(rig: Rig, smtp, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    payload = await command(rig, U_HR, "/newgroup eng")
    assert (
        payload["response_type"] == "ephemeral"
        and "Created the internal group eng@corp.example" in payload["text"]
    )
    payload = await command(rig, U_HR, "/addgroup eng <@U0ALICE|alice>")
    assert payload["text"].startswith("Added alice@corp.example to eng@corp.example")
    async with rig.core.ctx.sessions() as s:
        assert (await s.execute(select(Membership.email))).scalars().all() == ["alice@corp.example"]

    await load_customers(rig.core, tmp_path)
    await command(rig, U_SENDER, "/campaign new spring --to customers --template welcome")
    payload = await command(rig, U_SENDER, "/campaign submit spring")
    assert "Submitted “spring”" in payload["text"]
    card = next(c for c in rig.fake.of("chat.postMessage") if c.params["channel"] == APPROVALS)
    ack = await rig.fake.envelope(
        "interactive", click_payload(rig.fake, U_APPROVER, card, "campaign.approve")
    )
    assert "payload" not in ack or not ack["payload"]  # acknowledged with nothing to show
    await asyncio.to_thread(smtp.handler.wait_for, 2)
    await asyncio.wait_for(rig.app.drain(), 20)
    assert sorted(r for m in smtp.messages for r in m.rcpt_tos) == ["lena@example.com", "raj@example.net"]
    update = (await rig.fake.wait_for(lambda: rig.fake.of("chat.update")))[0]
    assert "Approved by maria@corp.example" in json.dumps(update.params["blocks"], ensure_ascii=False)
    async with rig.core.ctx.sessions() as s:
        assert (await s.execute(select(Campaign.state))).scalar_one() == "completed"


async def test_a_directory_event_over_socket_mode(rig: Rig) -> None:
    from bot.db.models import Person

    envelope = event_envelope({"type": "team_join", "user": user("U0DANA", "dana@corp.example", "Dana Diaz")})
    ack = await rig.fake.envelope("events_api", envelope)
    assert ack["envelope_id"]
    deadline = asyncio.get_running_loop().time() + 10
    while asyncio.get_running_loop().time() < deadline:
        async with rig.core.ctx.sessions() as s:
            found = (await s.execute(select(Person.email))).scalars().all()
        if found:
            break
        await asyncio.sleep(0.02)  # bounded poll of the database
    assert found == ["dana@corp.example"]
