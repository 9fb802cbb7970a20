"""One membership path, one guard: every entry point that changes who is in a group — a command, an HR
webhook event, each messenger's directory events, a CSV snapshot, /rules reload, /sync — is driven into
a change that trips each guard, and every one holds it the same way: a pending plan with the guard's
reason, a card to the approvers, and nothing of the held change applied. Refusals are refused the same
way everywhere. A manual removal of a rule member is a rule exception that /sync does not undo."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, select, update

from bot.app import App
from bot.db.models import Group, Membership, MessageRecord, PendingPlan, Person, RuleException
from bot.events import PersonEvent
from bot.hr.importer import import_staff
from tests.conftest import APPROVER, HR
from tests.lifecycle_kit import groups_of, lifecycle_bot, post_event, web_client, write_rules
from tests.slack_fake import event_envelope, user
from tests.test_dingtalk import DingWorld, ding, use_rules  # noqa: F401  (the `ding` fixture)
from tests.test_wecom import WeComWorld, contact_xml, world  # noqa: F401  (the `world` fixture)

T0 = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)

# eng is protected and filled by rule; social is filled by hand; leads is protected and filled from
# every messenger's directory attributes.
RULES = """\
groups:
  - address: all-staff
    members: everyone
  - address: eng
    protected: true
    members: {department: Engineering}
  - address: sales
    members: {department: Sales}
  - address: leads
    protected: true
    members:
      - slack_title: Lead
      - dingtalk_dept_ids: "7"
      - wecom_department: "2"
  - address: social
"""

STAFF_HEADER = "employee_id,email,name,department"


def staff_rows(n: int, department: str = "Sales", start: int = 0) -> list[str]:
    return [f"E{i:03d},p{i}@corp.example,Person {i},{department}" for i in range(start, start + n)]


def csv(tmp_path: Path, rows: list[str], name: str = "staff.csv") -> Path:
    path = tmp_path / name
    path.write_text("\n".join([STAFF_HEADER, *rows]) + "\n")
    return path


async def pending(app: App) -> list[PendingPlan]:
    async with app.ctx.sessions() as s:
        return list((await s.execute(select(PendingPlan).where(PendingPlan.state == "pending"))).scalars())


async def assert_held(app: App, reason: str) -> PendingPlan:
    """The same way everywhere: one pending plan, its reason, its card posted to the approvers (a plan held
    in the background — a directory event — is announced a moment after it is committed)."""
    plans = await pending(app)
    assert len(plans) == 1, [p.reasons for p in plans]
    plan = plans[0]
    assert any(reason in r for r in plan.reasons), plan.reasons
    deadline = time.monotonic() + 10
    while True:
        async with app.ctx.sessions() as s:
            card = (
                await s.execute(select(MessageRecord.id).where(MessageRecord.subject == f"plan:{plan.id}"))
            ).first()
        if card is not None:
            return plan
        assert time.monotonic() < deadline, "no approver was shown the held plan"
        await asyncio.sleep(0.02)


async def protect(app: App, local_part: str) -> None:
    async with app.ctx.sessions() as s, s.begin():
        await s.execute(update(Group).where(Group.local_part == local_part).values(protected=True))


@pytest.fixture
async def lbot(database_url, smtp, tmp_path):  # type: ignore[no-untyped-def]
    async for b in lifecycle_bot(
        database_url,
        smtp.port,
        tmp_path,
        rules=RULES,
        groups={"max_remove_count": 8, "max_add_count": 8},
        hr={"webhook_secret": "hr-webhook-secret-0123456789"},
    ):
        yield b


async def seed_social(lbot, tmp_path: Path, n: int) -> list[str]:  # type: ignore[no-untyped-def]
    """n people on record, all in social@ by hand (a few at a time: more at once would need an approver)."""
    await import_staff(lbot.app.lifecycle, csv(tmp_path, staff_rows(n)))
    emails = [f"p{i}@corp.example" for i in range(n)]
    for i in range(0, n, 8):
        reply = await lbot.say(HR, "/addgroup social " + " ".join(emails[i : i + 8]))
        assert reply.startswith("Added"), reply
    return emails


# -- commands ---------------------------------------------------------------------------------------------
async def test_the_reported_mass_removal_by_command_waits_for_an_approver(lbot, tmp_path) -> None:  # type: ignore[no-untyped-def]
    emails = await seed_social(lbot, tmp_path, 6)
    reply = await lbot.say(HR, "/removegroup social " + " ".join(emails[1:5]))
    assert "waits for an approver (plan #" in reply and "removes 4 of 6 members (67%)" in reply
    await assert_held(lbot.app, "it removes 4 of 6 members (67%) of social@corp.example")
    assert all([("social" in await groups_of(lbot, e)) for e in emails])


async def test_a_command_trips_every_guard_the_same_way(lbot, tmp_path) -> None:  # type: ignore[no-untyped-def]
    emails = await seed_social(lbot, tmp_path, 20)
    app = lbot.app
    # mass removal by count (9 of 20 is 45% > 30%: both brakes say so)
    reply = await lbot.say(HR, "/removegroup social " + " ".join(emails[:9]))
    plan = await assert_held(app, "it removes 9 memberships at once, more than the 8 allowed")
    assert f"plan #{plan.id}" in reply
    await lbot.say(APPROVER, f"/plan reject {plan.id}")
    # mass addition
    await import_staff(app.lifecycle, csv(tmp_path, staff_rows(20) + staff_rows(9, start=100), "more.csv"))
    new = [f"p{i}@corp.example" for i in range(100, 109)]
    reply = await lbot.say(HR, "/addgroup social " + " ".join(new))
    plan = await assert_held(app, "it adds 9 people to social@corp.example, more than the 8 allowed")
    assert all([("social" not in await groups_of(lbot, e)) for e in new])
    await lbot.say(APPROVER, f"/plan approve {plan.id}")
    assert all([("social" in await groups_of(lbot, e)) for e in new])
    # protected group
    await protect(app, "social")
    await lbot.say(HR, "/addgroup social hannah@corp.example --unknown-ok")
    plan = await assert_held(app, "it changes the protected group social@corp.example")
    assert "social" not in await groups_of(lbot, HR)
    await lbot.say(APPROVER, f"/plan reject {plan.id}")
    # refusals: nothing held, nothing applied
    refused = await lbot.say(HR, "/addgroup social someone@gmail.com")
    assert "is an internal group: external people can't join it" in refused
    assert await pending(app) == []


async def test_a_leaver_can_not_be_added_back_by_hand(lbot, tmp_path) -> None:  # type: ignore[no-untyped-def]
    await import_staff(lbot.app.lifecycle, csv(tmp_path, staff_rows(3)))
    await lbot.core.handle_person_event(
        PersonEvent("left", "hr-webhook", "E002", None, {}, "l2", datetime.now(UTC))
    )
    reply = await lbot.say(HR, "/addgroup social p2@corp.example")
    assert "p2@corp.example has left the company: leavers can't be added to groups." in reply
    assert await groups_of(lbot, "p2@corp.example") == {}
    assert await pending(lbot.app) == []


# -- HR webhook -------------------------------------------------------------------------------------------
async def test_an_hr_event_into_a_protected_rule_group_waits_and_the_rest_applies(lbot, tmp_path) -> None:  # type: ignore[no-untyped-def]
    async with web_client(lbot) as client:
        joined = {
            "event_id": "w1",
            "type": "joined",
            "occurred_at": T0.isoformat(),
            "employee": {
                "id": "E900",
                "email": "kim@corp.example",
                "attributes": {"department": "Engineering"},
            },
        }
        r = await post_event(client, joined)
        assert r.status_code == 200 and r.json()["added"] == ["all-staff@corp.example"], r.text
        plan = await assert_held(lbot.app, "it changes the protected group eng@corp.example")
        assert r.json()["held_plan"] == plan.id
        assert await groups_of(lbot, "kim@corp.example") == {"all-staff": "rule:all-staff"}
        # an external joiner the rules would put in an internal group is refused whole
        outsider = {
            **joined,
            "event_id": "w2",
            "employee": {"id": "E901", "email": "x@gmail.com", "attributes": {}},
        }
        r = await post_event(client, outsider)
        assert r.status_code == 422 and "external people can't join it" in r.json()["error"]
        assert await groups_of(lbot, "x@gmail.com") == {}


async def test_movers_sent_one_at_a_time_by_webhook_trip_the_rolling_window(lbot, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Four movers out of a group of six, one webhook event each: the third waits for an approver (as
    /removegroup one at a time does), and the webhook answers with the held plan; a leaver still leaves."""
    await import_staff(lbot.app.lifecycle, csv(tmp_path, staff_rows(6)))
    replies = []
    async with web_client(lbot) as client:
        for i in range(4):
            moved = {
                "event_id": f"mv{i}",
                "type": "changed",
                "occurred_at": datetime.now(UTC).isoformat(),
                "employee": {
                    "id": f"E{i:03d}",
                    "email": f"p{i}@corp.example",
                    "attributes": {"department": "Marketing"},
                },
            }
            r = await post_event(client, moved)
            assert r.status_code == 200, r.text
            replies.append(r.json())
        assert replies[0]["removed"] == ["sales@corp.example"] and "held_plan" not in replies[0]
        assert replies[1]["removed"] == ["sales@corp.example"] and "held_plan" not in replies[1]
        assert replies[2]["removed"] == [] and replies[2]["held_plan"], replies[2]
        assert "sales" in await groups_of(lbot, "p2@corp.example")
        plans = await pending(lbot.app)
        assert plans and any("with the 2 removed from sales@corp.example" in r for r in plans[0].reasons)
        # a leaver's removal is never held nor counted
        left = {
            "event_id": "lv5",
            "type": "left",
            "occurred_at": datetime.now(UTC).isoformat(),
            "employee": {"id": "E005", "email": "p5@corp.example", "attributes": {}},
        }
        r = await post_event(client, left)
        assert r.status_code == 200 and "sales@corp.example" in r.json()["removed"], r.text
        assert "held_plan" not in r.json()


async def test_a_leaver_leaves_protected_groups_at_once(lbot, tmp_path) -> None:  # type: ignore[no-untyped-def]
    held = await import_staff(lbot.app.lifecycle, csv(tmp_path, staff_rows(2, "Engineering")))
    assert held.held is not None  # joiners into the protected eng@ waited for an approver
    await lbot.say(APPROVER, f"/plan approve {held.held}")
    assert "eng" in await groups_of(lbot, "p0@corp.example")
    out = await lbot.core.handle_person_event(
        PersonEvent("left", "hr-webhook", "E000", None, {}, "x1", datetime.now(UTC))
    )
    assert out.status == "applied" and out.held is None
    assert await groups_of(lbot, "p0@corp.example") == {}
    assert await pending(lbot.app) == []


# -- CSV snapshots ----------------------------------------------------------------------------------------
async def test_a_csv_snapshot_trips_the_guards_as_a_whole(lbot, tmp_path) -> None:  # type: ignore[no-untyped-def]
    app = lbot.app
    await import_staff(app.lifecycle, csv(tmp_path, staff_rows(10)))
    # half the company missing from the file: a mass removal from all-staff and sales
    half = await import_staff(app.lifecycle, csv(tmp_path, staff_rows(5), "half.csv"))
    assert half.held is not None
    plan = await assert_held(app, "it removes 5 of 10 members (50%) of all-staff@corp.example")
    assert plan.id == half.held
    assert "all-staff" in await groups_of(lbot, "p9@corp.example")
    await lbot.say(APPROVER, f"/plan reject {plan.id}")
    # joiners into the protected eng@
    eng = await import_staff(
        app.lifecycle, csv(tmp_path, staff_rows(10) + staff_rows(2, "Engineering", 50), "eng.csv")
    )
    assert eng.held is not None
    await assert_held(app, "it changes the protected group eng@corp.example")
    assert await groups_of(lbot, "p50@corp.example") == {}


async def test_an_approved_snapshots_removals_do_not_count_in_the_window(lbot, tmp_path) -> None:  # type: ignore[no-untyped-def]
    app = lbot.app
    await import_staff(app.lifecycle, csv(tmp_path, staff_rows(10)))
    movers = staff_rows(4, "Marketing") + staff_rows(6, "Sales", 4)
    held = await import_staff(app.lifecycle, csv(tmp_path, movers, "movers.csv"))
    assert held.held is not None  # 4 of 10 out of sales@ at once
    reply = await lbot.say(APPROVER, f"/plan approve {held.held}")
    assert "4 events applied" in reply, reply
    assert "sales" not in await groups_of(lbot, "p0@corp.example")
    # the approver saw those four: one more removal by hand is not a fifth of a mass removal
    reply = await lbot.say(HR, "/removegroup sales p4@corp.example")
    assert reply.startswith("Removed"), reply
    assert await pending(app) == []


async def test_the_same_snapshot_again_is_the_waiting_plan_and_its_approval_says_what_changed(
    lbot, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    app = lbot.app
    await import_staff(app.lifecycle, csv(tmp_path, staff_rows(10)))
    first = await import_staff(app.lifecycle, csv(tmp_path, staff_rows(5), "half.csv"))
    again = await import_staff(app.lifecycle, csv(tmp_path, staff_rows(5), "half.csv"))
    copy = await import_staff(app.lifecycle, csv(tmp_path, staff_rows(5), "half-copy.csv"))
    assert first.held is not None and again.held == first.held == copy.held
    assert [p.id for p in await pending(app)] == [first.held]
    # one of the five leaves through the webhook meanwhile: the file's leave for them changes nothing
    await lbot.core.handle_person_event(
        PersonEvent("left", "hr-webhook", "E009", None, {}, "p9-left", datetime.now(UTC))
    )
    reply = await lbot.say(APPROVER, f"/plan approve {first.held}")
    assert "4 events applied" in reply, reply
    assert "Changed since the plan was made:" in reply and "E009 (p9@corp.example), left" in reply, reply


async def test_an_approved_snapshot_applies_its_changes_for_people_without_an_event(lbot, tmp_path) -> None:  # type: ignore[no-untyped-def]
    app = lbot.app
    first = await import_staff(app.lifecycle, csv(tmp_path, staff_rows(5, "Engineering")))
    await lbot.say(APPROVER, f"/plan approve {first.held}")  # joiners into the protected eng@
    # p0 is as the file says, but not in the rule's protected group: the file has no event for them
    async with app.ctx.sessions() as s, s.begin():
        gid = (await s.execute(select(Group.id).where(Group.local_part == "eng"))).scalar_one()
        await s.execute(
            delete(Membership).where(Membership.group_id == gid, Membership.email == "p0@corp.example")
        )
    held = await import_staff(app.lifecycle, csv(tmp_path, staff_rows(6, "Engineering"), "more.csv"))
    assert held.held is not None
    assert any(c.email == "p0@corp.example" and c.op == "add" for c in held.plan.changes)
    reply = await lbot.say(APPROVER, f"/plan approve {held.held}")
    assert "1 event applied" in reply and "also applied 1 change" in reply, reply
    # HR hears of it too (the notice's text was once built before its own helper existed: NameError)
    await lbot.settle()
    to_hr = [m.text for _kind, conv, m in lbot.console.transcript if conv == "hr" and m.text]
    assert any(
        f"Plan #{held.held} from" in text and "HR event from" in text and "also applied 1 change" in text
        for text in to_hr
    ), to_hr
    assert "eng" in await groups_of(lbot, "p0@corp.example")
    assert "eng" in await groups_of(lbot, "p5@corp.example")
    # so the next import has nothing to ask
    again = await import_staff(app.lifecycle, csv(tmp_path, staff_rows(6, "Engineering"), "more.csv"))
    assert again.held is None and not again.plan.changes, again.summary()


async def test_rows_older_than_the_record_are_listed_with_their_reason(lbot, tmp_path) -> None:  # type: ignore[no-untyped-def]
    app = lbot.app
    await import_staff(app.lifecycle, csv(tmp_path, staff_rows(3)))
    ahead = datetime.now(UTC) + timedelta(hours=1)
    await lbot.core.handle_person_event(
        PersonEvent("changed", "hr-webhook", "E001", None, {"department": "Sales"}, "b-ahead", ahead)
    )
    await lbot.core.handle_person_event(
        PersonEvent("left", "hr-webhook", "E002", None, {}, "c-later", ahead + timedelta(hours=2))
    )
    rows = [
        "E000,p0@corp.example,Person 0,Sales",
        "E001,p1@corp.example,Person 1,Marketing",
        staff_rows(1, start=2)[0],
    ]
    for dry in (True, False, False):
        result = await import_staff(app.lifecycle, csv(tmp_path, rows, "both.csv"), dry_run=dry)
        text = result.summary()
        assert result.joined == 0 and result.changed == 0, text
        assert len(result.not_applied) == 2, text  # so `postroom hr import` exits 1
        assert "E001 (p1@corp.example), changed: not applied — an event dated" in text, text
        assert "E002 (p2@corp.example), joined: not applied — an event dated" in text, text
    assert "sales" in await groups_of(lbot, "p1@corp.example")  # the record stands
    async with app.ctx.sessions() as s:
        chen = (await s.execute(select(Person).where(Person.employee_id == "E002"))).scalar_one()
    assert chen.status == "left"  # their leave on a later date is still on record


async def test_a_movers_removal_says_what_changed_not_missing(lbot, tmp_path) -> None:  # type: ignore[no-untyped-def]
    app = lbot.app
    await import_staff(app.lifecycle, csv(tmp_path, staff_rows(3)))
    rows = ["E000,p0@corp.example,Person 0,Sales", "E001,p1@corp.example,Person 1,Marketing"]
    result = await import_staff(app.lifecycle, csv(tmp_path, rows, "staff2.csv"))
    reasons = {(c.email, c.group_address): c.reason for c in result.plan.removes}
    assert reasons[("p1@corp.example", "sales@corp.example")] == (
        "p1@corp.example no longer matches rule sales (changed in staff2.csv: department Sales → Marketing)"
    )
    assert reasons[("p2@corp.example", "sales@corp.example")].endswith("(missing from staff2.csv)")


async def test_a_first_imports_dry_run_shows_what_the_real_run_does(lbot, tmp_path) -> None:  # type: ignore[no-untyped-def]
    app = lbot.app
    async with app.ctx.sessions() as s, s.begin():  # a new database: the rule groups are not made yet
        await s.execute(delete(Group))
    dry = await import_staff(app.lifecycle, csv(tmp_path, staff_rows(3)), dry_run=True)
    async with app.ctx.sessions() as s:  # the dry run created nothing
        assert (await s.execute(select(Group.id).where(Group.local_part == "sales"))).first() is None
    assert "would create sales@corp.example" in dry.summary(), dry.summary()
    real = await import_staff(app.lifecycle, csv(tmp_path, staff_rows(3)))
    assert len(dry.plan.adds) == len(real.added) == 6, (dry.summary(), real.summary())


# -- /rules reload and /sync -------------------------------------------------------------------------------
async def test_rules_reload_and_sync_trip_the_guards_as_a_whole(lbot, tmp_path) -> None:  # type: ignore[no-untyped-def]
    app = lbot.app
    await import_staff(app.lifecycle, csv(tmp_path, staff_rows(10)))
    # a rule edit that would empty sales@
    write_rules(tmp_path, RULES.replace("members: {department: Sales}", "members: {department: Nobody}"))
    reply = await lbot.say(HR, "/rules reload")
    assert "The plan waits for an approver (plan #" in reply
    plan = await assert_held(app, "it removes 10 of 10 members (100%) of sales@corp.example")
    assert "sales" in await groups_of(lbot, "p0@corp.example")
    await lbot.say(APPROVER, f"/plan reject {plan.id}")
    # /sync with the same rules in force asks again, the same way
    reply = await lbot.say(HR, "/sync")
    assert "The plan waits for an approver (plan #" in reply
    await assert_held(app, "it removes 10 of 10 members (100%) of sales@corp.example")
    dry = await lbot.say(HR, "/sync --dry-run")
    assert "Applying it would need an approver: it removes 10 of 10 members" in dry


async def test_sync_into_a_protected_group_waits(lbot, tmp_path) -> None:  # type: ignore[no-untyped-def]
    app = lbot.app
    await import_staff(app.lifecycle, csv(tmp_path, staff_rows(2)))
    async with app.ctx.sessions() as s, s.begin():  # as if HR's system moved them while Postroom was down
        await s.execute(update(Person).values(attributes={"department": "Engineering"}))
    await lbot.say(HR, "/sync")
    await assert_held(app, "it changes the protected group eng@corp.example")
    assert "eng" not in await groups_of(lbot, "p0@corp.example")


# -- messenger directories -----------------------------------------------------------------------------------
async def test_a_slack_joiner_into_a_protected_group_waits(rig, tmp_path) -> None:  # type: ignore[no-untyped-def]
    await use_rules(rig.app, tmp_path, RULES)
    lead = user("U0LEAD", "lee@corp.example", "Lee Lead", profile={"title": "Lead"})
    resp = await rig.event(event_envelope({"type": "team_join", "user": lead}, "Ev0LEAD", at=time.time() - 5))
    assert resp.status_code == 200
    deadline = time.monotonic() + 10
    while not await pending(rig.app):
        assert time.monotonic() < deadline, "the joiner never reached the lifecycle"
        await rig.app.drain(1)
    await assert_held(rig.app, "it changes the protected group leads@corp.example")
    async with rig.app.ctx.sessions() as s:
        lee = (await s.execute(select(Membership.email).where(Membership.email == "lee@corp.example"))).all()
    assert len(lee) == 1  # all-staff@ applied; leads@ waits


async def test_a_dingtalk_joiner_into_a_protected_group_waits(ding: DingWorld, tmp_path: Path) -> None:  # noqa: F811
    await use_rules(ding.app, tmp_path, RULES)
    born = int(time.time() * 1000)
    frame = ding.fake.event("user_add_org", "ev-p1", {"timeStamp": "1", "userId": ["ivan01"]}, born_ms=born)
    await ding.acked(await ding.fake.push(frame))
    await ding.adapter.settle()
    await assert_held(ding.app, "it changes the protected group leads@corp.example")


async def test_a_wecom_joiner_into_a_protected_group_waits(world: WeComWorld, tmp_path: Path) -> None:  # noqa: F811
    await use_rules(world.app, tmp_path, RULES)
    xml = contact_xml("create_user", "ivan", int(time.time()) - 5, Name="Ivan", Department="2")
    assert (await world.callback(xml)).status_code == 200
    await world.adapter.settle()
    await assert_held(world.app, "it changes the protected group leads@corp.example")


# -- rule exceptions ---------------------------------------------------------------------------------------
async def test_a_manual_removal_of_a_rule_member_survives_sync_until_added_again(lbot, tmp_path) -> None:  # type: ignore[no-untyped-def]
    app = lbot.app
    await import_staff(app.lifecycle, csv(tmp_path, staff_rows(10)))
    assert "sales" in await groups_of(lbot, "p3@corp.example")
    reply = await lbot.say(HR, "/removegroup sales p3@corp.example")
    assert reply.startswith("Removed p3@corp.example from sales@corp.example")
    assert "they stay out of sales@corp.example (a rule exception)" in reply
    async with app.ctx.sessions() as s:
        exceptions = (await s.execute(select(RuleException.email, RuleException.rule))).all()
    assert [tuple(e) for e in exceptions] == [("p3@corp.example", "rule:sales")]
    dry = await lbot.say(HR, "/sync --dry-run")
    assert (
        "nothing to change" in dry
        and "Kept out by rule exceptions: p3@corp.example from sales@corp.example" in dry
    )
    assert "Everything matches the rules: nothing changed." in await lbot.say(HR, "/sync")
    assert "sales" not in await groups_of(lbot, "p3@corp.example")
    # a mover's event does not undo it either
    await lbot.core.handle_person_event(
        PersonEvent(
            "changed",
            "hr-webhook",
            "E003",
            None,
            {"department": "Sales", "title": "x"},
            "m3",
            T0 + timedelta(1),
        )
    )
    assert "sales" not in await groups_of(lbot, "p3@corp.example")
    shown = await lbot.say(HR, "/groups p3@corp.example")
    assert (
        "kept out of sales@corp.example although a rule puts them in (removed by hannah@corp.example" in shown
    )
    # HR adds them again by hand: the exception is lifted, and audited
    assert (await lbot.say(HR, "/addgroup sales p3@corp.example")).startswith("Added")
    async with app.ctx.sessions() as s:
        assert (await s.execute(select(RuleException.id))).first() is None
    assert "kept out" not in await lbot.say(HR, "/groups p3@corp.example")


async def test_a_stored_job_from_before_the_upgrade_still_runs(database_url, smtp, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Jobs stored by an earlier version named their function; migration 0008 names their handler instead,
    so a leaver's pending grace period survives the upgrade."""
    import pickle

    from alembic import command
    from apscheduler.job import Job
    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
    from apscheduler.schedulers.background import BackgroundScheduler
    from apscheduler.triggers.date import DateTrigger
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    from bot.db.engine import alembic_config, upgrade
    from bot.scheduler import JOBS_TABLE, STORED_JOB, sync_url

    engine = create_async_engine(database_url)

    def to_0007(sync_conn: Any) -> None:  # a new database, or one a previous test left at the head
        cfg = alembic_config()
        cfg.attributes["connection"] = sync_conn
        command.upgrade(cfg, "0007")
        command.downgrade(cfg, "0007")

    async with engine.begin() as conn:
        await conn.run_sync(to_0007)
    await engine.dispose()
    # A job as the earlier version stored it: a date trigger in the past and its function's path.
    old = BackgroundScheduler(timezone=UTC)
    store = SQLAlchemyJobStore(url=sync_url(database_url), tablename=JOBS_TABLE)
    store.start(old, "default")
    due = DateTrigger(run_date=T0, timezone=UTC)
    job = Job(old, id="hr.leaver:1", func=STORED_JOB, trigger=due, executor="default", args=(),
              kwargs={"person_id": 1, "left_at": T0.isoformat()}, name="finish_leaver", misfire_grace_time=None,
              coalesce=True, max_instances=1, next_run_time=T0)  # fmt: skip
    state = job.__getstate__()
    state["func"] = "bot.hr.lifecycle:finish_leaver"
    store.add_job(job)
    with store.engine.begin() as sync:
        sync.execute(store.jobs_t.update().values(job_state=pickle.dumps(state, pickle.HIGHEST_PROTOCOL)))
    store.shutdown()

    engine = create_async_engine(database_url)
    await upgrade(engine)  # postroom db upgrade
    await engine.dispose()
    async for b in lifecycle_bot(database_url, smtp.port, tmp_path):
        async with b.app.ctx.engine.connect() as conn:
            raw = (await conn.execute(text(f"SELECT job_state FROM {JOBS_TABLE}"))).scalar_one()
        upgraded = pickle.loads(raw)
        assert upgraded["func"] == STORED_JOB
        assert upgraded["kwargs"] == {
            "handler": "hr.finish-leaver",
            "person_id": 1,
            "left_at": T0.isoformat(),
        }
        # the scheduler loads it and its handler runs it (person #1 is nobody now: nothing to remove)
        assert b.app.scheduler.next_run("hr.leaver:1") == T0
        assert await b.app.scheduler.run_now("hr.leaver:1") == []


async def test_an_approved_snapshot_counts_only_the_events_that_applied(lbot, tmp_path) -> None:  # type: ignore[no-untyped-def]
    app = lbot.app
    await import_staff(app.lifecycle, csv(tmp_path, staff_rows(10)))
    held = await import_staff(app.lifecycle, csv(tmp_path, staff_rows(5), "half.csv"))
    assert held.held is not None  # five leavers at once wait for an approver
    # Meanwhile HR's system says something newer about one of them — they left and were rehired — so their
    # leave from the file is stale (a late leave applies unless a newer rehire is on record).
    moment = datetime.now(UTC)
    for kind, event_id, at in (
        ("left", "n9-left", moment),
        ("joined", "n9-back", moment + timedelta(seconds=1)),
    ):
        await lbot.core.handle_person_event(
            PersonEvent(kind, "hr-webhook", "E009", None, {"department": "Sales"}, event_id, at)  # type: ignore[arg-type]
        )
    reply = await lbot.say(APPROVER, f"/plan approve {held.held}")
    assert "4 events applied" in reply, reply
    assert "all-staff" in await groups_of(lbot, "p9@corp.example")
    assert await groups_of(lbot, "p8@corp.example") == {}
