"""Email groups, rules, /sync and HR notices answer in Chinese on a Chinese console."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bot.db.models import Person
from bot.events import PersonEvent
from tests.conftest import APPROVER, APPROVER2, HR, NOBODY, ChatBot
from tests.lifecycle_kit import lifecycle_bot
from tests.smtp import SmtpServer


@pytest.fixture
async def zbot(database_url: str, smtp: SmtpServer, tmp_path: Path) -> AsyncIterator[ChatBot]:
    async for bot in lifecycle_bot(database_url, smtp.port, tmp_path):
        bot.console.locale = "zh_CN"
        yield bot


def hr_notices(bot: ChatBot) -> list[str]:
    return [m.text for kind, conv, m in bot.console.transcript if kind == "send" and conv == "hr"]


async def test_group_commands_answer_in_chinese(zbot: ChatBot) -> None:
    reply = await zbot.say(HR, "/addgroup social alice@corp.example --unknown-ok")
    assert "已将 alice@corp.example 添加到 social@corp.example；该组现有 1 名成员。" in reply
    reply = await zbot.say(HR, "/addgroup social someone@gmail.com")
    assert "someone@gmail.com 不属于 corp.example" in reply and "外部人员不能加入" in reply
    reply = await zbot.say(HR, "/members social")
    assert "social@corp.example 共有 1 名成员：" in reply and "alice@corp.example" in reply
    reply = await zbot.say(HR, "/groups")
    assert "共 6 个邮件组：" in reply and "social@corp.example — 1 名成员" in reply
    assert "[允许外部成员]" in reply  # partners
    reply = await zbot.say(HR, "/groups alice@corp.example")
    assert "alice@corp.example 在 1 个邮件组中：" in reply and f"由 {HR} 手动添加" in reply
    reply = await zbot.say(NOBODY, "/members nosuch")
    assert "没有名为“nosuch”的邮件组。" in reply and "用法：" not in reply  # a refusal: no usage line
    reply = await zbot.say(HR, "/addgroup social")
    assert "/addgroup 至少需要一个成员。" in reply
    reply = await zbot.say(NOBODY, "/plan approve 99")
    assert "仅限审批人或管理员使用" in reply


async def test_rules_sync_audit_and_hr_notices_are_chinese(zbot: ChatBot) -> None:
    reply = await zbot.say(HR, "/rules")
    assert "个邮件组：" in reply
    assert "all-staff@corp.example（内部, 发信权限：company；负责人 hannah@corp.example）— 所有人" in reply
    assert (
        "department 为 Engineering" in reply
        and "location 为 Berlin, Potsdam 之一，但排除 title 为 Contractor" in reply
    )
    assert "partners@corp.example（允许外部成员, 发信权限：anyone；无负责人）— 手动维护" in reply

    at = datetime.now(UTC) - timedelta(minutes=5)
    await zbot.core.handle_person_event(
        PersonEvent(
            "joined", "test", "E1", "kim@corp.example", {"department": "Engineering"}, "j1", at, "Kim"
        )
    )
    notice = hr_notices(zbot)[-1]
    assert notice.startswith("Kim (kim@corp.example) 已入职：已加入 ") and "eng@corp.example" in notice

    async with zbot.core.ctx.sessions() as session, session.begin():  # on record, not yet in any group
        session.add(
            Person(
                employee_id="E2",
                email="lee@corp.example",
                attributes={"department": "Sales"},
                source="test",
                status="active",
            )
        )
    reply = await zbot.say(HR, "/sync --dry-run")
    assert reply.startswith("试运行——未做任何更改。 添加 2 项，移除 0 项。")
    assert "+ lee@corp.example 加入 sales@corp.example（规则 sales：department 为 Sales）" in reply
    reply = await zbot.say(HR, "/sync")
    assert reply.startswith("已执行 2 项变更。")
    reply = await zbot.say(HR, "/sync --dry-run")
    assert reply == "一切都与规则一致，无需变更（试运行）。"

    await zbot.core.handle_person_event(
        PersonEvent("changed", "test", "E1", None, {"department": "Sales"}, "c1", at + timedelta(minutes=1))
    )
    notice = hr_notices(zbot)[-1]
    assert "已调岗（department Engineering → Sales）" in notice and "已从 eng@corp.example 移除" in notice

    await zbot.core.handle_person_event(
        PersonEvent("left", "test", "E1", None, {}, "l1", at + timedelta(minutes=2))
    )
    notice = hr_notices(zbot)[-1]
    assert "Kim (kim@corp.example) 已离职" in notice and "all-staff@corp.example" in notice

    reply = await zbot.say(HR, "/audit")
    assert "邮件组审计" in reply and "没有负责人的邮件组" in reply


async def test_a_held_plan_is_announced_and_decided_in_chinese(zbot: ChatBot) -> None:
    async with zbot.core.ctx.sessions() as session, session.begin():
        pending = await zbot.app.memberships.hold(
            session,
            source="sync",
            actor=HR,
            via="console",
            reasons=["it changes the protected group social@corp.example"],
            summary="",
            changes=[],
        )
    await zbot.app.memberships.announce(pending.id)
    card = zbot.cards()[-1]
    assert card.text == "来自 sync 的成员变更计划等待审批。"
    assert card.card is not None and card.card.title == f"成员变更计划 #{pending.id} 需要审批"
    assert [b.label for b in card.card.buttons] == ["批准", "拒绝"]
    reply = await zbot.say(HR, f"/plan approve {pending.id}")
    assert "仅限审批人或管理员使用" in reply
    reply = await zbot.say(APPROVER, f"/plan approve {pending.id}")
    assert reply == f"{HR} 提出的成员变更计划 #{pending.id} 已由 {APPROVER} 批准：已执行 0 项更改。"
    reply = await zbot.say(APPROVER2, f"/plan reject {pending.id}")
    assert f"计划 #{pending.id} 已由 {APPROVER} 批准，未做任何更改。" in reply
