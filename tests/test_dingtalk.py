"""The DingTalk adapter: the real DingTalkStreamClient (with Postroom's fixes) against a fake Stream
gateway and fake OpenAPI on loopback; real core, databases and SMTP."""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from dingtalk_stream import DingTalkStreamClient
from sqlalchemy import func, select

from adapters.console import ConsoleAdapter
from adapters.dingtalk import DingTalkAdapter
from bot.app import App, build_app, load_adapter
from bot.contacts.importer import import_contacts
from bot.core import Core
from bot.db.models import Approval, Group, Identity, Membership, Person
from tests.conftest import SENDER, make_settings
from tests.fake_dingtalk import FakeDingTalk
from tests.loopback import serve, wait_until

USERS = {
    "hannah01": {"name": "韩娜", "org_email": "hannah@corp.example"},
    "maria01": {"name": "Maria", "email": "maria@corp.example"},
    "ivan01": {"name": "Ivan", "org_email": "ivan@corp.example", "dept_id_list": [7], "title": "Engineer"},
}


@dataclass
class DingWorld:
    app: App
    adapter: DingTalkAdapter
    console: ConsoleAdapter
    fake: FakeDingTalk
    url: str

    @property
    def core(self) -> Core:
        return self.app.core

    def message(
        self,
        text: str,
        msg_id: str,
        *,
        sender: str = "hannah01",
        group: bool = True,
        webhook_valid: bool = True,
    ) -> dict:  # type: ignore[type-arg]
        expires = int(time.time() * 1000) + (3_600_000 if webhook_valid else -1000)
        return self.fake.bot_message(
            msgtype="text",
            text={"content": text},
            msgId=msg_id,
            senderStaffId=sender,
            senderId=f"$:{sender}",
            senderNick="韩娜",
            senderCorpId="ding-corp",
            conversationType="2" if group else "1",
            conversationId="cidHR",
            isInAtList=True,
            robotCode="ding-app",
            sessionWebhook=f"{self.url}/webhook/{msg_id}",
            sessionWebhookExpiredTime=expires,
            chatbotUserId="bot",
            createAt=int(time.time() * 1000),
        )

    async def acked(self, message_id: str) -> dict:  # type: ignore[type-arg]
        await wait_until(lambda: self.fake.ack_for(message_id) is not None)
        ack = self.fake.ack_for(message_id)
        assert ack is not None
        return ack


def ding_settings(database_url: str, smtp_port: int, tmp_path: Path, url: str):  # type: ignore[no-untyped-def]
    return make_settings(
        database_url,
        smtp_port,
        tmp_path,
        dingtalk={
            "client_id": "ding-app",
            "client_secret": "ding-secret",
            "card_template_id": "approval.schema",
            "corp_id": "ding-corp",
            "approvals_conversation": "cidApprovers",
            "hr_conversation": "cidHR",
            "openapi_endpoint": url,
            "oapi_endpoint": url,
            "timeout_s": 5,
        },
    )


@pytest.fixture
async def ding(database_url: str, smtp, tmp_path: Path) -> AsyncIterator[DingWorld]:  # type: ignore[no-untyped-def]
    fake = FakeDingTalk(users={k: dict(v) for k, v in USERS.items()})
    async with serve(fake.app()) as url:
        settings = ding_settings(database_url, smtp.port, tmp_path, url)
        app = await build_app(settings)
        core = app.core
        adapter = load_adapter("dingtalk", settings, backoff_base=0.05)
        assert isinstance(adapter, DingTalkAdapter)
        console = ConsoleAdapter(SENDER, out=io.StringIO(), prompt=False)
        for a in (adapter, console):
            app.attach(a)
            await a.start(core)
        await wait_until(lambda: fake.online)
        try:
            yield DingWorld(app, adapter, console, fake, url)
        finally:
            await app.close()


async def test_a_group_command_is_answered_once_through_the_session_webhook(ding: DingWorld) -> None:
    assert isinstance(ding.adapter.client, DingTalkStreamClient)
    subscriptions = ding.fake.opens[0]["subscriptions"]
    assert {"type": "EVENT", "topic": "*"} in subscriptions
    assert {"type": "CALLBACK", "topic": "/v1.0/card/instances/callback"} in subscriptions
    first = await ding.fake.push(ding.message("@Postroom  /newgroup eng", "msg-1"))
    ack = await ding.acked(first)
    assert ack["code"] == 200
    again = await ding.fake.push(ding.message("@Postroom  /newgroup eng", "msg-1"))  # redelivered
    await ding.acked(again)
    await ding.adapter.settle()
    replies = ding.fake.made("/webhook/msg-1")
    assert (
        len(replies) == 1 and "已创建内部邮件组 eng@corp.example" in replies[0]["markdown"]["text"]
    )  # zh_CN
    await ding.fake.push(ding.message("@Postroom /addgroup eng alice@corp.example --unknown-ok", "msg-1b"))
    await wait_until(lambda: ding.fake.made("/webhook/msg-1b"))
    assert (
        "已将 alice@corp.example 添加到 eng@corp.example"
        in ding.fake.made("/webhook/msg-1b")[0]["markdown"]["text"]
    )
    async with ding.core.ctx.sessions() as s:
        assert (await s.execute(select(func.count()).select_from(Group))).scalar_one() == 1
        identity = (await s.execute(select(Identity).where(Identity.user_id == "hannah01"))).scalar_one()
    assert identity.email == "hannah@corp.example"  # by staff id, never by nickname

    await ding.fake.push(ding.message("/groups", "msg-2", webhook_valid=False))
    await wait_until(lambda: ding.fake.made("/v1.0/robot/groupMessages/send"))
    sent = ding.fake.made("/v1.0/robot/groupMessages/send")[0]
    assert sent["openConversationId"] == "cidHR" and sent["robotCode"] == "ding-app"
    assert "eng@corp.example" in json.loads(sent["msgParam"])["text"]
    assert ding.fake.made("/webhook/msg-2") == []


async def test_a_card_click_approves_once_and_updates_the_card(ding: DingWorld, smtp, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    csv = tmp_path / "c.csv"
    csv.write_text(
        "email,name,consent_at,consent_source\nlena@example.com,Lena,2026-03-02T10:15:00+00:00,form\n"
    )
    await import_contacts(ding.core.ctx, csv, "customers")
    await ding.console.say("/campaign new spring --to customers --template welcome")
    await ding.console.say("/campaign submit spring")
    created = ding.fake.made("/v1.0/card/instances/createAndDeliver")
    assert len(created) == 1
    card = created[0]
    assert card["callbackType"] == "STREAM" and card["openSpaceId"] == "dtv1.card//IM_GROUP.cidApprovers"
    params = card["cardData"]["cardParamMap"]
    assert (params["btn1_label"], params["btn2_label"], params["has_buttons"]) == ("批准", "拒绝", "true")
    assert "申请人" in params["content"] and all(isinstance(v, str) for v in params.values())

    forged = {
        "outTrackId": card["outTrackId"],
        "userId": "maria01",
        "corpId": "ding-other",
        "content": json.dumps(
            {
                "cardPrivateData": {
                    "params": {"action_id": params["btn1_action"], "value": params["btn1_value"]}
                }
            }
        ),
    }
    assert (await ding.acked(await ding.fake.push(ding.fake.card_click(forged))))[
        "code"
    ] == 200  # logged, ignored
    await ding.adapter.settle()
    async with ding.core.ctx.sessions() as s:
        assert (await s.execute(select(func.count()).select_from(Approval))).scalar_one() == 0
    click = {
        "outTrackId": card["outTrackId"],
        "userId": "maria01",
        "corpId": "ding-corp",
        "type": "actionCallback",
        "spaceType": "IM",
        "spaceId": "cidApprovers",
        "content": json.dumps(
            {
                "cardPrivateData": {
                    "actionIds": ["btn1"],
                    "params": {"action_id": params["btn1_action"], "value": params["btn1_value"]},
                }
            }
        ),
    }
    for _ in range(3):  # the platform redelivers; one approval, one send
        await ding.acked(await ding.fake.push(ding.fake.card_click(click)))
    await ding.adapter.settle()
    await wait_until(lambda: len(smtp.messages) >= 1)
    await ding.app.drain(10)
    assert [r for m in smtp.messages for r in m.rcpt_tos] == ["lena@example.com"]
    async with ding.core.ctx.sessions() as s:
        assert (await s.execute(select(Approval.approver))).scalars().all() == ["maria@corp.example"]
    updates = ding.fake.made("/v1.0/card/instances", "PUT")
    assert updates and updates[0]["outTrackId"] == card["outTrackId"]
    decided = updates[0]["cardData"]["cardParamMap"]
    assert decided["has_buttons"] == "false" and "maria@corp.example" in decided["status"]
    told = ding.fake.made("/v1.0/robot/oToMessages/batchSend")
    assert len(told) == 1 and told[0]["userIds"] == ["maria01"]


async def test_address_book_joiner_and_leaver(ding: DingWorld) -> None:
    born = int(time.time() * 1000)
    join = await ding.fake.push(
        ding.fake.event(
            "user_add_org", "ev-1", {"timeStamp": "1", "userId": ["ivan01"]}, born_ms=born - 60_000
        )
    )
    ack = await ding.acked(join)
    assert ack["code"] == 200 and json.loads(ack["data"]) == {"status": "SUCCESS", "message": "success"}
    await ding.adapter.settle()
    async with ding.core.ctx.sessions() as s:
        person = (await s.execute(select(Person).where(Person.employee_id == "dingtalk:ivan01"))).scalar_one()
    assert (person.email, person.status, person.attributes) == (
        "ivan@corp.example",
        "active",
        {"dingtalk_dept_ids": "7", "dingtalk_title": "Engineer"},
    )
    ding.fake.users["ivan01"]["title"] = "Staff Engineer"  # a change in the directory
    change = ding.fake.event(
        "user_modify_org",
        "ev-1b",
        {
            "timeStamp": "1",
            "userId": ["ivan01"],
            "diffInfo": [{"userid": "ivan01", "prev": {"name": "Ivan"}, "curr": {"name": "Ivan"}}],
        },
        born_ms=born - 30_000,
    )
    await ding.acked(await ding.fake.push(change))
    await ding.adapter.settle()
    async with ding.core.ctx.sessions() as s:
        person = (await s.execute(select(Person).where(Person.employee_id == "dingtalk:ivan01"))).scalar_one()
    assert person.attributes["dingtalk_title"] == "Staff Engineer"
    await ding.console.say("/as hannah@corp.example")
    await ding.console.say("/newgroup eng")
    await ding.console.say("/addgroup eng ivan@corp.example")
    del ding.fake.users["ivan01"]  # gone from the directory: only the kept mapping knows the email
    leave = ding.fake.event("user_leave_org", "ev-2", {"timeStamp": "2", "userId": ["ivan01"]}, born_ms=born)
    for _ in range(2):
        leave["headers"]["messageId"] = f"frame-leave-{_}"
        await ding.acked(await ding.fake.push(leave))
    await ding.adapter.settle()
    async with ding.core.ctx.sessions() as s:
        assert (await s.execute(select(func.count()).select_from(Membership))).scalar_one() == 0
        assert (
            await s.execute(select(Person.status).where(Person.employee_id == "dingtalk:ivan01"))
        ).scalar_one() == "left"


async def test_disconnect_frame_is_acked_then_the_client_reconnects_with_a_new_ticket(
    ding: DingWorld,
) -> None:
    bye = await ding.fake.push(ding.fake.system("disconnect"))
    await ding.acked(bye)
    await wait_until(lambda: ding.fake.connections == 2 and ding.fake.online)
    assert len(ding.fake.opens) == 2 and ding.fake.closed == 1
    await ding.acked(await ding.fake.push(ding.message("/groups", "msg-after")))
    await ding.adapter.settle()
    assert len(ding.fake.made("/webhook/msg-after")) == 1


async def test_a_slow_directory_lookup_does_not_delay_the_ack(ding: DingWorld) -> None:
    ding.fake.user_gate = asyncio.Event()
    frame_id = await ding.fake.push(ding.message("/groups", "msg-slow"))
    ack = await ding.acked(frame_id)  # acknowledged while the lookup is still waiting
    assert ack["code"] == 200
    await wait_until(lambda: ding.fake.made("/topapi/v2/user/get"))
    assert ding.fake.made("/webhook/msg-slow") == []
    ding.fake.user_gate.set()
    await ding.adapter.settle()
    assert len(ding.fake.made("/webhook/msg-slow")) == 1


async def test_stop_returns_quickly_and_nothing_reconnects(ding: DingWorld) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.wait_for(ding.adapter.stop(), 5)
    assert loop.time() - started < 5
    assert ding.adapter._run is not None and ding.adapter._run.done()
    await wait_until(lambda: not ding.fake.online)
    opens = len(ding.fake.opens)
    await asyncio.sleep(0.3)  # a reconnect would happen within the 0.05 s backoff
    assert len(ding.fake.opens) == opens


async def test_stop_while_the_gateway_is_unreachable(database_url: str, smtp, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings = ding_settings(database_url, smtp.port, tmp_path, "http://127.0.0.1:9")
    app = await build_app(settings)
    core = app.core
    adapter = load_adapter("dingtalk", settings, backoff_base=0.05)
    assert adapter is not None
    app.attach(adapter)
    await adapter.start(core)
    try:
        await wait_until(lambda: adapter.client.failures >= 3)  # type: ignore[attr-defined]
        await asyncio.wait_for(adapter.stop(), 5)
        assert adapter._run.done()  # type: ignore[attr-defined]
    finally:
        await app.close()


async def test_bad_frames_are_refused_and_change_nothing(ding: DingWorld) -> None:
    bad_json = ding.fake.bot_message()
    bad_json["data"] = "{not json"
    assert (await ding.acked(await ding.fake.push(bad_json)))["code"] == 400
    no_text = ding.fake.bot_message(msgtype="text", msgId="m-x", senderStaffId="hannah01")
    assert (await ding.acked(await ding.fake.push(no_text)))["code"] == 400
    odd_card = ding.fake.card_click({"outTrackId": "x", "userId": "maria01", "content": "{broken"})
    assert (await ding.acked(await ding.fake.push(odd_card)))["code"] == 400
    foreign = ding.fake.card_click(
        {
            "outTrackId": "x",
            "userId": "maria01",
            "corpId": "ding-corp",
            "content": json.dumps({"cardPrivateData": {"params": {}}}),
        }
    )
    assert (await ding.acked(await ding.fake.push(foreign)))["code"] == 200  # not ours: logged and ignored
    unknown = await ding.fake.push(ding.fake.event("org_dept_create", "ev-9", {"deptId": [1]}))
    assert json.loads((await ding.acked(unknown))["data"])["status"] == "SUCCESS"
    other_corp = ding.fake.event("user_leave_org", "ev-x", {"userId": ["hannah01"]})
    other_corp["headers"]["eventCorpId"] = "ding-other"
    assert json.loads((await ding.acked(await ding.fake.push(other_corp)))["data"])["status"] == "SUCCESS"
    outsider = ding.message("/newgroup evil", "m-out", sender="")
    await ding.acked(await ding.fake.push(outsider))
    await ding.fake.push_raw("not a frame")
    ping = await ding.fake.push(ding.fake.system("ping"))
    assert (await ding.acked(ping))["code"] == 200  # still connected and answering
    await ding.adapter.settle()
    assert ding.fake.calls == []
    async with ding.core.ctx.sessions() as s:
        assert (await s.execute(select(func.count()).select_from(Group))).scalar_one() == 0
        assert (await s.execute(select(func.count()).select_from(Person))).scalar_one() == 0


def test_reconnect_waits_are_jittered_and_capped() -> None:
    from dingtalk_stream import Credential

    from adapters.dingtalk.openapi import DingTalkApi
    from adapters.dingtalk.stream import PostroomStreamClient

    client = PostroomStreamClient(
        Credential("a", "b"),
        DingTalkApi("http://x", "http://x", "a", "b"),
        backoff_base=1.0,
        backoff_cap=30.0,
    )
    for failures in (0, 1, 3, 10, 100):
        waits = [client.backoff(failures) for _ in range(200)]
        assert all(0 <= w <= min(30.0, 2**failures) for w in waits)
        assert len(set(waits)) > 150  # spread out, so replicas don't reconnect in step
    assert max(client.backoff(10) for _ in range(200)) > 15  # it does grow towards the cap


async def use_rules(app: App, tmp_path: Path, text: str) -> None:
    """Rules in force for this app, as `rules_file` at start-up would give (`/rules reload` re-reads it)."""
    from bot.groups import planner

    path = tmp_path / "groups.yaml"
    path.write_text(text)
    app.settings.groups.rules_file = str(path)
    rules = app.rules.read()
    app.rules.use(rules)
    async with app.ctx.sessions() as session, session.begin():
        await planner.sync_group_definitions(session, rules, app.settings, actor="test", via="test")


async def test_an_address_book_joiner_lands_in_the_rule_groups_and_the_leaver_leaves_them(
    ding: DingWorld, tmp_path: Path
) -> None:
    await use_rules(
        ding.app,
        tmp_path,
        "groups:\n  - address: all-staff\n    members: everyone\n"
        "  - address: dept7\n    members: {dingtalk_dept_ids: '7'}\n"
        "  - address: dept8\n    members: {dingtalk_dept_ids: '8'}\n",
    )
    born = int(time.time() * 1000)
    await ding.acked(
        await ding.fake.push(
            ding.fake.event(
                "user_add_org", "ev-r1", {"timeStamp": "1", "userId": ["ivan01"]}, born_ms=born - 60_000
            )
        )
    )
    await ding.adapter.settle()

    async def groups_of_ivan() -> list[str]:
        async with ding.core.ctx.sessions() as s:
            return sorted(
                (
                    await s.execute(
                        select(Group.address)
                        .join(Membership, Membership.group_id == Group.id)
                        .where(Membership.email == "ivan@corp.example")
                    )
                ).scalars()
            )

    assert await groups_of_ivan() == ["all-staff@corp.example", "dept7@corp.example"]
    leave = ding.fake.event("user_leave_org", "ev-r2", {"timeStamp": "2", "userId": ["ivan01"]}, born_ms=born)
    await ding.acked(await ding.fake.push(leave))
    await ding.adapter.settle()
    assert await groups_of_ivan() == []
