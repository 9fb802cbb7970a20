"""Scenarios on every provider, as HR lives them, on SQLite and PostgreSQL: a joiner lands in their rule
group on the platform, a mover swaps rule groups there and keeps the manual one, a leaver leaves the
platform; drift made by hand on the platform shows in /sync --dry-run and is adopted or overwritten as
HR chooses; a platform outage during a leaver is retried until applied, and HR is told."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from adapters.console import ConsoleAdapter
from bot.app import build_app
from bot.db.models import AuditEntry, Group, Membership, ProviderOp
from bot.events import PersonEvent
from bot.groups import planner
from tests.conftest import HR, ChatBot, make_settings
from tests.platform_harness import PROVIDERS, Platform, platform
from tests.provider_rig import mailman, slapd  # noqa: F401  (session fixtures the harness asks for)

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


def rules(p: Platform) -> str:
    return f"""\
groups:
  - address: eng-{p.tag}
    provider: {p.name}
    members: {{department: Engineering}}
  - address: sales-{p.tag}
    provider: {p.name}
    members: {{department: Sales}}
  - address: social-{p.tag}
    provider: {p.name}
"""


@asynccontextmanager
async def provider_bot(
    database_url: str, smtp_port: int, tmp_path: Path, p: Platform, **groups: object
) -> AsyncIterator[ChatBot]:
    rules_file = tmp_path / "groups.yaml"
    rules_file.write_text(rules(p))
    settings = make_settings(
        database_url,
        smtp_port,
        tmp_path,
        groups={"rules_file": str(rules_file), **groups},
        providers={p.name: p.settings, "max_inline_wait_s": 0.3, "retry_base_s": 30},
    )
    app = await build_app(settings)
    console = ConsoleAdapter(HR, out=io.StringIO(), prompt=False)
    app.attach(console)
    await console.start(app.core)
    async with app.ctx.sessions() as session, session.begin():
        await planner.sync_group_definitions(session, app.rules.current(), settings, actor="test", via="test")
    try:
        yield ChatBot(app, console, io.StringIO())
    finally:
        await app.close()


def event(
    kind: str, n: int, p: Platform, who: str, minutes: int = 0, at: datetime = T0, **attributes: str
) -> PersonEvent:
    return PersonEvent(
        kind,  # type: ignore[arg-type]
        "hr-webhook",
        f"E-{p.tag}-{who}",
        p.email(who),
        attributes,
        f"ev-{p.tag}-{n}",
        at + timedelta(minutes=minutes),
        who.title(),
    )


def hr_texts(bot: ChatBot) -> list[str]:
    return [m.text for kind, conv, m in bot.console.transcript if conv == "hr"]


@pytest.fixture(params=PROVIDERS)
async def plat(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Platform]:
    async with platform(request.param, tmp_path, request) as p:
        if p.name == "google":  # Google groups exist before Postroom runs them (postroom groups import)
            for g in ("eng", "sales", "social"):
                p.fake.add_group(f"{g}-{p.tag}@corp.example")
        yield p


async def test_joiner_mover_leaver_take_effect_on_the_platform(database_url, smtp, tmp_path, plat) -> None:
    p = plat
    eng, sales, social = (f"{g}-{p.tag}@corp.example" for g in ("eng", "sales", "social"))
    ann = p.email("ann")
    async with provider_bot(database_url, smtp.port, tmp_path, p) as bot:
        await bot.core.handle_person_event(event("joined", 1, p, "ann", department="Engineering"))
        await bot.settle()
        assert p.members(eng) == {ann}
        reply = await bot.say(HR, f"/addgroup social-{p.tag} {ann}")
        assert "Added" in reply, reply
        assert p.members(social) == {ann}
        await bot.core.handle_person_event(event("changed", 2, p, "ann", 1, department="Sales"))
        await bot.settle()
        assert p.members(eng) == set() and p.members(sales) == {ann} and p.members(social) == {ann}
        await bot.core.handle_person_event(event("left", 3, p, "ann", 2))
        await bot.settle()
        assert ann not in p.members(sales) | p.members(social)
        async with bot.app.ctx.sessions() as s:
            assert (await s.execute(select(Membership))).scalars().all() == []
            assert (await s.execute(select(ProviderOp))).scalars().all() == []
            confirmed = (
                (
                    await s.execute(
                        select(AuditEntry.subject).where(AuditEntry.action == "membership.remove.confirmed")
                    )
                )
                .scalars()
                .all()
            )
        assert sorted(confirmed) == sorted([f"group:{eng}", f"group:{sales}", f"group:{social}"])


async def test_drift_on_the_platform_is_listed_then_adopted_or_overwritten(
    database_url, smtp, tmp_path, plat
) -> None:
    p = plat
    eng = f"eng-{p.tag}@corp.example"
    ann, bob, cy = p.email("ann"), p.email("bob"), p.email("cy")
    async with provider_bot(database_url, smtp.port, tmp_path, p) as bot:
        await bot.core.handle_person_event(event("joined", 1, p, "ann", department="Engineering"))
        await bot.core.handle_person_event(event("joined", 2, p, "bob", department="Engineering"))
        await bot.core.handle_person_event(event("joined", 3, p, "cy", department="Sales"))
        await bot.settle()
        assert p.members(eng) == {ann, bob}
        p.add_by_hand(eng, cy)  # an admin adds cy in the platform's console…
        p.remove_by_hand(eng, bob)  # …and removes bob
        dry = await bot.say(HR, "/sync --dry-run")
        assert f"{cy} is on" in dry and f"{bob} is in Postroom but not on" in dry, dry
        assert p.members(eng) == {ann, cy}  # a dry run changes nothing anywhere
        await bot.say(HR, "/sync")
        await bot.settle()
        assert p.members(eng) == {ann, cy}  # nor does a sync overwrite it silently
        listed = await bot.say(HR, "/drift")
        number = next(line.split()[0] for line in listed.splitlines() if cy in line)
        adopted = await bot.say(HR, f"/drift adopt {number}")
        assert "Adopted 1" in adopted, adopted
        overwritten = await bot.say(HR, f"/drift overwrite eng-{p.tag}")
        assert "Overwrote 1" in overwritten, overwritten
        await bot.settle()
        assert p.members(eng) == {ann, bob, cy}
        async with bot.app.ctx.sessions() as s:
            row = (
                await s.execute(
                    select(Membership)
                    .join(Group, Group.id == Membership.group_id)
                    .where(Membership.email == cy, Group.address == eng)
                )
            ).scalar_one()
            assert (row.source, row.state) == ("manual", "active")
            vias = set(
                (
                    await s.execute(select(AuditEntry.via).where(AuditEntry.subject == f"group:{eng}"))
                ).scalars()
            )
        assert f"provider:{p.name}" in vias
        assert "No drift" in await bot.say(HR, "/drift")

        # A leaver removed by hand on the platform (during their grace period here: still in Postroom)
        # is never put back by an overwrite.
        await bot.core.handle_person_event(event("left", 4, p, "bob", 5))
        await bot.settle()
        assert bob not in p.members(eng)


async def test_an_outage_during_a_leaver_is_retried_until_applied_and_hr_is_told(
    database_url, smtp, tmp_path, plat
) -> None:
    p = plat
    eng = f"eng-{p.tag}@corp.example"
    ann = p.email("ann")
    async with provider_bot(database_url, smtp.port, tmp_path, p) as bot:
        await bot.core.handle_person_event(event("joined", 1, p, "ann", department="Engineering"))
        await bot.settle()
        assert p.members(eng) == {ann}
        p.down(True)
        await bot.core.handle_person_event(event("left", 2, p, "ann", 1))
        await bot.settle()
        assert p.members(eng) == {ann}  # the platform did not take it…
        async with bot.app.ctx.sessions() as s:
            row = (await s.execute(select(Membership).where(Membership.email == ann))).scalar_one()
            op = (await s.execute(select(ProviderOp))).scalar_one()
        assert row.state == "removing" and op.attempts == 1  # …so nothing says it did
        assert any("did not take these changes yet" in text and ann in text for text in hr_texts(bot))
        p.down(False)
        async with bot.app.ctx.sessions() as s, s.begin():  # the back-off has passed
            op = (await s.execute(select(ProviderOp))).scalar_one()
            op.next_attempt_at = datetime.now(UTC) - timedelta(seconds=1)
        await bot.app.scheduler.run_now("groups.push-providers:next")
        await bot.settle()
        assert p.members(eng) == set()
        assert any("has now taken the changes" in text and ann in text for text in hr_texts(bot))
        async with bot.app.ctx.sessions() as s:
            assert (await s.execute(select(Membership))).scalars().all() == []


# The guard decides this, whatever the platform: one add-and-remove provider and one whole-list provider.
@pytest.mark.parametrize("plat", ["google", "wecom"], indirect=True)
async def test_a_leaver_removed_by_hand_on_the_platform_is_never_put_back(
    database_url, smtp, tmp_path, plat
) -> None:
    p = plat
    eng = f"eng-{p.tag}@corp.example"
    ann, bob = p.email("ann"), p.email("bob")
    async with provider_bot(database_url, smtp.port, tmp_path, p, leaver_grace_hours=24) as bot:
        await bot.core.handle_person_event(event("joined", 1, p, "ann", department="Engineering"))
        await bot.core.handle_person_event(event("joined", 2, p, "bob", department="Engineering"))
        await bot.settle()
        now = datetime.now(UTC)
        await bot.core.handle_person_event(
            event("left", 3, p, "bob", at=now)
        )  # in the grace period: a member still
        await bot.settle()
        assert p.members(eng) == {ann, bob}
        p.remove_by_hand(eng, bob)  # the admin removes the leaver at once on the platform
        assert "they have left" in await bot.say(HR, "/sync --dry-run")
        reply = await bot.say(HR, f"/drift overwrite eng-{p.tag}")
        assert "has left the company" in reply, reply
        await bot.settle()
        assert p.members(eng) == {ann}
        adopted = await bot.say(HR, f"/drift adopt eng-{p.tag}")
        assert "Adopted 1" in adopted, adopted
        await bot.settle()
        assert p.members(eng) == {ann}
        async with bot.app.ctx.sessions() as s:
            emails = set(
                (
                    await s.execute(
                        select(Membership.email)
                        .join(Group, Group.id == Membership.group_id)
                        .where(Group.address == eng)
                    )
                ).scalars()
            )
        assert emails == {ann}


@pytest.mark.parametrize("plat", ["wecom"], indirect=True)
async def test_a_whole_list_write_keeps_what_was_added_by_hand(database_url, smtp, tmp_path, plat) -> None:
    p = plat
    eng = f"eng-{p.tag}@corp.example"
    ann, cy, dee = p.email("ann"), p.email("cy"), p.email("dee")
    async with provider_bot(database_url, smtp.port, tmp_path, p) as bot:
        await bot.core.handle_person_event(event("joined", 1, p, "ann", department="Engineering"))
        await bot.settle()
        p.add_by_hand(eng, cy)
        await bot.core.handle_person_event(event("joined", 2, p, "dee", department="Engineering"))
        await bot.settle()
        assert p.members(eng) == {ann, cy, dee}  # cy stays: not overwritten silently…
        assert p.fake.writes[-1]["email_list"]["list"] == sorted([ann, cy, dee])
        assert f"{cy} is on WeCom mail but not in Postroom" in await bot.say(HR, "/drift")  # …but listed
