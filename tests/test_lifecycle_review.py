"""Review findings on the HR lifecycle and email groups: each test failed on main before its fix."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from bot.db.models import AuditEntry, Group, Membership
from bot.events import PersonEvent
from tests.conftest import HR
from tests.lifecycle_kit import groups_of, hr_event, lifecycle_bot, post_event, web_client
from tests.test_wecom import world  # noqa: F401  (the WeCom rig: real adapter, fake API on loopback)

T0 = datetime(2026, 11, 1, 9, tzinfo=UTC)


@pytest.fixture
async def lbot(database_url, smtp, tmp_path):  # type: ignore[no-untyped-def]
    async for b in lifecycle_bot(database_url, smtp.port, tmp_path):
        yield b


def slack_join(user: str, email: str, at: datetime, event_id: str = "Ev1") -> PersonEvent:
    from adapters.slack.directory import person_event

    ev = person_event(
        {
            "event_id": event_id,
            "event": {
                "type": "team_join",
                "event_ts": str(at.timestamp()),
                "user": {"id": user, "profile": {"email": email, "real_name": "Someone"}},
            },
        }
    )
    assert ev is not None
    return ev


# -- finding 3: any source's id finds the person; an unknown leaver goes to HR and is retried ------------
async def test_hr_leaver_without_email_finds_a_person_slack_created(lbot) -> None:  # type: ignore[no-untyped-def]
    core = lbot.core
    await core.handle_person_event(slack_join("U1", "bob@corp.example", T0))
    await core.handle_person_event(
        PersonEvent(
            "changed",
            "hr-webhook",
            "E200",
            "bob@corp.example",
            {"department": "Engineering"},
            "hr-2",
            T0 + timedelta(hours=1),
        )
    )
    assert set(await groups_of(lbot, "bob@corp.example")) == {"all-staff", "eng"}
    async with web_client(lbot) as client:
        r = await post_event(client, hr_event("left", "hr-3", "E200", None, "2026-11-01T11:00:00Z"))
    assert r.status_code == 200, r.text
    assert await groups_of(lbot, "bob@corp.example") == {}
    # and a leaver from the other directory id works as well (a second person, created by HR)
    await core.handle_person_event(
        PersonEvent(
            "joined", "hr-webhook", "E300", "cy@corp.example", {"department": "Engineering"}, "hr-4", T0
        )
    )
    await core.handle_person_event(slack_join("U3", "cy@corp.example", T0 + timedelta(hours=1), "Ev3"))
    out = await core.handle_person_event(
        PersonEvent("left", "slack", "U3", None, {}, "Ev4", T0 + timedelta(hours=2))
    )
    assert out.status == "applied"
    assert await groups_of(lbot, "cy@corp.example") == {}


async def test_an_unknown_leaver_is_reported_to_hr_and_retried(lbot) -> None:  # type: ignore[no-untyped-def]
    core = lbot.core
    out = await core.handle_person_event(PersonEvent("left", "wecom", "wecom:zhang", None, {}, "w1", T0))
    assert out.status == "queued"
    assert "A leaver event for wecom:zhang (wecom) names nobody I know yet" in lbot.out.getvalue()
    assert lbot.app.scheduler.next_run("hr.unknown-leaver:wecom:w1") is not None
    # The person becomes known (HR, then a change from the messenger with its id); the retry removes them.
    await core.handle_person_event(
        PersonEvent(
            "joined",
            "hr-webhook",
            "E9",
            "zhang@corp.example",
            {"department": "Engineering"},
            "h9",
            T0 - timedelta(hours=2),
        )
    )
    await core.handle_person_event(
        PersonEvent(
            "changed", "wecom", "wecom:zhang", "zhang@corp.example", {}, "w0", T0 - timedelta(hours=1)
        )
    )
    assert set(await groups_of(lbot, "zhang@corp.example")) == {"all-staff", "eng"}
    await lbot.app.scheduler.run_now("hr.unknown-leaver:wecom:w1")
    assert await groups_of(lbot, "zhang@corp.example") == {}
    assert "zhang@corp.example left: removed from" in lbot.out.getvalue()


async def test_the_webhook_accepts_an_unknown_leaver_for_a_retry(lbot) -> None:  # type: ignore[no-untyped-def]
    async with web_client(lbot) as client:
        r = await post_event(client, hr_event("left", "x1", "E404", None, "2026-11-01T11:00:00Z"))
    assert r.status_code == 202 and r.json()["status"] == "queued"
    assert lbot.app.scheduler.aps.get_job("hr.unknown-leaver:hr-webhook:x1") is not None


# -- finding 2: an address change to an external address leaves every internal group ------------------
async def internal_rows(core, email):  # type: ignore[no-untyped-def]
    async with core.ctx.sessions() as s:
        return (
            (
                await s.execute(
                    select(Group.address)
                    .join(Membership, Membership.group_id == Group.id)
                    .where(Membership.email == email, Group.kind == "internal")
                )
            )
            .scalars()
            .all()
        )


async def test_an_address_change_to_an_external_address_leaves_internal_groups(lbot) -> None:  # type: ignore[no-untyped-def]
    core = lbot.core
    await core.handle_person_event(
        PersonEvent(
            "joined",
            "hr-webhook",
            "E300",
            "carl@corp.example",
            {"department": "Engineering"},
            "hr-1",
            T0,
            "Carl",
        )
    )
    assert "Added" in await lbot.say(HR, "/addgroup social carl@corp.example")
    assert "Added" in await lbot.say(HR, "/addgroup partners carl@corp.example")
    async with web_client(lbot) as client:
        r = await post_event(
            client, hr_event("changed", "hr-2", "E300", "carl@gmail.com", "2026-11-01T10:00:00Z")
        )
    assert r.status_code == 200, r.text
    assert set(r.json()["removed"]) >= {"all-staff@corp.example", "eng@corp.example", "social@corp.example"}
    assert await internal_rows(core, "carl@gmail.com") == []
    assert await internal_rows(core, "carl@corp.example") == []
    assert await groups_of(lbot, "carl@gmail.com") == {"partners": "manual"}  # external-allowed: it follows
    async with core.ctx.sessions() as s:
        reasons = (
            (await s.execute(select(AuditEntry.detail).where(AuditEntry.action == "membership.remove")))
            .scalars()
            .all()
        )
    assert len(reasons) == 3 and all("changed address to carl@gmail.com" in r for r in reasons)
    # HR's later changes for them still apply, and still put them in no internal group
    async with web_client(lbot) as client:
        r = await post_event(
            client,
            hr_event("changed", "hr-3", "E300", "carl@gmail.com", "2026-11-01T11:00:00Z", department="Sales"),
        )
    assert r.status_code == 200, r.text
    assert await internal_rows(core, "carl@gmail.com") == []


async def test_a_slack_email_change_to_an_external_address_leaves_internal_groups(lbot) -> None:  # type: ignore[no-untyped-def]
    from adapters.slack.directory import person_event

    core = lbot.core
    await core.handle_person_event(slack_join("U7", "dora@corp.example", T0))
    assert "Added" in await lbot.say(HR, "/addgroup social dora@corp.example")
    ev = person_event(
        {
            "event_id": "Ev8",
            "event": {
                "type": "user_change",
                "event_ts": str(T0.timestamp() + 60),
                "user": {"id": "U7", "profile": {"email": "dora@gmail.com"}},
            },
        }
    )
    assert ev is not None
    await core.handle_person_event(ev)
    assert await internal_rows(core, "dora@gmail.com") == []
    assert await internal_rows(core, "dora@corp.example") == []


# -- finding 10: a group turns internal in the rules only once no external address is in it ------------
async def test_turning_a_group_internal_with_external_members_is_refused(lbot, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tests.lifecycle_kit import RULES, write_rules

    core = lbot.core
    assert "Added" in await lbot.say(HR, "/addgroup partners ext@gmail.com")
    write_rules(tmp_path, RULES.replace("    kind: external-allowed\n", ""))
    reply = await lbot.say(HR, "/rules reload")
    assert (
        "partners@corp.example can't become internal while external people are in it (ext@gmail.com)" in reply
    )
    async with core.ctx.sessions() as s:
        kind = (await s.execute(select(Group.kind).where(Group.local_part == "partners"))).scalar_one()
    assert kind == "external-allowed"
    in_force = {g.local_part: g.kind for g in lbot.app.rules.current().groups}
    assert in_force["partners"] == "external-allowed"
    assert "refused" not in (await lbot.say(HR, "/removegroup partners ext@gmail.com")).lower()
    assert "Loaded" in await lbot.say(HR, "/rules reload")
    async with core.ctx.sessions() as s:
        assert (
            await s.execute(select(Group.kind).where(Group.local_part == "partners"))
        ).scalar_one() == "internal"


# -- finding 6: a leaver is never put back into a group, by any path -------------------------------------
async def test_a_leaver_cannot_be_added_back(lbot) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import APPROVER

    core = lbot.core
    async with core.ctx.sessions() as s, s.begin():
        (await s.execute(select(Group).where(Group.local_part == "all-staff"))).scalar_one().protected = True
    out = await core.handle_person_event(
        PersonEvent(
            "joined",
            "hr-webhook",
            "E400",
            "dana@corp.example",
            {"department": "Engineering"},
            "hr-1",
            T0,
            "Dana",
        )
    )
    assert out.held is not None  # all-staff waits for an approver
    await core.handle_person_event(
        PersonEvent("left", "hr-webhook", "E400", None, {}, "hr-2", T0 + timedelta(hours=1))
    )
    assert await groups_of(lbot, "dana@corp.example") == {}
    reply = await lbot.say(HR, "/addgroup social dana@corp.example")
    assert "dana@corp.example has left the company: leavers can't be added to groups." in reply
    reply = await lbot.say(APPROVER, f"/plan approve {out.held}")
    assert reply == (
        f"Membership plan #{out.held} from hr:hr-webhook, approved by {APPROVER}: nothing to apply, because "
        "dana@corp.example has left since the plan was made."
    )
    assert await groups_of(lbot, "dana@corp.example") == {}


# -- finding 7: a hand-given membership follows an address change, and the leaver loses it --------------
async def test_a_membership_given_before_the_person_existed_follows_them_out(lbot) -> None:  # type: ignore[no-untyped-def]
    core = lbot.core
    assert "Added" in await lbot.say(HR, "/addgroup social fay@corp.example --unknown-ok")
    await core.handle_person_event(
        PersonEvent(
            "joined", "hr-webhook", "E500", "fay@corp.example", {"department": "Nowhere"}, "hr-1", T0, "Fay"
        )
    )
    async with core.ctx.sessions() as s:
        linked = (
            await s.execute(
                select(Membership.person_id)
                .join(Group, Group.id == Membership.group_id)
                .where(Group.local_part == "social")
            )
        ).scalar_one()
    assert linked is not None
    await core.handle_person_event(
        PersonEvent(
            "changed", "hr-webhook", "E500", "fay.new@corp.example", {}, "hr-2", T0 + timedelta(hours=1)
        )
    )
    assert await groups_of(lbot, "fay.new@corp.example") == {
        "all-staff": "rule:all-staff",
        "social": "manual",
    }
    assert await groups_of(lbot, "fay@corp.example") == {}
    await core.handle_person_event(
        PersonEvent("left", "hr-webhook", "E500", None, {}, "hr-3", T0 + timedelta(hours=2))
    )
    assert (
        await groups_of(lbot, "fay@corp.example") == {}
        and await groups_of(lbot, "fay.new@corp.example") == {}
    )
    assert "fay" not in await lbot.say(HR, "/audit")


async def test_audit_finds_a_leaver_by_email_when_the_membership_has_no_person(lbot) -> None:  # type: ignore[no-untyped-def]
    core = lbot.core
    await core.handle_person_event(
        PersonEvent(
            "joined", "hr-webhook", "E501", "gus@corp.example", {"department": "Nowhere"}, "hr-1", T0, "Gus"
        )
    )
    await core.handle_person_event(
        PersonEvent("left", "hr-webhook", "E501", None, {}, "hr-2", T0 + timedelta(hours=1))
    )
    # A row written behind the lifecycle's back (an old import, a manual SQL fix): no person id on it.
    async with core.ctx.sessions() as s, s.begin():
        gid = (await s.execute(select(Group.id).where(Group.local_part == "social"))).scalar_one()
        s.add(
            Membership(group_id=gid, email="gus@corp.example", person_id=None, source="manual", added_by="x")
        )
    assert "gus@corp.example" in await lbot.say(HR, "/audit")


# -- finding 4: a directory's joined merges its own (namespaced) attributes, never replaces HR's --------
async def test_a_directory_join_keeps_hr_attributes_and_rule_groups(lbot) -> None:  # type: ignore[no-untyped-def]
    from adapters.slack.directory import person_event
    from bot.db.models import Person

    core = lbot.core
    await core.handle_person_event(
        PersonEvent(
            "joined",
            "hr-webhook",
            "E100",
            "alice@corp.example",
            {"department": "Engineering"},
            "hr-1",
            T0,
            "Alice",
        )
    )
    ev = person_event(
        {
            "event_id": "Ev1",
            "event": {
                "type": "team_join",
                "event_ts": str(T0.timestamp() + 3600),
                "user": {
                    "id": "U1",
                    "profile": {"email": "alice@corp.example", "real_name": "Alice", "title": "Sales Lead"},
                },
            },
        }
    )
    assert (
        ev is not None and "department" not in ev.attributes and ev.attributes["slack_title"] == "Sales Lead"
    )
    await core.handle_person_event(ev)
    assert set(await groups_of(lbot, "alice@corp.example")) == {"all-staff", "eng"}
    await core.handle_person_event(
        PersonEvent(
            "joined",
            "wecom",
            "wecom:alice",
            "alice@corp.example",
            {"wecom_department": "1,2"},
            "w1",
            T0 + timedelta(hours=2),
        )
    )
    assert set(await groups_of(lbot, "alice@corp.example")) == {"all-staff", "eng"}
    # HR's next full record replaces HR's attributes and keeps what the directories said
    await core.handle_person_event(
        PersonEvent(
            "joined",
            "hr-webhook",
            "E100",
            "alice@corp.example",
            {"department": "Sales"},
            "hr-2",
            T0 + timedelta(hours=3),
        )
    )
    async with core.ctx.sessions() as s:
        person = (await s.execute(select(Person).where(Person.email == "alice@corp.example"))).scalar_one()
    assert person.attributes["department"] == "Sales" and person.attributes["slack_title"] == "Sales Lead"
    assert person.attributes["wecom_department"] == "1,2"
    assert set(await groups_of(lbot, "alice@corp.example")) == {"all-staff", "sales"}


# -- finding 5: a broken rules file stops start-up and never strips rule groups --------------------------
BROKEN = "groups:\n  - address: eng\n    members: [unclosed\n"


async def test_a_broken_rules_file_strips_no_one_and_stops_start_up(database_url, smtp, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from bot.app import Runtime, build_app
    from bot.errors import UserError

    async for b in lifecycle_bot(database_url, smtp.port, tmp_path):
        await b.core.handle_person_event(
            PersonEvent(
                "joined",
                "hr-webhook",
                "E1",
                "al@corp.example",
                {"department": "Engineering", "location": "Berlin"},
                "h1",
                T0,
            )
        )
        settings = b.core.ctx.settings
        before = await groups_of(b, "al@corp.example")
    assert set(before) == {"all-staff", "eng", "berlin"}
    (tmp_path / "groups.yaml").write_text(BROKEN)
    app = await build_app(settings)
    core = app.core
    try:
        with pytest.raises(
            UserError, match="The group rules file could not be loaded, so Postroom did not start"
        ):
            await Runtime(app).start_services()
        assert not app.scheduler.aps.running
        await core.handle_person_event(
            PersonEvent(
                "changed",
                "hr-webhook",
                "E1",
                "al@corp.example",
                {"title": "Senior"},
                "h2",
                T0 + timedelta(hours=1),
            )
        )
        text = await app.memberships.reconcile(source="sync", actor=HR, via="test", dry_run=False)
        assert "nothing changed" in text
        async with core.ctx.sessions() as s:
            after = set(
                (
                    await s.execute(
                        select(Group.local_part)
                        .join(Membership, Membership.group_id == Group.id)
                        .where(Membership.email == "al@corp.example")
                    )
                ).scalars()
            )
        assert after == {"all-staff", "eng", "berlin"}
    finally:
        await app.close()


# -- finding 9: /addgroup and /removegroup on a protected group wait for an approver --------------------
async def test_hand_changes_to_a_protected_group_wait_for_an_approver(lbot) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import APPROVER

    core = lbot.core
    async with core.ctx.sessions() as s, s.begin():
        (await s.execute(select(Group).where(Group.local_part == "social"))).scalar_one().protected = True
    reply = await lbot.say(HR, "/addgroup social erin@corp.example --unknown-ok")
    assert "Adding erin@corp.example to social@corp.example waits for an approver (plan #" in reply
    assert "it changes the protected group social@corp.example" in reply
    assert await groups_of(lbot, "erin@corp.example") == {}
    cards = lbot.cards()
    assert cards and "needs an approver" in cards[-1].card.title
    plan_id = reply.split("plan #")[1].split(")")[0]
    assert "1 change applied." in await lbot.say(APPROVER, f"/plan approve {plan_id}")
    assert await groups_of(lbot, "erin@corp.example") == {"social": "manual"}
    reply = await lbot.say(HR, "/removegroup social erin@corp.example")
    assert "Removing erin@corp.example from social@corp.example waits for an approver" in reply
    assert await groups_of(lbot, "erin@corp.example") == {"social": "manual"}


# -- finding 18: two directory changes in the same second both count ---------------------------------
async def test_two_wecom_changes_in_one_second_both_apply(world) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    import time as _time

    from bot.db.models import Person
    from tests.test_wecom import contact_xml

    now = int(_time.time())
    assert (
        await world.callback(contact_xml("create_user", "ivan", now, Name="Ivan", Department="2"))
    ).status_code == 200
    assert (
        await world.callback(contact_xml("update_user", "ivan", now, Position="Staff Engineer"))
    ).status_code == 200
    async with world.core.ctx.sessions() as s:
        person = (await s.execute(select(Person).where(Person.email == "ivan@corp.example"))).scalar_one()
    assert person.attributes.get("wecom_position") == "Staff Engineer"
    assert person.attributes.get("wecom_department") == "2"
    # an event strictly older than the last applied one is still stale
    out = await world.core.handle_person_event(
        PersonEvent(
            "changed",
            "wecom",
            "wecom:ivan",
            None,
            {"wecom_position": "Intern"},
            "old-1",
            datetime.fromtimestamp(now - 5, UTC),
        )
    )
    assert out.status == "stale"
