"""Slack HTTP mode, approval cards in Block Kit: one click to delivered mail, exactly once."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from sqlalchemy import select

from bot.db.models import Campaign
from tests.slack_fake import Call, click_payload, form, signed_headers
from tests.slack_rig import (
    APPROVALS,
    U_APPROVER,
    U_APPROVER2,
    U_NOBODY,
    U_SENDER,
    Rig,
    load_customers,
)


async def submitted(rig: Rig, tmp_path: Path) -> Call:
    """`spring` submitted from Slack; the approval card it posted."""
    await load_customers(rig.core, tmp_path)
    text = await rig.say(
        U_SENDER, '/campaign new spring --to customers --template welcome --subject "Hi {{ first_name }}"'
    )
    assert "Draft campaign “spring”" in text
    text = await rig.say(U_SENDER, "/campaign submit spring")
    assert "Submitted “spring” for approval to the approvers" in text
    cards = [c for c in rig.fake.of("chat.postMessage") if c.params["channel"] == APPROVALS]
    assert len(cards) == 1
    return cards[0]


async def state(rig: Rig) -> str:
    async with rig.core.ctx.sessions() as s:
        return (await s.execute(select(Campaign.state).where(Campaign.name == "spring"))).scalar_one()


def block_types(blocks: list[dict]) -> list[str]:
    return [b["type"] for b in blocks]


async def test_the_card_is_block_kit_with_opaque_values_and_a_confirmed_reject(
    rig: Rig, tmp_path: Path
) -> None:
    card = await submitted(rig, tmp_path)
    blocks = card.params["blocks"]
    assert blocks[0] == {
        "type": "header",
        "block_id": blocks[0]["block_id"],
        "text": {
            "type": "plain_text",
            "text": "Approval needed: campaign “spring”, submission 1",
            "emoji": True,
        },
    }
    fields = [f["text"] for b in blocks if b["type"] == "section" for f in b.get("fields", [])]
    assert any(f.startswith("*Audience*\nlist customers: 2 recipients") for f in fields)
    assert any(f.startswith("*Subject*\nHi Lena") for f in fields)
    link = next(
        b["text"]["text"]
        for b in blocks
        if b["type"] == "section" and "text" in b and "/preview/" in b["text"]["text"]
    )
    assert link.startswith("<http://127.0.0.1:8080/preview/") and "|Preview>" in link
    approve, reject = next(b["elements"] for b in blocks if b["type"] == "actions")
    async with rig.core.ctx.sessions() as s:
        cid = str((await s.execute(select(Campaign.id))).scalar_one())
    assert (approve["action_id"], approve["value"], approve["style"]) == ("campaign.approve", cid, "primary")
    assert (reject["action_id"], reject["value"], reject["style"]) == ("campaign.reject", cid, "danger")
    assert reject["confirm"]["style"] == "danger" and "Reject “spring”?" in reject["confirm"]["text"]["text"]
    assert len({b["block_id"] for b in blocks}) == len(blocks)


async def test_one_click_approves_sends_once_and_replaces_the_card(rig: Rig, smtp, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    card = await submitted(rig, tmp_path)
    resp = await rig.interact(click_payload(rig.fake, U_APPROVER, card, "campaign.approve"))
    assert resp.status_code == 200 and resp.text == ""  # acked at once; the core answers after

    await asyncio.to_thread(smtp.handler.wait_for, 2)
    await asyncio.wait_for(rig.app.drain(), 20)
    assert sorted(r for m in smtp.messages for r in m.rcpt_tos) == ["lena@example.com", "raj@example.net"]
    assert await state(rig) == "completed"

    final = await rig.fake.wait_for(
        lambda: [
            c
            for c in rig.fake.of("chat.update")
            if "sent — 2 delivered" in json.dumps(c.params["blocks"], ensure_ascii=False)
        ]
    )
    first = rig.fake.of("chat.update")[0]
    assert first.params["channel"] == APPROVALS and first.params["ts"] == card.params["_ts"]
    assert "Approved by maria@corp.example" in json.dumps(first.params["blocks"], ensure_ascii=False)
    for update in (first, final[-1]):
        assert "actions" not in block_types(update.params["blocks"])  # no buttons once decided
        assert not {b["block_id"] for b in update.params["blocks"]} & {
            b["block_id"] for b in card.params["blocks"]
        }
    await rig.fake.wait_for(lambda: any(t.startswith("Approved “spring”") for t in rig.answers()))
    assert rig.fake.responses[-1][1]["response_type"] == "ephemeral"


async def test_a_double_click_has_one_effect(rig: Rig, smtp, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    card = await submitted(rig, tmp_path)
    clicks = [
        click_payload(rig.fake, who, card, "campaign.approve")
        for who in (U_APPROVER, U_APPROVER, U_APPROVER2)
    ]
    responses = await asyncio.gather(*(rig.interact(c) for c in clicks))
    assert [r.status_code for r in responses] == [200, 200, 200]
    await rig.fake.wait_for(lambda: len(rig.answers()) == 3)
    await asyncio.wait_for(rig.app.drain(), 20)
    answers = rig.answers()
    assert sum(a.startswith("Approved “spring”") for a in answers) == 1
    # Each losing click is told something (the exact words depend on where the race was lost).
    assert len(answers) == 3 and all(answers)
    assert await state(rig) == "completed"
    assert sorted(r for m in smtp.messages for r in m.rcpt_tos) == ["lena@example.com", "raj@example.net"]


async def test_a_click_by_someone_who_is_not_an_approver_changes_nothing(
    rig: Rig, smtp, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    card = await submitted(rig, tmp_path)
    for who in (U_NOBODY, U_SENDER):  # no role; the sender who asked
        resp = await rig.interact(click_payload(rig.fake, who, card, "campaign.approve"))
        assert resp.status_code == 200
    await rig.fake.wait_for(lambda: len(rig.answers()) == 2)
    assert rig.answers() == ["Only approvers can approve or reject campaigns."] * 2
    assert await state(rig) == "pending_approval"
    assert rig.fake.of("chat.update") == [] and smtp.messages == []


async def test_reject_asks_for_a_reason_in_a_modal(rig: Rig, smtp, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    card = await submitted(rig, tmp_path)
    click = click_payload(rig.fake, U_APPROVER, card, "campaign.reject")
    assert (await rig.interact(click)).status_code == 200
    opened = (await rig.fake.wait_for(lambda: rig.fake.of("views.open")))[0]
    assert opened.params["trigger_id"] == click["trigger_id"]
    view = opened.params["view"]
    assert view["type"] == "modal" and view["callback_id"] == "postroom.reason"
    assert await state(rig) == "pending_approval"  # a click alone decides nothing

    def submission(reason: str) -> dict:
        return {
            "type": "view_submission",
            "team": {"id": "T0POSTROOM"},
            "user": {"id": U_APPROVER, "name": "maria", "team_id": "T0POSTROOM"},
            "api_app_id": "A0POSTROOM",
            "token": "legacy",
            "trigger_id": "trig.view",
            "view": {
                **view,
                "id": "V0REASON",
                "team_id": "T0POSTROOM",
                "state": {
                    "values": {"reason": {"reason_input": {"type": "plain_text_input", "value": reason}}}
                },
            },
        }

    blank = await rig.interact(submission("   "))
    assert blank.status_code == 200 and blank.json()["response_action"] == "errors"
    assert await state(rig) == "pending_approval"

    resp = await rig.interact(submission("Subject: needs the legal footer"))
    assert resp.status_code == 200 and resp.text == ""  # the modal closes
    update = (await rig.fake.wait_for(lambda: rig.fake.of("chat.update")))[0]
    assert "Rejected by maria@corp.example: Subject: needs the legal footer" in json.dumps(
        update.params["blocks"], ensure_ascii=False
    )
    assert "actions" not in block_types(update.params["blocks"])
    answer = (await rig.fake.wait_for(lambda: rig.fake.of("chat.postEphemeral")))[0]
    assert answer.params["user"] == U_APPROVER and answer.params["text"].startswith("Rejected “spring”")
    assert await state(rig) == "rejected" and smtp.messages == []


async def test_progress_updates_to_one_message_are_throttled(rig: Rig) -> None:
    from bot.events import Card, Conversation, Message

    ref = await rig.adapter.send(
        Conversation("slack", APPROVALS, "channel"), Message("start", Card("Sending"))
    )
    for i in range(6):
        await rig.adapter.update(ref, Message(f"progress {i}", Card("Sending", progress=i / 5)))
    assert [c.params["text"] for c in rig.fake.of("chat.update")] == ["progress 0"]
    await rig.fake.wait_for(lambda: len(rig.fake.of("chat.update")) == 2)
    first, last = rig.fake.of("chat.update")
    assert last.params["text"] == "progress 5"  # the ones in between were folded into the latest
    assert last.at - first.at >= 0.3 * 0.9  # slack.update_interval_s in this rig, with timer slack


async def test_a_rate_limited_post_is_retried_after_retry_after(rig: Rig) -> None:
    from bot.events import Card, Message

    rig.fake.fail(
        "chat.postMessage",
        status=429,
        headers={"Retry-After": "1"},
        body={"ok": False, "error": "ratelimited"},
    )
    refs = await rig.app.messengers.post("approvals", Message("hello", Card("Hello")), subject="test:1")
    first, second = rig.fake.of("chat.postMessage")
    assert second.at - first.at >= 1.0
    assert [r.id for r in refs] == [second.params["_ts"]]


async def test_a_forged_click_changes_nothing(rig: Rig, smtp, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    card = await submitted(rig, tmp_path)
    body = form({"payload": json.dumps(click_payload(rig.fake, U_APPROVER, card, "campaign.approve"))})
    resp = await rig.http.post(
        "/slack/events", content=body, headers=signed_headers(body, secret="wrong-secret")
    )
    assert resp.status_code == 401
    assert await state(rig) == "pending_approval" and rig.fake.of("chat.update") == []
