"""The WeCom adapter through the real web app: encrypted, signed callbacks built with the published
test vectors and the adapter's own crypto; a fake WeCom API on loopback; real SMTP and databases."""

from __future__ import annotations

import asyncio
import base64
import io
import struct
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from sqlalchemy import func, select

from adapters.console import ConsoleAdapter
from adapters.wecom import WeComAdapter
from adapters.wecom.api import WeComApi
from adapters.wecom.crypto import CallbackRefused, WeComCrypto
from bot.app import App, build_app, load_adapter
from bot.contacts.importer import import_contacts
from bot.core import Core
from bot.db.models import Group, Identity, Membership, Person
from tests.conftest import SENDER, make_settings
from tests.fake_wecom import FakeWeCom
from tests.loopback import serve, wait_until

TOKEN = "123456"
AES_KEY = "kWxPEV2UEDyxWpmPdKC3F4dgPDmOvfKX1HGnEUDS1aR"
CORP_ID = "wx49f0ab532d5d035a"
VECTOR = {
    "msg_signature": "dd6b9c95b495b3f7e2901bfbc76c664930ffdb96",
    "timestamp": "1411443780",
    "nonce": "437374425",
    "echostr": "4ByGGj+sVCYcvGeQYhaKIk1o0pQRNbRjxybjTGblXrBaXlTXeOo1+bXFXDQQb1o6co6Yh9Bv41n7hOchLF6p+Q==",
}
USERS = {
    "hannah": {"name": "Hannah", "email": "hannah@corp.example"},
    "maria": {"name": "Maria", "biz_mail": "maria@corp.example"},
    "sam": {"name": "Sam", "email": "sam@corp.example"},
    "ivan": {"name": "Ivan", "email": "ivan@corp.example"},
}


# -- the cipher against the published vectors ------------------------------------------------------
def test_published_vector_verifies_and_decrypts() -> None:
    crypto = WeComCrypto(TOKEN, AES_KEY, CORP_ID)
    crypto.verify(VECTOR["msg_signature"], VECTOR["timestamp"], VECTOR["nonce"], VECTOR["echostr"])
    assert crypto.decrypt(VECTOR["echostr"]) == "5927782489442352469"
    with pytest.raises(CallbackRefused):
        crypto.verify("0" * 40, VECTOR["timestamp"], VECTOR["nonce"], VECTOR["echostr"])
    with pytest.raises(CallbackRefused) as wrong_corp:
        WeComCrypto(TOKEN, AES_KEY, "ww-another-corp").decrypt(VECTOR["echostr"])
    assert wrong_corp.value.status == 403


@given(st.text(max_size=3000), st.binary(min_size=16, max_size=16))
@hsettings(max_examples=60, deadline=None)
def test_encrypt_then_decrypt_is_identity_and_pads_to_32(message: str, random16: bytes) -> None:
    crypto = WeComCrypto(TOKEN, AES_KEY, CORP_ID)
    encrypted = crypto.encrypt(message, random16)
    assert len(base64.b64decode(encrypted)) % 32 == 0
    assert crypto.decrypt(encrypted) == message


def encrypt_with_padding(crypto: WeComCrypto, message: bytes, pad_bytes: bytes) -> str:
    plain = b"R" * 16 + struct.pack(">I", len(message)) + message + CORP_ID.encode() + pad_bytes
    assert len(plain) % 16 == 0
    enc = Cipher(algorithms.AES(crypto.key), modes.CBC(crypto.iv)).encryptor()
    return base64.b64encode(enc.update(plain) + enc.finalize()).decode()


def test_broken_padding_is_refused() -> None:
    crypto = WeComCrypto(TOKEN, AES_KEY, CORP_ID)
    body = b"<xml><a>1</a></xml>"
    used = 16 + 4 + len(body) + len(CORP_ID)
    good = 32 - used % 32
    assert crypto.decrypt(encrypt_with_padding(crypto, body, bytes([good]) * good)) == body.decode()
    for bad in (bytes([1]) * (good - 1) + bytes([3]), bytes([0]) * good, bytes([33]) * good):
        with pytest.raises(CallbackRefused, match="padding"):
            crypto.decrypt(encrypt_with_padding(crypto, body, bad))


# -- the adapter in the web app ----------------------------------------------------------------------
@dataclass
class WeComWorld:
    app: App
    adapter: WeComAdapter
    console: ConsoleAdapter
    fake: FakeWeCom
    web: httpx.AsyncClient
    crypto: WeComCrypto

    @property
    def core(self) -> Core:
        return self.app.core

    async def callback(
        self,
        inner_xml: str,
        *,
        crypto: WeComCrypto | None = None,
        signature: str | None = None,
        timestamp: str | None = None,
        body: bytes | None = None,
    ) -> httpx.Response:
        crypto = crypto or self.crypto
        ts = timestamp or str(int(time.time()))
        encrypted, sig = crypto.encrypt_envelope(inner_xml, ts, "nonce-1")
        if body is None:
            body = (
                f"<xml><ToUserName><![CDATA[{CORP_ID}]]></ToUserName><Encrypt><![CDATA[{encrypted}]]></Encrypt>"
                "<AgentID><![CDATA[1000002]]></AgentID></xml>"
            ).encode()
        params = {"msg_signature": signature or sig, "timestamp": ts, "nonce": "nonce-1"}
        response = await self.web.post("/wecom/callback", params=params, content=body)
        await self.adapter.settle()
        return response

    async def say(self, user: str, text: str, msg_id: str) -> httpx.Response:
        return await self.callback(
            f"<xml><ToUserName><![CDATA[{CORP_ID}]]></ToUserName><FromUserName><![CDATA[{user}]]></FromUserName>"
            f"<CreateTime>{int(time.time())}</CreateTime><MsgType><![CDATA[text]]></MsgType>"
            f"<Content><![CDATA[{text}]]></Content><MsgId>{msg_id}</MsgId><AgentID>1000002</AgentID></xml>"
        )


def contact_xml(change: str, user: str, created: int, **extra: str) -> str:
    fields = "".join(f"<{k}><![CDATA[{v}]]></{k}>" for k, v in extra.items())
    return (
        f"<xml><ToUserName><![CDATA[{CORP_ID}]]></ToUserName><FromUserName><![CDATA[sys]]></FromUserName>"
        f"<CreateTime>{created}</CreateTime><MsgType><![CDATA[event]]></MsgType>"
        f"<Event><![CDATA[change_contact]]></Event><ChangeType><![CDATA[{change}]]></ChangeType>"
        f"<UserID><![CDATA[{user}]]></UserID>{fields}</xml>"
    )


def wecom_settings(database_url: str, smtp_port: int, tmp_path: Path, api_url: str, **more: Any):  # type: ignore[no-untyped-def]
    return make_settings(
        database_url,
        smtp_port,
        tmp_path,
        wecom={
            "corp_id": CORP_ID,
            "agent_id": 1000002,
            "secret": "app-secret",
            "token": TOKEN,
            "encoding_aes_key": AES_KEY,
            "approvals_users": ["maria", "omar"],
            "hr_users": ["hannah"],
            "api_url": api_url,
            **more,
        },
    )


@pytest.fixture
async def world(database_url: str, smtp, tmp_path: Path) -> AsyncIterator[WeComWorld]:  # type: ignore[no-untyped-def]
    fake = FakeWeCom(users={k: dict(v) for k, v in USERS.items()})
    async with serve(fake.app()) as api_url:
        settings = wecom_settings(database_url, smtp.port, tmp_path, api_url)
        app = await build_app(settings)
        core = app.core
        adapter = load_adapter("wecom", settings)
        assert isinstance(adapter, WeComAdapter)
        console = ConsoleAdapter(SENDER, out=io.StringIO(), prompt=False)
        for a in (adapter, console):
            app.attach(a)
            await a.start(core)
        web = httpx.AsyncClient(transport=httpx.ASGITransport(app=app.web()), base_url="http://postroom")
        try:
            yield WeComWorld(app, adapter, console, fake, web, WeComCrypto(TOKEN, AES_KEY, CORP_ID))
        finally:
            await web.aclose()
            await app.close()


async def test_url_verification_answers_the_published_vector(database_url: str, smtp, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings = wecom_settings(database_url, smtp.port, tmp_path, "http://127.0.0.1:9")
    app = await build_app(settings)
    core = app.core
    adapter = load_adapter("wecom", settings, clock=lambda: 1411443780.0 + 30)
    assert adapter is not None
    app.attach(adapter)
    await adapter.start(core)
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app.web()), base_url="http://t"
        ) as web:
            ok = await web.get("/wecom/callback", params=VECTOR)
            assert (ok.status_code, ok.text) == (200, "5927782489442352469")
            forged = await web.get("/wecom/callback", params={**VECTOR, "msg_signature": "a" * 40})
            assert forged.status_code == 403 and "5927782489442352469" not in forged.text
            missing = await web.get(
                "/wecom/callback", params={k: v for k, v in VECTOR.items() if k != "nonce"}
            )
            assert missing.status_code == 400 and "nonce" in missing.text
    finally:
        await app.close()


async def test_a_command_is_answered_by_app_message_once_however_often_delivered(world: WeComWorld) -> None:
    for _ in range(3):  # WeCom retries; a replay carries the same MsgId
        response = await world.say("hannah", "/newgroup eng", "7001")
        assert response.status_code == 200 and response.text == ""
    replies = world.fake.sent("text", to="hannah")
    assert len(replies) == 1 and "eng@corp.example" in replies[0]["text"]["content"]
    async with world.core.ctx.sessions() as s:
        assert (await s.execute(select(func.count()).select_from(Group))).scalar_one() == 1
        identity = (await s.execute(select(Identity).where(Identity.user_id == "hannah"))).scalar_one()
    assert identity.email == "hannah@corp.example" and identity.platform == "wecom"


async def test_manager_approves_on_the_card_and_mail_is_delivered_once(
    world: WeComWorld, smtp, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    csv = tmp_path / "c.csv"
    csv.write_text(
        "email,name,consent_at,consent_source\nlena@example.com,Lena,2026-03-02T10:15:00+00:00,form\n"
    )
    await import_contacts(world.core.ctx, csv, "customers")
    await world.console.say("/campaign new spring --to customers --template welcome")
    await world.console.say("/campaign submit spring")
    cards = world.fake.sent("template_card", to="maria|omar")
    assert len(cards) == 1
    card = cards[0]["template_card"]
    assert card["card_type"] == "button_interaction"
    assert [b["text"] for b in card["button_list"]] == ["批准", "拒绝"]
    approve_key = card["button_list"][0]["key"]
    assert approve_key.startswith("campaign.approve|")
    assert any(row["keyname"] == "申请人" for row in card["horizontal_content_list"])

    click = (
        f"<xml><ToUserName><![CDATA[{CORP_ID}]]></ToUserName><FromUserName><![CDATA[maria]]></FromUserName>"
        f"<CreateTime>{int(time.time())}</CreateTime><MsgType><![CDATA[event]]></MsgType>"
        "<Event><![CDATA[template_card_event]]></Event>"
        f"<EventKey><![CDATA[{approve_key}]]></EventKey><TaskId><![CDATA[{card['task_id']}]]></TaskId>"
        "<CardType><![CDATA[button_interaction]]></CardType><ResponseCode><![CDATA[click-code-1]]></ResponseCode>"
        "<AgentID>1000002</AgentID></xml>"
    )
    for _ in range(2):  # a replayed click has no second effect
        assert (await world.callback(click)).status_code == 200
    await wait_until(lambda: len(smtp.messages) >= 1)
    await world.app.drain(10)
    assert [r for m in smtp.messages for r in m.rcpt_tos] == ["lena@example.com"]
    first_update = world.fake.updates()[0]
    assert first_update["response_code"] == "click-code-1"
    assert first_update["userids"] == ["maria", "omar"]
    shown = {row["keyname"]: row["value"] for row in first_update["template_card"]["horizontal_content_list"]}
    assert "maria@corp.example" in shown["结果"]
    answers = world.fake.sent("text", to="maria")
    assert len(answers) == 1 and "spring" in answers[0]["text"]["content"]


async def test_an_expired_response_code_falls_back_to_one_text_per_state(
    world: WeComWorld, tmp_path: Path
) -> None:
    from bot import i18n
    from bot.events import Card, Message, MessageRef

    ref = MessageRef(
        "wecom", "maria|omar", "m1", (("kind", "card"), ("response_code", "old"), ("task_id", "t1"))
    )
    world.fake.used_codes.add("old")
    with i18n.using(world.adapter.locale):  # the core writes a card in the messenger's language
        card = Card("Campaign “x”", ((i18n.t("Outcome"), "Approved by maria@corp.example; sending…"),))
    for _ in range(3):
        await world.adapter.update(ref, Message("“x”: sending.", card))
    texts = world.fake.sent("text", to="maria|omar")
    assert len(texts) == 1 and "结果：Approved by maria@corp.example" in texts[0]["text"]["content"]


async def test_joiner_and_leaver_from_the_address_book(world: WeComWorld) -> None:
    now = int(time.time())
    assert (
        await world.callback(contact_xml("create_user", "ivan", now - 60, Name="Ivan", Department="2"))
    ).status_code == 200
    async with world.core.ctx.sessions() as s:
        person = (await s.execute(select(Person).where(Person.employee_id == "wecom:ivan"))).scalar_one()
    assert (person.email, person.status, person.attributes.get("wecom_department")) == (
        "ivan@corp.example",
        "active",
        "2",
    )
    await world.say("hannah", "/newgroup eng", "8001")
    await world.say("hannah", "/addgroup eng ivan@corp.example", "8002")
    async with world.core.ctx.sessions() as s:
        assert (await s.execute(select(func.count()).select_from(Membership))).scalar_one() == 1
    await wait_until(
        lambda: any(
            "已将 ivan@corp.example 添加到 eng@corp.example" in m["text"]["content"]
            for m in world.fake.sent("text", to="hannah")
        )
    )  # answered in zh_CN
    del world.fake.users["ivan"]  # people who left can't be looked up any more: the kept mapping answers
    leave = contact_xml("delete_user", "ivan", now)
    for _ in range(2):
        assert (await world.callback(leave)).status_code == 200
    async with world.core.ctx.sessions() as s:
        assert (await s.execute(select(func.count()).select_from(Membership))).scalar_one() == 0
        assert (
            await s.execute(select(Person.status).where(Person.employee_id == "wecom:ivan"))
        ).scalar_one() == "left"


async def test_bad_callbacks_are_refused_and_change_nothing(world: WeComWorld) -> None:
    hello = (
        "<xml><FromUserName>hannah</FromUserName><CreateTime>1</CreateTime><MsgType>text</MsgType>"
        "<Content>/newgroup evil</Content><MsgId>666</MsgId></xml>"
    )
    wrong_sig = await world.callback(hello, signature="0" * 40)
    assert wrong_sig.status_code == 403 and "signature" in wrong_sig.text
    other_corp = await world.callback(hello, crypto=WeComCrypto(TOKEN, AES_KEY, "ww-another-corp"))
    assert other_corp.status_code == 403 and "corp id" in other_corp.text
    stale = await world.callback(hello, timestamp=str(int(time.time()) - 3600))
    assert stale.status_code == 403 and "timestamp" in stale.text
    not_xml = await world.callback(hello, body=b"<xml><Encrypt>unclosed")
    assert not_xml.status_code == 400 and "malformed" in not_xml.text
    bomb = await world.callback(
        hello, body=b'<!DOCTYPE x [<!ENTITY a "aaaa">]><xml><Encrypt>&a;</Encrypt></xml>'
    )
    assert bomb.status_code == 400
    inner_broken = await world.callback("<xml><MsgType>text</MsgType><Content>")
    assert inner_broken.status_code == 400 and "malformed" in inner_broken.text
    ts = str(int(time.time()))
    padded = encrypt_with_padding(world.crypto, b"<xml/>", bytes([9]) * 4)
    broken = await world.web.post(
        "/wecom/callback",
        params={"msg_signature": world.crypto.signature(ts, "n", padded), "timestamp": ts, "nonce": "n"},
        content=f"<xml><Encrypt>{padded}</Encrypt></xml>".encode(),
    )
    assert broken.status_code == 400 and "padding" in broken.text
    huge = await world.callback(hello, body=b"<xml><Encrypt>" + b"A" * 70_000 + b"</Encrypt></xml>")
    assert huge.status_code == 413
    # Issue "Safe to run for real": odd query parameters are refused, not a 500.
    for timestamp in ("\u00b2", "9" * 400, "-5"):
        odd = await world.callback(hello, timestamp=timestamp)
        assert odd.status_code == 400 and "not a number" in odd.text, timestamp
    odd = await world.callback(hello, signature="\u00e9" * 300)
    assert odd.status_code == 400 and "malformed" in odd.text
    unknown = await world.callback(
        "<xml><FromUserName>hannah</FromUserName><CreateTime>5</CreateTime>"
        "<MsgType>event</MsgType><Event>enter_agent</Event></xml>"
    )
    assert unknown.status_code == 200  # WeCom retries anything else: accepted, logged, ignored
    odd_contact = await world.callback(contact_xml("create_party", "x", int(time.time())))
    assert odd_contact.status_code == 200
    assert world.fake.calls == []
    async with world.core.ctx.sessions() as s:
        assert (await s.execute(select(func.count()).select_from(Group))).scalar_one() == 0
        assert (await s.execute(select(func.count()).select_from(Person))).scalar_one() == 0


async def test_access_token_is_cached_refreshed_before_expiry_and_refetched_when_rejected() -> None:
    fake = FakeWeCom(users={"hannah": dict(USERS["hannah"])})
    now = [1000.0]
    async with serve(fake.app()) as url:
        api = WeComApi(url, CORP_ID, "app-secret", 1000002, timeout=5, clock=lambda: now[0])
        try:
            for _ in range(3):
                assert (await api.user("hannah"))["email"] == "hannah@corp.example"
            assert fake.token_requests == 1
            now[0] += 7200 - 200  # within the refresh margin: fetched again before it expires
            await api.user("hannah")
            assert fake.token_requests == 2
            fake.valid_tokens.clear()  # WeCom revoked it: 42001, then one refetch and a retry
            assert (await api.user("hannah"))["email"] == "hannah@corp.example"
            assert fake.token_requests == 3
        finally:
            await api.aclose()


async def test_people_are_tied_to_their_userid_by_email_when_user_get_hides_it(world: WeComWorld) -> None:
    from datetime import UTC, datetime

    from bot.events import PersonEvent

    world.fake.users["li"] = {"name": "Li", "hidden_email": "li@corp.example"}  # user/get shows no email
    await world.core.handle_person_event(
        PersonEvent("joined", "hr", "E1", "li@corp.example", {}, "hr-1", datetime.now(UTC))
    )
    assert await world.adapter.learn_userids() == 1
    world.fake.calls.clear()
    await world.say("li", "/groups", "9001")
    replies = world.fake.sent("text", to="li")
    assert len(replies) == 1 and "can't tell who you are" not in replies[0]["text"]["content"]
    assert not [c for c in world.fake.calls if c[0] == "/cgi-bin/user/get"]


async def test_the_callback_is_answered_before_slow_work_finishes(world: WeComWorld) -> None:
    world.fake.user_gate = asyncio.Event()
    ts = str(int(time.time()))
    inner = (
        f"<xml><FromUserName>hannah</FromUserName><CreateTime>{ts}</CreateTime><MsgType>text</MsgType>"
        "<Content>/groups</Content><MsgId>5151</MsgId></xml>"
    )
    encrypted, sig = world.crypto.encrypt_envelope(inner, ts, "n")
    response = await world.web.post(
        "/wecom/callback",
        params={"msg_signature": sig, "timestamp": ts, "nonce": "n"},
        content=f"<xml><Encrypt>{encrypted}</Encrypt></xml>".encode(),
    )
    assert response.status_code == 200  # answered while the directory lookup is still waiting
    await wait_until(lambda: any(path == "/cgi-bin/user/get" for path, _ in world.fake.calls))
    assert world.fake.sent("text", to="hannah") == []
    world.fake.user_gate.set()
    await world.adapter.settle()
    assert len(world.fake.sent("text", to="hannah")) == 1


async def test_a_contacts_joiner_lands_in_the_rule_groups_and_the_leaver_leaves_them(
    world: WeComWorld, tmp_path: Path
) -> None:
    from tests.test_dingtalk import use_rules

    await use_rules(
        world.app,
        tmp_path,
        "groups:\n  - address: all-staff\n    members: everyone\n"
        "  - address: dept2\n    members: {wecom_department: '2'}\n"
        "  - address: dept3\n    members: {wecom_department: '3'}\n",
    )
    now = int(time.time())
    assert (
        await world.callback(contact_xml("create_user", "ivan", now - 60, Name="Ivan", Department="2"))
    ).status_code == 200

    async def groups_of_ivan() -> list[str]:
        await world.adapter.settle()
        async with world.core.ctx.sessions() as s:
            return sorted(
                (
                    await s.execute(
                        select(Group.address)
                        .join(Membership, Membership.group_id == Group.id)
                        .where(Membership.email == "ivan@corp.example")
                    )
                ).scalars()
            )

    assert await groups_of_ivan() == ["all-staff@corp.example", "dept2@corp.example"]
    assert (await world.callback(contact_xml("delete_user", "ivan", now))).status_code == 200
    assert await groups_of_ivan() == []


async def test_an_absurd_create_time_in_a_signed_callback_is_taken_as_now(world: WeComWorld) -> None:
    from datetime import UTC, datetime

    from bot.db.models import Person

    xml = contact_xml("create_user", "ivan", 10**30, Name="Ivan", Department="2")
    assert (await world.callback(xml)).status_code == 200
    await world.adapter.settle()
    async with world.core.ctx.sessions() as s:
        ivan = (await s.execute(select(Person).where(Person.email == "ivan@corp.example"))).scalar_one()
    assert abs((ivan.last_event_at - datetime.now(UTC)).total_seconds()) < 60


async def test_a_callback_before_the_adapter_started_is_asked_again_not_lost(
    database_url: str, smtp, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    # serve starts its adapters before the web app answers; should a callback still come first (a stopping or
    # odd server), WeCom is asked to send it again (any answer but 200 is retried), and it is not taken as seen.
    fake = FakeWeCom(users={k: dict(v) for k, v in USERS.items()})
    async with serve(fake.app()) as api_url:
        settings = wecom_settings(database_url, smtp.port, tmp_path, api_url)
        app = await build_app(settings)
        adapter = load_adapter("wecom", settings)
        assert isinstance(adapter, WeComAdapter)
        app.attach(adapter)
        web = httpx.AsyncClient(transport=httpx.ASGITransport(app=app.web()), base_url="http://postroom")
        world = WeComWorld(
            app,
            adapter,
            ConsoleAdapter(SENDER, out=io.StringIO(), prompt=False),
            fake,
            web,
            WeComCrypto(TOKEN, AES_KEY, CORP_ID),
        )
        try:
            early = await world.say("hannah", "/newgroup eng", "7100")
            assert early.status_code == 503 and fake.sent("text", to="hannah") == []
            await adapter.start(app.core)
            again = await world.say("hannah", "/newgroup eng", "7100")
            assert again.status_code == 200
            replies = fake.sent("text", to="hannah")
            assert len(replies) == 1 and "eng@corp.example" in replies[0]["text"]["content"]
        finally:
            await web.aclose()
            await app.close()
