"""Slack HTTP mode, slash commands: signed requests through the real bolt app in Postroom's web app."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sqlalchemy import func, select

from bot.db.models import Group, Membership
from tests.slack_rig import (
    APPROVALS,
    U_ALICE,
    U_HR,
    U_NOBODY,
    U_NOMAIL,
    U_SENDER,
    Rig,
    load_customers,
)


async def members(rig: Rig) -> list[str]:
    async with rig.core.ctx.sessions() as s:
        return sorted((await s.execute(select(Membership.email))).scalars().all())


async def test_slash_command_is_answered_in_the_ack_with_mentions_resolved(rig: Rig) -> None:
    resp, elapsed, _ = await rig.command(U_HR, "/newgroup", 'eng "Engineering team"')
    assert resp.status_code == 200 and elapsed < 3.0  # Slack's hard limit; the benchmark measures the usual
    assert "Created the internal group eng@corp.example" in resp.json()["text"]

    text = "eng <@U0ALICE|alice> <mailto:bob@corp.example|bob@corp.example> --unknown-ok"
    resp, elapsed, _ = await rig.command(U_HR, "/addgroup", text)
    assert resp.status_code == 200 and elapsed < 3.0
    assert resp.json()["text"].startswith("Added alice@corp.example, bob@corp.example to eng@corp.example")
    assert await members(rig) == ["alice@corp.example", "bob@corp.example"]
    # the actor and the mention were each looked up once, then cached
    looked_up = sorted(c.params["user"] for c in rig.fake.of("users.info"))
    assert looked_up == [U_ALICE, U_HR]
    assert rig.fake.responses == []  # nothing followed: the answer was in the ack


async def test_slow_work_acks_at_once_and_the_answer_follows_by_response_url(rig: Rig) -> None:
    await rig.say(U_HR, "/newgroup eng")
    rig.quick_ack()
    rig.fake.delay["users.info"] = 1.0  # the mention's directory lookup is slow today
    resp, elapsed, fields = await rig.command(U_HR, "/addgroup", "eng <@U0ALICE>")
    assert resp.status_code == 200 and elapsed < 1.0
    assert resp.json()["text"] == "Working on it…"
    await rig.fake.wait_for(lambda: rig.fake.responses)
    key, body = rig.fake.responses[0]
    assert fields["response_url"].endswith(key)
    assert body["response_type"] == "ephemeral" and body["replace_original"] is False
    assert body["text"].startswith("Added alice@corp.example to eng@corp.example")
    assert await members(rig) == ["alice@corp.example"]


async def test_when_the_response_url_fails_the_answer_still_reaches_the_person(rig: Rig) -> None:
    await rig.say(U_HR, "/newgroup eng")
    rig.quick_ack()
    rig.fake.delay["users.info"] = 1.0
    rig.fake.response_status = 404
    rig.fake.fail("chat.postEphemeral", body={"ok": False, "error": "channel_not_found"})
    await rig.command(U_HR, "/addgroup", "eng <@U0ALICE>")
    dm = await rig.fake.wait_for(
        lambda: [c for c in rig.fake.of("chat.postMessage") if c.params["channel"] == U_HR]
    )
    assert dm[0].params["text"].startswith("Added alice@corp.example")
    assert rig.fake.of("chat.postEphemeral")[0].params["user"] == U_HR


async def test_a_mention_without_an_email_is_refused_and_changes_nothing(rig: Rig) -> None:
    await rig.say(U_HR, "/newgroup eng")
    text = await rig.say(U_HR, f"/addgroup eng <@{U_NOMAIL}|mailless> alice@corp.example --unknown-ok")
    assert "@mailless has no email address I can read in Slack" in text
    assert await members(rig) == []


async def test_someone_without_a_role_gets_the_core_refusal(rig: Rig) -> None:
    text = await rig.say(U_NOBODY, "/newgroup sales")
    assert "HR" in text and "role" in text
    async with rig.core.ctx.sessions() as s:
        assert (await s.execute(select(func.count()).select_from(Group))).scalar_one() == 0


async def test_a_card_that_cannot_be_posted_is_reported_to_the_sender(rig: Rig, tmp_path: Path) -> None:
    await load_customers(rig.core, tmp_path)
    await rig.say(U_SENDER, "/campaign new spring --to customers --template welcome")
    rig.fake.fail("chat.postMessage", body={"ok": False, "error": "not_in_channel"})
    text = await rig.say(U_SENDER, "/campaign submit spring")
    assert "Submitted “spring”" in text
    assert f"I couldn't post to <#{APPROVALS}> (Slack said: not_in_channel)" in text and "/invite" in text


async def test_the_same_command_delivered_twice_runs_once(rig: Rig) -> None:
    from tests.slack_fake import command_body, form, signed_headers

    await rig.say(U_HR, "/newgroup eng")
    body = form(command_body(rig.fake, U_HR, "/addgroup", "eng alice@corp.example --unknown-ok"))
    first, second = await asyncio.gather(
        *(rig.http.post("/slack/events", content=body, headers=signed_headers(body)) for _ in range(2))
    )
    assert first.status_code == second.status_code == 200
    texts = sorted(r.text for r in (first, second))
    assert texts[0] == "" and "Added alice@corp.example" in texts[1]  # the redelivery gets an empty ack
    assert await members(rig) == ["alice@corp.example"]


async def test_the_umbrella_command_reaches_every_command(rig: Rig) -> None:
    text = await rig.say(U_HR, "/postroom newgroup eng")
    assert text.startswith("Created the internal group eng@corp.example")
    assert "/addgroup" in await rig.say(U_HR, "/postroom")  # alone: the help
