"""Findings of a new user's tryout of the groups, HR, roles and help side, each with the test that failed
before its fix."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.conftest import APPROVER, HR, NOBODY, ChatBot
from tests.lifecycle_kit import hr_event, lifecycle_bot, post_event, web_client
from tests.smtp import SmtpServer

BOB = "bob@corp.example"
RULES = """\
groups:
  - address: eng
    owners: [bob@corp.example]
    members: {department: Engineering}
  - address: club
    visibility: members
    members: {department: Engineering}
"""


def _at(days: float = 0) -> str:
    return (datetime.now(UTC) + timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture
async def grace_bot(database_url: str, smtp: SmtpServer, tmp_path: Path) -> AsyncIterator[ChatBot]:
    """Leavers keep their groups for two days (HR's record says left; their removal is pending)."""
    async for b in lifecycle_bot(
        database_url,
        smtp.port,
        tmp_path,
        rules=RULES,
        groups={"leaver_grace_hours": 48},
        roles={"hr": [HR, BOB]},
    ):
        yield b


async def test_a_leaver_is_nobodys_colleague_for_any_command(grace_bot: ChatBot) -> None:
    bot = grace_bot
    # before leaving: a colleague, an owner of eng@, a member of club@, and listed as HR in the config
    async with web_client(bot) as client:
        joined = hr_event("joined", "j-bob", "E1", BOB, _at(-1), department="Engineering")
        assert (await post_event(client, joined)).status_code == 200
    assert "eng@corp.example" in await bot.say(BOB, "/groups")
    assert "club@corp.example has 1 member" in await bot.say(BOB, "/members club")
    async with web_client(bot) as client:
        assert (await post_event(client, hr_event("left", "l-bob", "E1", BOB, _at()))).status_code == 200
    await bot.settle()
    # left, in the grace period: still in both groups, but no longer a colleague, an owner or HR
    assert "club@corp.example has 1 member" in await bot.say(HR, "/members club")
    left = "HR's record says you have left the company"
    for command in ("/groups", "/groups bob@corp.example", "/members eng", "/members club"):
        answer = await bot.say(BOB, command)
        assert left in answer, (command, answer)
        assert "has 1 member" not in answer and "group:" not in answer, (command, answer)
    for command in ("/sync --dry-run", "/rules reload", "/audit", "/posts eng"):
        answer = await bot.say(BOB, command)
        assert left in answer, (command, answer)
    answer = await bot.say(BOB, "/addgroup eng nora@corp.example")
    assert left in answer
    assert "nora@corp.example" not in await bot.say(HR, "/members eng")
    # a colleague still sees what the company may see
    assert "eng@corp.example has 1 member" in await bot.say(NOBODY, "/members eng")


# -- the exit status says what happened --------------------------------------------------------------
STAFF = """employee_id,email,name,department
E1,alice@corp.example,Alice,Engineering
E2,bob@corp.example,Bob,Engineering
E3,chen@corp.example,Chen,Sales
"""


def test_an_unchanged_re_import_is_a_success_and_says_so(tmp_path: Path) -> None:
    from tests.test_cli import POSTROOM, clean_env

    (tmp_path / "staff.csv").write_text(STAFF)
    env = clean_env({"POSTROOM_DATABASE__URL": f"sqlite+aiosqlite:///{tmp_path / 'p.db'}"})

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [POSTROOM, *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
        )

    first = run("hr", "import", "staff.csv")
    assert first.returncode == 0 and "Imported: 3 joined" in first.stdout, first.stdout + first.stderr
    again = run("hr", "import", "staff.csv")
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.strip() == (
        "Nothing to import: all 3 people in staff.csv are already as the file says; nothing changed."
    )


def test_postroom_chat_exits_non_zero_when_the_command_is_refused(tmp_path: Path) -> None:
    from tests.test_cli import POSTROOM, clean_env, write_config

    with SmtpServer() as smtp:
        config = write_config(tmp_path, smtp.port, 8080)

        def chat(who: str, text: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [POSTROOM, "--config", str(config), "chat", "--as", who, text],
                env=clean_env(),
                cwd=tmp_path,
                capture_output=True,
                text=True,
                timeout=60,
            )

        done = chat(HR, "/newgroup eng")
        assert done.returncode == 0 and "Created the internal group eng@corp.example" in done.stdout
        for who, text, said in (
            (NOBODY, "/newgroup sales", "/newgroup is for HR"),  # a role refusal
            (HR, "/newgroup eng", "already exists"),  # refused by the state of things
            (HR, "/addgroup", "needs a group"),  # malformed
            (HR, "/nosuch", "I don't know the command"),
        ):
            refused = chat(who, text)
            assert refused.returncode == 1, (text, refused.stdout, refused.stderr)
            assert said in refused.stdout and "Traceback" not in refused.stderr, (text, refused.stdout)
        assert chat(NOBODY, "/help").returncode == 0


# -- the usage line is for malformed commands only ---------------------------------------------------
async def test_only_a_malformed_command_gets_the_usage_line(bot: ChatBot) -> None:
    await bot.say(HR, "/newgroup eng")
    await bot.say(HR, "/addgroup eng alice@corp.example")
    refusals = {
        "/removegroup eng bob@corp.example": "bob@corp.example is not in eng@corp.example",
        "/addgroup eng alice@corp.example": "already",
        "/addgroup eng ghost@corp.example": "No HR source or messenger knows ghost@corp.example",
        "/addgroup eng lena@example.com": "external people can't join it",
        "/members nosuch": "There is no group “nosuch”",
        "/groups nosuch@corp.example": "is in no group",
        "/newgroup eng": "already exists",
        "/plan approve 7": "There is no membership plan #7",
    }
    for command, said in refusals.items():
        answer = await bot.say(APPROVER if command.startswith("/plan") else HR, command)
        assert said in answer and "Usage:" not in answer, (command, answer)
    for who, command in ((NOBODY, "/sync"), (NOBODY, "/removegroup eng alice@corp.example")):
        answer = await bot.say(who, command)
        assert "Usage:" not in answer, (command, answer)
    malformed = {
        "/addgroup eng": "Usage: /addgroup <group> <member>",
        "/addgroup eng not-an-address": "Usage: /addgroup <group> <member>",
        "/members": "Usage: /members <group>",
        "/plan approve seven": "Usage: /plan approve <id>",
        "/newgroup bad!name": "Usage: /newgroup <address>",
    }
    for command, usage in malformed.items():
        answer = await bot.say(APPROVER if command.startswith("/plan") else HR, command)
        assert usage in answer, (command, answer)


async def test_the_members_refusal_says_the_groups_real_rule(grace_bot: ChatBot) -> None:
    bot = grace_bot
    from bot.db.models import Group

    async with bot.app.ctx.sessions() as session, session.begin():
        session.add(Group(address="board@corp.example", local_part="board", visibility="owners"))
    outsider = "guest@partner.example"
    assert await bot.say(outsider, "/members eng") == (
        "The members of eng@corp.example are visible to people in the company, its owners, HR and admins."
    )
    assert await bot.say(NOBODY, "/members club") == (
        "The members of club@corp.example are visible to its members, its owners, HR and admins only."
    )
    assert await bot.say(NOBODY, "/members board") == (
        "The members of board@corp.example are visible to its owners, HR and admins only."
    )


# -- who may: every role that may, and the README's rule ------------------------------------------------
async def test_role_sentences_name_every_role_and_rules_is_for_colleagues(bot: ChatBot) -> None:
    assert await bot.say(NOBODY, "/newgroup sales") == (
        "/newgroup is for HR or admins; you have none of these roles. An admin can grant one in the "
        "configuration."
    )
    assert "/plan approve is for approvers or admins;" in await bot.say(NOBODY, "/plan approve 1")
    assert "/rules reload is for HR or admins;" in await bot.say(NOBODY, "/rules reload")
    assert "/suppressions list is for admins; you don't have that role." in await bot.say(
        NOBODY, "/suppressions list"
    )
    assert "No group rules are in force." in await bot.say(NOBODY, "/rules")
    assert await bot.say("guest@partner.example", "/rules") == "/rules is for people in the company."
    help_plan = await bot.say(NOBODY, "/help plan")
    assert "(approvers, admins)" in help_plan


async def test_an_addgroup_refused_whole_says_nothing_was_added_and_names_each_refused_address(
    bot: ChatBot,
) -> None:
    await bot.say(HR, "/newgroup eng")
    answer = await bot.say(HR, "/addgroup eng carl@corp.example ext@partner.example ext2@other.example")
    lines = answer.splitlines()
    assert lines[0] == "Nothing was added to eng@corp.example: 2 addresses were refused."
    assert lines[1].startswith("  ext@partner.example is outside corp.example") and len(lines) == 3
    assert lines[2].startswith("  ext2@other.example is outside corp.example")
    assert "eng@corp.example has no members yet." in await bot.say(HR, "/members eng")
    one = await bot.say(HR, "/addgroup eng carl@corp.example ext@partner.example")
    assert one.startswith(
        "Nothing was added to eng@corp.example: ext@partner.example is outside corp.example"
    )


# -- approving a held plan: why nothing applied, and who asked and who approved -------------------------
async def test_an_approved_plan_credits_the_requester_and_the_approver_and_says_why_nothing_applied(
    bot: ChatBot,
) -> None:
    from sqlalchemy import select, update

    from bot.db.models import AuditEntry, Group, Membership, Person

    await bot.say(HR, "/newgroup vip")
    async with bot.app.ctx.sessions() as session, session.begin():
        await session.execute(update(Group).values(protected=True))
    held = await bot.say(HR, "/addgroup vip carl@corp.example dana@corp.example")
    assert "waits for an approver (plan #1)" in held
    async with bot.app.ctx.sessions() as session, session.begin():  # dana leaves while the plan waits
        await session.execute(update(Person).where(Person.email == "dana@corp.example").values(status="left"))
    answer = await bot.say(APPROVER, "/plan approve 1")
    assert answer == (
        f"Membership plan #1 from {HR}, approved by {APPROVER}: 1 change applied. Not applied: "
        "dana@corp.example has left since the plan was made."
    )
    async with bot.app.ctx.sessions() as session:
        added_by = (await session.execute(select(Membership.added_by))).scalars().all()
        entries = (
            (
                await session.execute(
                    select(AuditEntry).where(AuditEntry.action.in_(["membership.add", "plan.approved"]))
                )
            )
            .scalars()
            .all()
        )
    assert added_by == [HR]
    add = next(e for e in entries if e.action == "membership.add")
    assert add.actor == HR and add.after == {"email": "carl@corp.example", "source": "manual"}
    assert add.detail == f"added by {HR}; approved by {APPROVER} (plan #1)"
    decided = next(e for e in entries if e.action == "plan.approved")
    assert decided.actor == APPROVER and decided.before == {"state": "pending", "requested_by": HR}
    assert f"Membership plan #1 from {HR}, approved by {APPROVER}" in str(bot.cards()[-1].card)


async def test_rules_and_plans_say_plainly_that_leavers_are_never_added_by_rules(grace_bot: ChatBot) -> None:
    bot = grace_bot
    from sqlalchemy import select

    from bot.db.models import Group, Person
    from bot.groups.service import Change, Plan

    assert (
        "Rules match active people only: leavers are never added by rules, and leave every group (memberships "
        "added by hand too)."
    ) in await bot.say(NOBODY, "/rules")
    async with bot.app.ctx.sessions() as session, session.begin():
        session.add(Person(employee_id="E9", email="dana@corp.example", status="left", source="test"))
    async with bot.app.ctx.sessions() as session:
        eng = (await session.execute(select(Group).where(Group.local_part == "eng"))).scalar_one()
    rule_add = Change(
        "add", eng.id, eng.address, "dana@corp.example", "rule:eng", "rule eng: department is Engineering"
    )
    out = await bot.app.memberships.execute(
        Plan([rule_add]), kind="reviewed", source="test", actor="test", via="test"
    )
    assert out.applied == 0
    assert [why for _c, why in out.plan.refused] == [
        "dana@corp.example has left the company, and leavers are never added by rules: not added to "
        "eng@corp.example."
    ]


def test_the_example_rules_file_documents_and_uses_the_moderation_keys() -> None:
    from bot.config import load_settings
    from bot.groups.rules import GROUP_KEYS, load_rules

    example = Path(__file__).parents[1] / "manifests" / "groups.example.yaml"
    header = example.read_text().split("\ngroups:")[0]
    for key in sorted(GROUP_KEYS):
        assert f"#   {key} " in header, f"{key} is not documented in {example.name}"
    assert "moderated (every post waits" in header
    org = {"name": "Example Corp", "domains": ["corp.example"], "postal_address": "1 Example Street, Berlin"}
    rules = load_rules(example, load_settings(read_file=False, org=org)).by_address
    eng = rules["eng@corp.example"]
    assert (eng.moderation, eng.moderators) == ("nonmembers", ("alice@corp.example", "hannah@corp.example"))
    assert rules["eng-leads@corp.example"].post_policy == "moderated"


# -- the demo's mail catcher: a group address nobody has gets the README's 550 ---------------------------
async def test_with_the_demo_mailbox_behind_the_relay_an_unknown_group_address_gets_550(
    database_url: str, smtp: SmtpServer, tmp_path: Path
) -> None:
    from email.message import EmailMessage

    import aiosmtplib

    from bot.app import Runtime
    from bot.mail.server import Mailbox
    from tests.smtp import free_port

    port = free_port()
    relay = {"enabled": True, "host": "127.0.0.1", "port": port, "mailbox_dir": str(tmp_path / "mailbox")}
    async for bot in lifecycle_bot(database_url, smtp.port, tmp_path, rules=RULES, relay=relay):
        runtime = Runtime(bot.app)
        mailbox = Mailbox(tmp_path / "mailbox", echo=None)
        await runtime.start_services(mailbox=mailbox)  # as the demo wires it: the catch-all last
        try:
            await bot.say(HR, "/addgroup club fay@corp.example --unknown-ok")

            def mail(to: str) -> EmailMessage:
                msg = EmailMessage()
                msg["From"], msg["To"], msg["Subject"] = HR, to, "Hello"
                msg.set_content("Body text.")
                return msg

            with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as refused:
                await aiosmtplib.send(mail("nosuch@corp.example"), hostname="127.0.0.1", port=port)
            (err,) = refused.value.recipients
            assert err.code == 550 and "no such address" in err.message
            assert mailbox.messages() == []
            # the catch-all still takes the rest of the demo's mail: people it knows, and the outside world
            for to in (HR, "fay@corp.example", "lena@example.com"):
                errors, _reply = await aiosmtplib.send(mail(to), hostname="127.0.0.1", port=port)
                assert errors == {}, to
            assert len(mailbox.messages()) == 3
        finally:
            await runtime.stop_services()


# -- /help: what the asker may use; the console's own commands; plan texts said once ----------------------
async def test_help_lists_what_the_asker_may_use_and_the_consoles_own_commands(bot: ChatBot) -> None:
    from tests.conftest import ADMIN

    nora = await bot.say(NOBODY, "/help")
    assert "The commands you may use:" in nora
    for usage in ("/groups [<member>]", "/members <group>", "/rules\n", "/addgroup <group>", "/lang"):
        assert usage in nora, usage
    for usage in ("/newgroup", "/sync", "/plan approve", "/campaign new", "/suppressions list"):
        assert usage not in nora, usage
    assert "needs a role you don't have" not in nora
    assert "more commands are for other roles (HR, campaign senders, approvers, admins)." in nora
    printed = bot.out.getvalue()  # what the console printed under the core's answer
    assert "On this console:\n  /as <email>" in printed and "/whoami" in printed and "/quit" in printed
    hr = await bot.say(HR, "/help")
    assert "/newgroup <address>" in hr and "/sync [--dry-run]" in hr and "/campaign new" not in hr
    admin = await bot.say(ADMIN, "/help")
    assert "/suppressions list" in admin and "/plan approve <id>" in admin
    assert "for other roles" not in admin
    assert "/newgroup <address>" in await bot.say(NOBODY, "/help newgroup")  # any command, in full
    before = bot.out.getvalue().count("On this console")
    await bot.say(NOBODY, "/help newgroup")
    assert bot.out.getvalue().count("On this console") == before


async def test_a_held_plans_card_says_its_counts_once(bot: ChatBot) -> None:
    from sqlalchemy import update

    from bot.db.models import Group

    await bot.say(HR, "/newgroup vip")
    async with bot.app.ctx.sessions() as session, session.begin():
        await session.execute(update(Group).values(protected=True))
    assert "waits for an approver (plan #1)" in await bot.say(HR, "/addgroup vip carl@corp.example")
    card = bot.cards()[-1].card
    assert card is not None
    fields = dict(card.fields)
    assert fields["Changes"] == "1 to add, 0 to remove"
    assert fields["Plan"] == f"  + carl@corp.example to vip@corp.example (added by {HR})"
