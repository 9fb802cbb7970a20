"""Rules, the one planner, its guards and held plans: CSV snapshots, /sync, /rules, protected groups."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import settings as settings_
from hypothesis import strategies as st
from sqlalchemy import func, select

from bot.config import load_settings
from bot.db.models import AuditEntry, Group, Membership, PendingPlan, Person
from bot.errors import UserError
from bot.events import Action, Actor, Conversation, PersonEvent
from bot.hr.importer import import_staff
from tests.conftest import ADMIN, APPROVER, HR, NOBODY
from tests.lifecycle_kit import RULES, groups_of, lifecycle_bot, write_rules

SETTINGS = load_settings(read_file=False, org={"domains": ["corp.example"]})
STAFF = ["employee_id,email,name,department,location"] + [
    f"E{i:03d},p{i}@corp.example,Person {i},{'Engineering' if i % 2 else 'Sales'},Berlin" for i in range(10)
]


@pytest.fixture
async def lbot(database_url, smtp, tmp_path):  # type: ignore[no-untyped-def]
    async for b in lifecycle_bot(database_url, smtp.port, tmp_path):
        yield b


def csv_file(tmp_path: Path, lines: list[str], name: str = "staff.csv") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


async def all_staff_size(bot) -> int:  # type: ignore[no-untyped-def]
    async with bot.core.ctx.sessions() as s:
        return (
            await s.execute(
                select(func.count())
                .select_from(Membership)
                .join(Group)
                .where(Group.local_part == "all-staff")
            )
        ).scalar_one()


async def test_csv_import_that_drops_half_of_all_staff_waits_for_an_approver(lbot, tmp_path) -> None:  # type: ignore[no-untyped-def]
    first = await import_staff(lbot.app.lifecycle, csv_file(tmp_path, STAFF))
    assert first.applied and first.joined == 10
    assert await all_staff_size(lbot) == 10
    assert await groups_of(lbot, "p1@corp.example") == {
        "all-staff": "rule:all-staff",
        "eng": "rule:eng",
        "berlin": "rule:berlin",
    }

    dry = await import_staff(lbot.app.lifecycle, csv_file(tmp_path, STAFF[:6], "half.csv"), dry_run=True)
    assert dry.left == 5 and dry.reasons and "Dry run" in dry.summary()
    half = await import_staff(lbot.app.lifecycle, csv_file(tmp_path, STAFF[:6], "half.csv"))
    assert half.held is not None and not half.applied
    assert "removes 5 of 10 members (50%) of all-staff@corp.example" in half.summary()
    assert await all_staff_size(lbot) == 10  # nothing changed
    async with lbot.core.ctx.sessions() as s:
        assert (
            await s.execute(select(func.count()).select_from(Person).where(Person.status == "left"))
        ).scalar_one() == 0
    card = lbot.cards("approvals")[-1].card
    assert card is not None and [b.label for b in card.buttons] == ["Approve", "Reject"]
    assert any("all-staff@corp.example" in v for _n, v in card.fields)

    # Someone without the approver role cannot press it; an approver can, once.
    click = Action(
        Actor("console", NOBODY, email=NOBODY),
        "plan.approve",
        str(half.held),
        Conversation("console", "approvals"),
        delivery_id="click-1",
    )
    refused = await lbot.core.handle_action(click)
    assert refused is not None and "Only approvers" in refused.text
    ok = Action(
        Actor("console", APPROVER, email=APPROVER),
        "plan.approve",
        str(half.held),
        Conversation("console", "approvals"),
        delivery_id="click-2",
    )
    reply = await lbot.core.handle_action(ok)
    assert reply is not None and f"approved by {APPROVER}" in reply.text
    assert await all_staff_size(lbot) == 5
    assert await groups_of(lbot, "p9@corp.example") == {}
    again = await lbot.say(APPROVER, f"/plan approve {half.held}")
    assert "already approved" in again


async def test_rejected_plan_changes_nothing(lbot, tmp_path) -> None:  # type: ignore[no-untyped-def]
    await import_staff(lbot.app.lifecycle, csv_file(tmp_path, STAFF))
    half = await import_staff(lbot.app.lifecycle, csv_file(tmp_path, STAFF[:3], "few.csv"))
    assert half.held is not None
    reply = await lbot.say(APPROVER, f"/plan reject {half.held}")
    assert f"rejected by {APPROVER}" in reply
    assert await all_staff_size(lbot) == 10
    async with lbot.core.ctx.sessions() as s:
        assert (await s.execute(select(PendingPlan.state))).scalar_one() == "rejected"


async def test_bad_csv_is_refused_whole(lbot, tmp_path) -> None:  # type: ignore[no-untyped-def]
    bad = STAFF[:4] + ["E099,not-an-email,X,Sales,Berlin"]
    with pytest.raises(UserError, match="Line 5"):
        await import_staff(lbot.app.lifecycle, csv_file(tmp_path, bad))
    with pytest.raises(UserError, match="repeats employee E001"):
        await import_staff(lbot.app.lifecycle, csv_file(tmp_path, STAFF[:3] + [STAFF[2]]))
    with pytest.raises(UserError, match="outside corp.example"):
        await import_staff(
            lbot.app.lifecycle, csv_file(tmp_path, STAFF[:2] + ["E050,x@gmail.com,X,Sales,Berlin"])
        )
    async with lbot.core.ctx.sessions() as s:
        assert (await s.execute(select(func.count()).select_from(Person))).scalar_one() == 0


async def test_sync_dry_run_shows_the_plan_and_sync_applies_it_keeping_manual(lbot, tmp_path) -> None:  # type: ignore[no-untyped-def]
    async with lbot.core.ctx.sessions() as s, s.begin():
        s.add(Person(employee_id="E1", email="zoe@corp.example", attributes={"department": "Engineering"}))
        s.add(
            Person(
                employee_id="E2",
                email="yan@corp.example",
                attributes={"department": "Sales", "location": "Potsdam"},
            )
        )
    await lbot.say(HR, "/addgroup social zoe@corp.example")
    reply = await lbot.say(HR, "/sync --dry-run")
    assert "Dry run — nothing changed. 5 to add, 0 to remove." in reply
    assert (
        "+ yan@corp.example to berlin@corp.example (rule berlin: location is one of Berlin, Potsdam" in reply
    )
    assert await groups_of(lbot, "zoe@corp.example") == {"social": "manual"}
    reply = await lbot.say(NOBODY, "/sync")
    assert "for HR or admins;" in reply
    reply = await lbot.say(HR, "/sync")
    assert "Applied 5 changes." in reply
    assert await groups_of(lbot, "zoe@corp.example") == {
        "social": "manual",
        "all-staff": "rule:all-staff",
        "eng": "rule:eng",
    }
    assert "nothing to change" in await lbot.say(HR, "/sync --dry-run")
    async with lbot.core.ctx.sessions() as s:
        actors = set(
            (await s.execute(select(AuditEntry.actor).where(AuditEntry.action == "membership.add"))).scalars()
        )
    assert actors == {HR}


async def test_bad_rules_file_is_refused_and_the_old_rules_stay(lbot, tmp_path) -> None:  # type: ignore[no-untyped-def]
    before = await lbot.say(HR, "/rules")
    assert (
        "eng@corp.example (internal, posting: members; owners alice@corp.example) — department is Engineering"
        in before
    )
    write_rules(tmp_path, RULES.replace("    post: members\n", "    post: everybody\n"))
    reply = await lbot.say(HR, "/rules reload")
    assert "line 8: post must be one of members, company, anyone, moderated, not “everybody”" in reply
    assert "rules in force are unchanged" in reply
    shown = await lbot.say(HR, "/rules")  # says the same: the file does not load, the old rules stay
    assert shown.startswith("The rules file changed but could not be loaded, so the rules loaded before stay")
    assert shown.endswith(before)
    write_rules(tmp_path, RULES + "  - address: eng\n")
    assert "eng@corp.example is declared twice (first on line 6)" in await lbot.say(HR, "/rules reload")
    write_rules(tmp_path, RULES + "  - address: ops\n    members: {team: [a, b]\n")
    assert "not valid YAML" in await lbot.say(HR, "/rules reload")
    write_rules(tmp_path, RULES + "  - address: ops\n    owners: [x@gmail.com]\n")
    assert "external people can't own it" in await lbot.say(HR, "/rules reload")
    write_rules(tmp_path, RULES + "  - address: ops\n    protected: true\n    members: {department: Ops}\n")
    reply = await lbot.say(HR, "/rules reload")
    assert "Loaded 7 group rules" in reply and "created ops@corp.example" in reply
    assert "ops@corp.example (internal, protected" in await lbot.say(HR, "/rules")


async def test_a_running_serve_notices_the_rules_file_changed(lbot, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`/rules reload` typed in `postroom chat` (another process) used to leave `serve` on its old rules."""
    assert "ops@corp.example" not in await lbot.say(HR, "/rules")
    write_rules(tmp_path, RULES + "  - address: ops\n    members: {department: Ops}\n")
    # ... what the other process's reload read: this process runs on it too, before anyone reloads here
    assert "ops@corp.example" in await lbot.say(HR, "/rules")
    assert any(r.address == "ops@corp.example" for r in lbot.app.rules.current().groups)


def test_a_broken_rules_file_reads_the_same_in_reload_and_rules(tmp_path: Path) -> None:
    from bot.errors import UserError
    from bot.groups.rules import RuleBook
    from tests.conftest import make_settings

    path = write_rules(tmp_path, RULES.replace("    post: members\n", "    post: everybody\n"))
    settings = make_settings("sqlite+aiosqlite:///unused.db", 25, tmp_path, groups={"rules_file": str(path)})
    book = RuleBook(settings)  # a fresh `postroom chat`
    with pytest.raises(UserError) as refused:
        book.read()
    assert refused.value.sentence == book.describe()
    assert "could not be loaded" in book.describe() and "unchanged" not in refused.value.sentence


async def test_changes_to_a_protected_group_wait_for_an_approver(lbot, tmp_path) -> None:  # type: ignore[no-untyped-def]
    write_rules(tmp_path, RULES.replace("    name: Everyone\n", "    name: Everyone\n    protected: true\n"))
    await lbot.say(ADMIN, "/rules reload")
    at = datetime(2026, 11, 2, 9, tzinfo=UTC)
    out = await lbot.core.handle_person_event(
        PersonEvent("joined", "test", "E3", "kim@corp.example", {"department": "Sales"}, "p1", at)
    )
    assert out.added == ["sales@corp.example"] and out.held is not None
    assert await groups_of(lbot, "kim@corp.example") == {"sales": "rule:sales"}
    assert "wait for an approver (plan #" in lbot.out.getvalue()
    await lbot.say(APPROVER, f"/plan approve {out.held}")
    assert await groups_of(lbot, "kim@corp.example") == {"sales": "rule:sales", "all-staff": "rule:all-staff"}
    # A leaver leaves protected groups at once: nobody waits for an approver to stop mail.
    left = await lbot.core.handle_person_event(
        PersonEvent("left", "test", "E3", None, {}, "p2", at + timedelta(1))
    )
    assert left.held is None and await groups_of(lbot, "kim@corp.example") == {}


def test_the_documented_example_rules_file_loads_and_matches() -> None:
    from bot.config import load_settings
    from bot.groups.rules import load_rules, person_values

    root = Path(__file__).parents[1]
    rules = load_rules(
        root / "manifests/groups.example.yaml",
        load_settings(read_file=False, org={"domains": ["corp.example"]}),
    )
    assert [g.local_part for g in rules.groups] == ["all-staff", "eng", "berlin", "eng-leads", "partners"]
    lead = person_values(
        "li@corp.example",
        "E7",
        None,
        {"department": "engineering", "title": "Team Lead", "location": "Potsdam"},
    )
    assert [g.local_part for g in rules.groups_for(lead)] == ["all-staff", "eng", "berlin", "eng-leads"]
    contractor = person_values("c@corp.example", "E0042", None, {"employment_type": "Contractor"})
    assert [g.local_part for g in rules.groups_for(contractor)] == ["eng-leads"]
    assert rules.by_address["partners@corp.example"].kind == "external-allowed"


async def test_a_plan_held_where_no_messenger_listens_is_announced_once_later(lbot, tmp_path) -> None:  # type: ignore[no-untyped-def]

    await import_staff(lbot.app.lifecycle, csv_file(tmp_path, STAFF))
    console = lbot.app.messengers.adapters.pop("console")  # as in `postroom hr import`: no messenger attached
    held = await import_staff(lbot.app.lifecycle, csv_file(tmp_path, STAFF[:2], "two.csv"))
    assert held.held is not None
    lbot.app.attach(console)
    assert await lbot.app.memberships.announce_pending() == [held.held]
    assert await lbot.app.memberships.announce_pending() == []
    card = lbot.cards("approvals")[-1].card
    assert card is not None and card.title == f"Membership plan #{held.held} needs an approver"
    fields = dict(card.fields)  # the snapshot's own counts beside its plan (its stored text is not cut)
    assert fields["HR events"].endswith(f"— {held.counts()}"), fields


async def test_groups_shows_each_membership_source(lbot) -> None:  # type: ignore[no-untyped-def]
    at = datetime(2026, 11, 2, 9, tzinfo=UTC)
    await lbot.core.handle_person_event(
        PersonEvent("joined", "test", "E3", "kim@corp.example", {"department": "Sales"}, "s1", at)
    )
    await lbot.say(HR, "/addgroup social kim@corp.example")
    reply = await lbot.say(HR, "/groups kim@corp.example")
    assert "sales@corp.example — by the rule “sales”" in reply
    assert f"social@corp.example — added by hand by {HR}" in reply


@settings_(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_any_rules_text_loads_or_is_refused_with_a_sentence(text: str) -> None:
    from bot.groups.rules import RulesError, parse_rules

    try:
        parse_rules(text, SETTINGS, "r.yaml")
    except RulesError as exc:
        assert exc.sentence.startswith("r.yaml") and exc.sentence.endswith(".")


@settings_(max_examples=100, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [
                "  - address: a\n",
                "    members: {department: x}\n",
                "    post: members\n",
                "    except: {title: y}\n",
                "    kind: internal\n",
                "    owners: [o@corp.example]\n",
                "    bogus: 1\n",
                "  - {}\n",
                "    members: everyone\n",
            ]
        ),
        max_size=8,
    )
)
def test_generated_rule_files_load_or_name_their_line(lines: list[str]) -> None:
    from bot.groups.rules import RulesError, parse_rules

    text = "groups:\n" + "".join(lines)
    try:
        parse_rules(text, SETTINGS, "r.yaml")
    except RulesError as exc:
        assert re.match(r"r\.yaml, line \d+: ", exc.sentence), exc.sentence


async def test_a_second_snapshot_moves_people_and_drops_attributes_it_no_longer_has(lbot, tmp_path) -> None:  # type: ignore[no-untyped-def]
    await import_staff(
        lbot.app.lifecycle, csv_file(tmp_path, STAFF[:3])
    )  # p0 Sales, p1 Engineering, both Berlin
    moved = [STAFF[0], STAFF[1].replace(",Sales,Berlin", ",Engineering,"), STAFF[2]]
    result = await import_staff(lbot.app.lifecycle, csv_file(tmp_path, moved, "moved.csv"))
    assert (result.changed, result.unchanged, result.left) == (1, 1, 0)
    assert await groups_of(lbot, "p0@corp.example") == {"all-staff": "rule:all-staff", "eng": "rule:eng"}
    async with lbot.core.ctx.sessions() as s:
        attrs = (await s.execute(select(Person.attributes).where(Person.employee_id == "E000"))).scalar_one()
    assert attrs == {"department": "Engineering"}
    again = await import_staff(lbot.app.lifecycle, csv_file(tmp_path, moved, "moved.csv"))
    assert (again.changed, again.unchanged, again.plan.changes) == (0, 2, [])
