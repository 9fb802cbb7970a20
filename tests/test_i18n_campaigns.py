"""Campaigns speak the reader's language: a Chinese console runs a whole campaign in Chinese, and one
approval card reaches an English and a Chinese messenger attached to the same core, each in its own."""

from __future__ import annotations

import ast
import asyncio
import io
import json
import time
from pathlib import Path

from sqlalchemy import select

from adapters.console import ConsoleAdapter
from adapters.console.adapter import render_message
from bot import i18n
from bot.app import build_app
from bot.campaigns.notes import english, note, show
from bot.contacts.importer import import_contacts
from bot.db.models import Campaign
from bot.events import Conversation, Message, MessageRef
from tests.conftest import APPROVER, HR, SENDER, ChatBot, make_settings

CSV = """email,name,consent_at,consent_source
lena@example.com,Lena Fischer,2026-03-02T10:15:00+00:00,signup form
raj@example.net,Raj Patel,2026-04-11T08:00:00+00:00,trade fair
"""
BOT = Path(__file__).parents[1] / "bot"


class SecondConsole(ConsoleAdapter):
    """Another messenger on the same core: a console under its own platform name."""

    platform = "console-zh"

    async def send(self, conversation: Conversation, message: Message) -> MessageRef:
        ref = MessageRef(self.platform, conversation.id, str(next(self._ids)))
        self.transcript.append(("send", conversation.id, message))
        return ref

    async def update(self, ref: MessageRef, message: Message) -> None:
        self.transcript.append(("update", ref.conversation_id, message))

    def conversation_for(self, purpose: str) -> Conversation | None:
        return Conversation(self.platform, purpose, "channel") if purpose == "approvals" else None


async def until(condition, timeout: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")


async def _contacts(core, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "contacts.csv"
    path.write_text(CSV)
    await import_contacts(core.ctx, path, "customers")


async def test_a_campaign_runs_in_chinese_on_a_chinese_console(
    database_url: str, smtp, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(
        database_url, smtp.port, tmp_path, campaigns={"reports_dir": str(tmp_path / "reports")}
    )
    app = await build_app(settings)
    core = app.core
    console = ConsoleAdapter(HR, out=io.StringIO(), prompt=False)
    console.locale = "zh_CN"
    app.attach(console)
    await console.start(core)
    bot = ChatBot(app, console, console.out)  # type: ignore[arg-type]
    try:
        await _contacts(core, tmp_path)
        reply = await bot.say(SENDER, "/campaign new spring --to customers --template welcome --subject Hi")
        assert "已创建群发活动草稿“spring”" in reply and "联系人列表 customers" in reply, reply
        reply = await bot.say(SENDER, "/campaign new spring --to customers --template welcome")
        assert "名为“spring”的群发活动已存在" in reply and "用法：" not in reply, (
            reply
        )  # a refusal: no usage line
        reply = await bot.say(SENDER, "/campaign preview spring")
        assert (
            "群发活动“spring”（草稿）" in reply and "2 位收件人" in reply and "检查：全部通过。" in reply
        ), reply
        reply = await bot.say(SENDER, "/campaign submit spring")
        assert "已将“spring”提交给审批人审批" in reply and "批准后将发送给 2 位收件人" in reply, reply

        card_message = bot.cards()[-1]
        card = card_message.card
        assert card is not None
        assert card_message.text == f"{SENDER} 申请发送群发活动“spring”。"
        assert card.title == "待审批：群发活动“spring”，第 1 次提交"
        names = [name for name, _ in card.fields]
        assert (
            names[:2] == ["申请人", "收件人"] and "主题" in names and "检查" in names and "跟踪" in names
        ), names
        assert dict(card.fields)["检查"] == "通过"
        assert [b.label for b in card.buttons] == ["批准", "拒绝"]
        assert card.buttons[1].confirm == "拒绝“spring”？发件人会收到通知。"
        assert card.link is not None and card.link[0] == "预览"

        reply = await bot.say(APPROVER, "/approve spring")
        assert "已批准“spring”，开始发送" in reply, reply
        await until(lambda: len({r for m in smtp.messages for r in m.rcpt_tos}) == 2)
        await bot.settle()
        async with core.ctx.sessions() as session:
            state = (
                await session.execute(select(Campaign.state).where(Campaign.name == "spring"))
            ).scalar_one()
        assert state == "completed"
        outcome = dict(bot.cards()[-1].card.fields)["结果"]  # type: ignore[union-attr]
        assert outcome.startswith(f"已由 {APPROVER} 批准；已发送 — 2 封"), outcome

        reply = await bot.say(SENDER, "/campaign status spring")
        assert "“spring”状态：已完成。" in reply and f"{APPROVER} 于" in reply and "已批准" in reply, reply
        assert "2 位收件人：已发送 2" in reply, reply
        reply = await bot.say(SENDER, "/campaign report spring")
        assert (
            "“spring”的报告（已完成）：2 位收件人。" in reply and "硬退信 0" in reply and "退订 0" in reply
        ), reply
        assert "打开 0/2" in reply and "点击率" in reply and "（图片已保存：" in reply, reply
        reply = await bot.say(SENDER, "/campaign list")
        assert "1 个群发活动：" in reply and "spring — 已完成" in reply, reply
        reply = await bot.say(SENDER, "/campaign pause spring")
        assert "“spring”当前为已完成，不能暂停。" in reply, reply
    finally:
        await app.close()


async def test_one_approval_card_goes_out_in_each_messengers_language(settings, smtp, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    app = await build_app(settings)
    core = app.core
    english_console = ConsoleAdapter(HR, out=io.StringIO(), prompt=False)
    chinese = SecondConsole(HR, out=io.StringIO(), prompt=False)
    chinese.locale = "zh_CN"
    app.attach(english_console)
    app.attach(chinese)
    await english_console.start(core)
    await chinese.start(core)
    bot = ChatBot(app, english_console, english_console.out)  # type: ignore[arg-type]
    try:
        await _contacts(core, tmp_path)
        assert "Draft campaign" in await bot.say(
            SENDER, "/campaign new autumn --to customers --template welcome"
        )
        reply = await bot.say(SENDER, "/campaign submit autumn")
        assert "Submitted “autumn” for approval to the approvers." in reply, reply

        en = bot.cards()[-1]
        zh = [m for kind, conv, m in chinese.transcript if kind == "send" and m.card is not None][-1]
        assert en.card is not None and zh.card is not None
        assert (
            en.card.title == "Approval needed: campaign “autumn”, submission 1"
            and zh.card.title == "待审批：群发活动“autumn”，第 1 次提交"
        )
        assert [b.label for b in en.card.buttons] == ["Approve", "Reject"]
        assert [b.label for b in zh.card.buttons] == ["批准", "拒绝"]
        assert [b.text_command for b in en.card.buttons] == [b.text_command for b in zh.card.buttons]
        assert [n for n, _ in en.card.fields][:2] == ["Requested by", "Audience"]
        assert [n for n, _ in zh.card.fields][:2] == ["申请人", "收件人"]
        assert "2 recipients" in dict(en.card.fields)["Audience"]
        assert "2 位收件人" in dict(zh.card.fields)["收件人"]
        assert "Approve" not in render_message(zh)

        # The decision updates both cards, again each in its own language.
        reply = await bot.say(APPROVER, "/reject autumn the footer is missing")
        assert "Rejected “autumn”." in reply, reply
        en_after = [m for kind, _, m in english_console.transcript if kind == "update"][-1]
        zh_after = [m for kind, _, m in chinese.transcript if kind == "update"][-1]
        assert en_after.card is not None and zh_after.card is not None
        assert dict(en_after.card.fields)["Outcome"] == f"Rejected by {APPROVER}: the footer is missing"
        assert dict(zh_after.card.fields)["结果"] == f"已由 {APPROVER} 拒绝：the footer is missing"
        assert not en_after.card.buttons and not zh_after.card.buttons

        # The stored note is one record, shown in each reader's language.
        async with core.ctx.sessions() as session:
            stored = (
                await session.execute(select(Campaign.status_note).where(Campaign.name == "autumn"))
            ).scalar_one()
        assert english(stored) == f"Rejected by {APPROVER}: the footer is missing"
        with i18n.using("zh_CN"):
            assert show(stored) == f"已由 {APPROVER} 拒绝：the footer is missing"
        assert f"Rejected by {APPROVER}: the footer is missing" in await bot.say(
            SENDER, "/campaign status autumn"
        )
    finally:
        await app.close()


def test_status_notes_translate_when_shown_and_old_plain_notes_stay() -> None:
    stored = note(
        "Paused by itself: the mail server at {server} refused or dropped every message of the last "
        "batch ({error}).",
        server="127.0.0.1:25",
        error="421 busy",
    )
    assert json.loads(stored)["v"] == {"server": "127.0.0.1:25", "error": "421 busy"}
    assert english(stored).startswith("Paused by itself: the mail server at 127.0.0.1:25")
    with i18n.using("zh_CN"):
        assert (
            show(stored) == "已自动暂停：邮件服务器 127.0.0.1:25 拒收或丢弃了上一批的全部邮件（421 busy）。"
        )
        assert show("Cancelled by someone.") == "Cancelled by someone."  # written before notes had keys
        assert show("{not json") == "{not json"
        assert show(None) == ""


def test_every_status_note_text_has_a_translation() -> None:
    zh = i18n.catalog("zh_CN")
    found = []
    for path in sorted(BOT.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "note"
                and node.args
                and isinstance(node.args[0], ast.Constant)
            ):
                found.append(node.args[0].value)
    assert len(found) >= 8  # engine pauses and failures, rejections, pause/resume/cancel
    missing = [text for text in found if text not in zh]
    assert not missing, f"status notes without a zh_CN translation: {missing}"
