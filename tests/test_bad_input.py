"""Every command given garbage, missing or hostile arguments: one sentence (plus the usage line
where it helps), never a traceback, and nothing in the database changes.

Each command's cases run against one seeded organisation; a snapshot of every table (row counts,
plus the rows a wrong answer would rewrite in place) is compared before and after each case.
`processed_events` is left out: recording a chat delivery id is how redeliveries are recognised,
not a change a person made.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from bot.commandline import quote
from bot.contacts.importer import import_contacts
from bot.db.models import Approval, Base, Campaign, Group, Membership
from bot.events import Action, Actor, Conversation
from tests.conftest import ADMIN, APPROVER, APPROVER2, HR, NOBODY, SENDER

CSV = """email,name,consent_at,consent_source,company
lena@example.com,Lena Fischer,2026-03-02T10:15:00+00:00,signup form,Fischer GmbH
nocon@example.com,No Consent,,,
"""

# Hostile strings, each put where a name, group or address goes.
HOSTILE = [
    "{{ 7*7 }}",
    "{{ ''.__class__.__mro__ }}",
    "'; DROP TABLE groups; --",
    '" OR 1=1 --',
    "a\x1b[2Jb",
    "\u202eevil\u202c",
    "../../etc/passwd",
    "%s%s%n",
    "x" * 3000,
]

# Cases every command gets: (text after the command, what the answer says, with the usage line?)
GENERIC = [
    (" " + "a" * 4100, "the limit is 4000", True),
    (" a\x00b", "NUL character", True),
    (' "unclosed', "not closed", True),
    (" “curly unclosed", "not closed", True),
]

# Per command: who types it, its path, and its own cases (text, fragment of the answer, usage line?).
COMMANDS: dict[str, tuple[str, tuple[str, ...], list[tuple[str, str, bool]]]] = {
    "drift adopt": (
        HR,
        ("drift", "adopt"),
        [
            ("/drift adopt", "needs", True),
            ("/drift adopt #12", "No drift is recorded", True),
            ("/drift adopt all", "No drift is recorded", True),
        ],
    ),
    "drift overwrite": (
        HR,
        ("drift", "overwrite"),
        [
            ("/drift overwrite", "needs", True),
            ("/drift overwrite eng", "No drift is recorded", True),
        ],
    ),
    "help": (
        HR,
        ("help",),
        [
            ("/help nosuch", "There is no command /nosuch", False),
            ("/help {{7*7}}", "There is no command", False),
            ("/help campaign nosuch", "There is no command", False),
        ],
    ),
    "newgroup": (
        HR,
        ("newgroup",),
        [
            ("/newgroup", "needs an address", True),
            ("/newgroup eng", "already exists", False),
            ("/newgroup ENG@corp.example", "already exists", False),
            ("/newgroup eng@gmail.com", "outside corp.example", True),
            ("/newgroup 'a b'", "not a valid email address", True),
            ("/newgroup -eng", "cannot be a group's name", True),
            ("/newgroup eng..x", "not a valid email address", True),
            ("/newgroup sales --owner x", "has no option --owner", True),
            ("/newgroup sales --provider nosuch", "is not a provider", True),
            ("/newgroup sales --provider google", "provider google is not configured", True),
            ("/newgroup sales --provider", "needs a value", True),
            ("/newgroup sales " + "x" * 300, "at most 200 characters", True),
            ("/newgroup sales 'bad\x07name'", "control characters", True),
            ("/newgroup sales '\u202eevil'", "text-direction overrides", True),
            ("/newgroup ''", "not a valid email address", True),
        ],
    ),
    "report usage": (
        HR,
        ("report", "usage"),
        [
            ("/report usage --months 0", "Give a number of months from 1 to 24 (not “0”).", True),
            ("/report usage --months 25", "(not “25”).", True),
            ("/report usage --months 999", "(not “999”).", True),
            ("/report usage --months three", "(not “three”).", True),
            ("/report usage --months -1", "Give a number of months from 1 to 24", True),
            ("/report usage --months 1.5", "(not “1.5”).", True),
            ("/report usage --months", "needs a value", True),
            ("/report usage --group nosuch", "There is no group “nosuch”.", False),
            ("/report usage --group {{7*7}}", "There is no group", False),
            ("/report usage --week 1", "has no option --week", True),
        ],
    ),
    "posts": (
        HR,
        ("posts",),
        [
            ("/posts", "needs a group", True),
            ("/posts nosuch", "There is no group", False),
            ("/posts eng --since yesterday", "is not a time for --since", True),
            ("/posts eng --since 99999d", "at most 3650 days", True),
            ("/posts eng --since 2999-01-01", "in the future", True),
            ("/posts eng --since 2026-13-45", "is not a time for --since", True),
            ("/posts eng --since", "needs a value", True),
            ("/posts eng extra", "does not take", True),
            ("/posts eng", "Nothing was posted to eng@corp.example", False),
        ],
    ),
    "post approve": (
        HR,
        ("post", "approve"),
        [
            ("/post approve", "needs an id", True),
            ("/post approve abc", "is not a post number", True),
            ("/post approve 1234567890123", "is not a post number", True),
            ("/post approve 42", "There is no held post #42", False),
            ("/post approve 1 2", "does not take", True),
        ],
    ),
    "post reject": (
        HR,
        ("post", "reject"),
        [
            ("/post reject", "needs an id", True),
            ("/post reject -1 spam", "is not a post number", True),
            ("/post reject 42 spam", "There is no held post #42", False),
            ("/post reject 1 " + "x" * 600, "at most 500 characters", True),
        ],
    ),
    "post allow": (
        HR,
        ("post", "allow"),
        [
            ("/post allow", "needs an id", True),
            ("/post allow #x", "is not a post number", True),
            ("/post allow 7", "There is no held post #7", False),
        ],
    ),
    "addgroup": (
        HR,
        ("addgroup",),
        [
            ("/addgroup", "needs a group", True),
            ("/addgroup eng", "needs at least one member", True),
            ("/addgroup eng ,,,", "needs at least one member", True),
            ("/addgroup nosuch bob@corp.example", "There is no group “nosuch”", False),
            ("/addgroup eng@gmail.com bob@corp.example", "There is no group eng@gmail.com", False),
            ("/addgroup eng alice@corp.example", "already in eng@corp.example", False),
            ("/addgroup eng notanemail", "not an email address", True),
            ("/addgroup eng @corp.example", "not a valid email address", True),
            ("/addgroup eng bob@corp..example", "not a valid email address", True),
            ("/addgroup eng bob@corp.example BOB@corp.example", "given twice", True),
            ("/addgroup eng someone@gmail.com", "outside corp.example", False),
            ("/addgroup eng bob@corp.example someone@gmail.com", "use a campaign", False),
            ("/addgroup eng bob@corp.example --force", "has no option --force", True),
            ("/addgroup eng mailto:", "not an email address", True),
            ("/addgroup '' bob@corp.example", "is not a group name", True),
        ],
    ),
    "removegroup": (
        HR,
        ("removegroup",),
        [
            ("/removegroup", "needs a group", True),
            ("/removegroup eng", "needs at least one member", True),
            ("/removegroup eng bob@corp.example", "is not in eng@corp.example", False),
            ("/removegroup nosuch alice@corp.example", "There is no group", False),
            ("/removegroup eng not-an-email", "not an email address", True),
            ("/removegroup eng alice@corp.example alice@corp.example", "given twice", True),
            ("/removegroup eng alice@corp.example --all", "has no option --all", True),
        ],
    ),
    "groups": (
        HR,
        ("groups",),
        [
            ("/groups notanemail", "not an email address", True),
            ("/groups a@corp.example b@corp.example", "does not take", True),
            ("/groups --all", "has no option --all", True),
            ("/groups ''", "not an email address", True),
        ],
    ),
    "members": (
        HR,
        ("members",),
        [
            ("/members", "needs a group", True),
            ("/members nosuch", "There is no group", False),
            ("/members eng extra", "does not take", True),
            ("/members %", "There is no group", False),
            ("/members eng@", "There is no group eng@", False),
            ("/members --verbose", "has no option --verbose", True),
        ],
    ),
    "campaign": (
        SENDER,
        ("campaign",),
        [
            ("/campaign", "needs a subcommand", True),
            ("/campaign nosuch", "has no subcommand “nosuch”", True),
        ],
    ),
    "campaign new": (
        SENDER,
        ("campaign", "new"),
        [
            ("/campaign new", "needs a name", True),
            ("/campaign new x", "needs --to and --template", True),
            ("/campaign new x --to customers", "needs --template", True),
            ("/campaign new x --to --template welcome", "--to needs a value", True),
            ("/campaign new x --to customers --template", "--template needs a value", True),
            ("/campaign new x --to customers --template welcome --subject", "--subject needs a value", True),
            (
                "/campaign new x --to customers --template welcome --subject ''",
                "--subject needs a value",
                True,
            ),
            ("/campaign new x --to= --template welcome", "--to needs a value", True),
            ("/campaign new spring --to customers --template welcome", "already exists", False),
            ("/campaign new x --to nosuch --template welcome", "neither a contact list nor a group", False),
            ("/campaign new x --to customers --template nosuch", "There is no template “nosuch”", False),
            ("/campaign new x --to customers --template ../../etc/passwd", "not a template name", True),
            ("/campaign new x --to customers --template welcome --to customers", "--to is given twice", True),
            ("/campaign new x --to customers --template welcome --bogus 1", "has no option --bogus", True),
            ("/campaign new x --to customers --template welcome extra", "does not take", True),
            (
                "/campaign new x --to customers --template welcome --subject '{{ \"a\" * 100000000 }}'",
                "can only show values",
                True,
            ),
            (
                "/campaign new x --to customers --template welcome --subject \"{{ ''.__class__ }}\"",
                "underscore",
                True,
            ),
            (
                "/campaign new x --to customers --template welcome --subject '{{ x|center(999999999) }}'",
                "“center” is not one",
                True,
            ),
            (
                "/campaign new x --to customers --template welcome --subject '{% for %}'",
                "not a valid template",
                True,
            ),
            (
                "/campaign new x --to customers --template welcome --subject '{{ lipsum() }}'",
                "“call” is not allowed",
                True,
            ),
        ],
    ),
    "campaign edit": (
        SENDER,
        ("campaign", "edit"),
        [
            ("/campaign edit", "needs a name", True),
            ("/campaign edit spring", "needs at least one of", True),
            ("/campaign edit nosuch --subject x", "There is no campaign “nosuch”", False),
            ("/campaign edit spring --to nosuch", "neither a contact list nor a group", False),
            ("/campaign edit spring --template nosuch", "There is no template", False),
            ("/campaign edit spring --subject '{% if %}'", "not a valid template", True),
            ("/campaign edit spring --subject '{{ 10 ** 10 ** 10 }}'", "can only show values", True),
            ("/campaign edit spring --subject", "--subject needs a value", True),
            ("/campaign edit spring --to=customers --to=customers", "given twice", True),
        ],
    ),
    "campaign preview": (
        SENDER,
        ("campaign", "preview"),
        [
            ("/campaign preview", "needs a name", True),
            ("/campaign preview nosuch", "There is no campaign", False),
            ("/campaign preview spring notanemail", "not an email address", True),
            ("/campaign preview spring stranger@example.com", "not in the audience", False),
            ("/campaign preview spring nocon@example.com", "has not given consent", False),
            ("/campaign preview spring a@x.example b@x.example", "does not take", True),
        ],
    ),
    "campaign test": (
        SENDER,
        ("campaign", "test"),
        [
            ("/campaign test", "needs a name", True),
            ("/campaign test spring", "needs an email", True),
            ("/campaign test spring notanemail", "not an email address", True),
            ("/campaign test spring someone@gmail.com", "internal addresses only", False),
            ("/campaign test nosuch alice@corp.example", "There is no campaign", False),
        ],
    ),
    "campaign submit": (
        SENDER,
        ("campaign", "submit"),
        [
            ("/campaign submit", "needs a name", True),
            ("/campaign submit nosuch", "There is no campaign", False),
            ("/campaign submit sub", "only a draft can be submitted", False),
            ("/campaign submit spring extra", "does not take", True),
        ],
    ),
    "campaign status": (
        SENDER,
        ("campaign", "status"),
        [
            ("/campaign status", "needs a name", True),
            ("/campaign status nosuch", "There is no campaign", False),
            ("/campaign status spring --json", "has no option --json", True),
        ],
    ),
    "campaign pause": (
        SENDER,
        ("campaign", "pause"),
        [
            ("/campaign pause", "needs a name", True),
            ("/campaign pause nosuch", "There is no campaign", False),
            ("/campaign pause spring", "is draft; it can't be paused", False),
        ],
    ),
    "campaign resume": (
        SENDER,
        ("campaign", "resume"),
        [
            ("/campaign resume", "needs a name", True),
            ("/campaign resume nosuch", "There is no campaign", False),
            ("/campaign resume spring", "is draft", False),
        ],
    ),
    "campaign cancel": (
        SENDER,
        ("campaign", "cancel"),
        [
            ("/campaign cancel", "needs a name", True),
            ("/campaign cancel nosuch", "There is no campaign", False),
            ("/campaign cancel spring sub", "does not take", True),
        ],
    ),
    "campaign list": (
        SENDER,
        ("campaign", "list"),
        [
            ("/campaign list extra", "does not take", True),
            ("/campaign list --all", "has no option --all", True),
        ],
    ),
    "approve": (
        APPROVER,
        ("approve",),
        [
            ("/approve", "needs a campaign", True),
            ("/approve nosuch", "There is no campaign", False),
            ("/approve spring", "is a draft and waits for nobody's approval", False),
            ("/approve 99999999999999999999999999", "There is no campaign", False),
            ("/approve ²", "cannot be a campaign name", True),
            ("/approve sub extra", "does not take", True),
            ("/approve sub --force", "has no option --force", True),
        ],
    ),
    "reject": (
        APPROVER,
        ("reject",),
        [
            ("/reject", "needs a campaign", True),
            ("/reject sub", "needs a reason", True),
            ("/reject sub '   '", "needs a reason", True),
            ("/reject nosuch because", "There is no campaign", False),
            ("/reject spring because", "is a draft and waits for nobody's approval", False),
            ("/reject sub " + "why " * 300, "under 1,000 characters", True),
        ],
    ),
    "suppressions": (
        ADMIN,
        ("suppressions",),
        [
            ("/suppressions", "needs a subcommand", True),
            ("/suppressions nosuch", "has no subcommand “nosuch”", True),
            ("/suppressions erase lena@example.com", "has no subcommand", True),
        ],
    ),
    "suppressions list": (
        ADMIN,
        ("suppressions", "list"),
        [
            ("/suppressions list extra", "does not take", True),
            ("/suppressions list --reason nosuch", "is not a suppression reason", True),
            ("/suppressions list --reason", "--reason needs a value", True),
            ("/suppressions list --all", "has no option --all", True),
        ],
    ),
    "suppressions show": (
        ADMIN,
        ("suppressions", "show"),
        [
            ("/suppressions show", "needs an email", True),
            ("/suppressions show notanemail", "not an email address", True),
            ("/suppressions show a@x.example b@x.example", "does not take", True),
        ],
    ),
    "suppressions lift": (
        ADMIN,
        ("suppressions", "lift"),
        [
            ("/suppressions lift", "needs an email", True),
            ("/suppressions lift lena@example.com", "needs --reason", True),
            ("/suppressions lift lena@example.com --reason '  '", "--reason needs a value", True),
            ("/suppressions lift notanemail --reason typo", "not an email address", True),
            ("/suppressions lift lena@example.com --reason typo", "is not suppressed", False),
            ("/suppressions lift lena@example.com --reason " + quote("why " * 300), "under 1,000", True),
            ("/suppressions lift lena@example.com --reason 'a\x1bb'", "control characters", True),
        ],
    ),
    "privacy erase": (
        ADMIN,
        ("privacy", "erase"),
        [
            ("/privacy erase", "needs an email", True),
            ("/privacy erase notanemail --confirm", "not an email address", True),
            ("/privacy erase lena@example.com --confirm=yes", "is a switch", True),
            ("/privacy erase alice@corp.example --confirm", "is a company address", True),
        ],
    ),
    "automation": (
        SENDER,
        ("automation",),
        [
            ("/automation", "needs a subcommand", True),
            ("/automation nosuch", "has no subcommand “nosuch”", True),
        ],
    ),
    "automation new": (
        SENDER,
        ("automation", "new"),
        [
            ("/automation new", "needs a name", True),
            ("/automation new w", "needs --on and --template", True),
            ("/automation new w --on joined --template nosuch", "There is no template", False),
            ("/automation new w --on 'DROP TABLE' --template welcome", "is not a trigger", True),
            ("/automation new w --on confirmed --template welcome", "needs the list", True),
            ("/automation new w --on confirmed:nosuch --template welcome", "There is no contact list", True),
            ("/automation new w --on inactive:0d --template welcome --to customers", "1 to 3650", True),
            ("/automation new w --on 'renewal_date - 14d' --template welcome", "needs --to", True),
            ("/automation new w --on joined --template welcome --to customers", "takes no --to", True),
            ("/automation new w --on joined --template welcome --delay 5y", "not a delay", True),
            ("/automation new w --on joined --template welcome --cap 0", "--cap takes", True),
            (
                "/automation new w --on renewal_date --template welcome --to customers --where 'x = '",
                "column",
                True,
            ),
            (
                "/automation new w --on renewal_date --template welcome --to eng",
                "must be a contact list",
                True,
            ),
            ("/automation new 'a b' --on joined --template welcome", "cannot be a campaign name", True),
        ],
    ),
    "automation edit": (
        SENDER,
        ("automation", "edit"),
        [
            ("/automation edit", "needs a name", True),
            ("/automation edit nosuch", "needs at least one of", True),
            ("/automation edit nosuch --delay 1h", "There is no automation “nosuch”", False),
            ("/automation edit nosuch --tracking maybe", "takes on or off", True),
        ],
    ),
    "automation submit": (
        SENDER,
        ("automation", "submit"),
        [
            ("/automation submit", "needs a name", True),
            ("/automation submit nosuch", "There is no automation", False),
        ],
    ),
    "automation pause": (
        SENDER,
        ("automation", "pause"),
        [("/automation pause nosuch", "There is no automation", False)],
    ),
    "automation resume": (
        SENDER,
        ("automation", "resume"),
        [("/automation resume nosuch", "There is no automation", False)],
    ),
    "automation status": (
        SENDER,
        ("automation", "status"),
        [("/automation status nosuch", "There is no automation", False)],
    ),
    "automation report": (
        SENDER,
        ("automation", "report"),
        [("/automation report nosuch", "There is no automation", False)],
    ),
    "automation list": (SENDER, ("automation", "list"), [("/automation list x", "does not take", True)]),
    "segment new": (
        SENDER,
        ("segment", "new"),
        [
            ("/segment new", "needs a name", True),
            ("/segment new s", "needs a list", True),
            ("/segment new s customers", "needs --where", True),
            ("/segment new s nosuch --where 'a = 1'", "There is no contact list", True),
            ("/segment new s customers --where 'a = '", "column", True),
            ("/segment new customers customers --where 'a = 1'", "is a contact list already", True),
            (
                "/segment new s customers --where '1; DROP TABLE contacts'",
                "not part of the expression language",
                True,
            ),
            ("/segment new s customers --where 'pg_sleep(10)'", "not a function", True),
        ],
    ),
    "segment edit": (
        SENDER,
        ("segment", "edit"),
        [("/segment edit nosuch --where 'a = 1'", "There is no segment", True)],
    ),
    "segment show": (SENDER, ("segment", "show"), [("/segment show nosuch", "There is no segment", True)]),
    "segment delete": (
        SENDER,
        ("segment", "delete"),
        [("/segment delete nosuch", "There is no segment", True)],
    ),
    "contacts add": (
        SENDER,
        ("contacts", "add"),
        [
            ("/contacts add", "needs an email", True),
            ("/contacts add x@example.com", "needs --list and --consent", True),
            (
                "/contacts add notanemail --list customers --consent 'said yes to news'",
                "not an email address",
                True,
            ),
            (
                "/contacts add x@example.com --list nosuch --consent 'said yes to news'",
                "There is no contact list",
                True,
            ),
            ("/contacts add x@example.com --list customers --consent 'yes'", "at least 10 characters", True),
            (
                "/contacts add alice@corp.example --list customers --consent 'said yes to news'",
                "company address",
                True,
            ),
        ],
    ),
    "contacts show": (
        SENDER,
        ("contacts", "show"),
        [
            ("/contacts show", "needs an email", True),
            ("/contacts show nobody@example.com", "There is no contact", True),
            ("/contacts show notanemail", "not an email address", True),
        ],
    ),
    "contacts find": (
        SENDER,
        ("contacts", "find"),
        [("/contacts find", "needs a text", True), ("/contacts find a", "2 to 200 characters", True)],
    ),
    "contacts remove": (
        SENDER,
        ("contacts", "remove"),
        [
            ("/contacts remove lena@example.com", "needs --list", True),
            ("/contacts remove lena@example.com --list nosuch", "There is no contact list", True),
            ("/contacts remove raj@example.net --list customers", "is not on the list", True),
        ],
    ),
    "contacts inactive": (
        SENDER,
        ("contacts", "inactive"),
        [
            ("/contacts inactive nosuch", "There is no contact list", True),
            ("/contacts inactive customers --days 0", "1 to 3650", True),
        ],
    ),
    "contacts sunset": (
        SENDER,
        ("contacts", "sunset"),
        [
            ("/contacts sunset customers", "needs --after", True),
            ("/contacts sunset customers --after nosuch", "There is no automation", False),
            ("/contacts sunset customers --after x --window abc", "number of days", True),
        ],
    ),
    "lists": (SENDER, ("lists",), [("/lists extra", "does not take", True)]),
    "lists open": (
        ADMIN,
        ("lists", "open"),
        [
            ("/lists open", "needs a name", True),
            ("/lists open x", "needs --wording", True),
            ("/lists open 'a b' --wording 'you agree to get news'", "cannot be a list name", True),
            ("/lists open x --wording short", "at least 10 characters", True),
            ("/lists open x --wording 'bad\x07 wording here'", "control characters", True),
        ],
    ),
    "lists close": (ADMIN, ("lists", "close"), [("/lists close nosuch", "has no open signup", True)]),
    "lists form": (SENDER, ("lists", "form"), [("/lists form customers", "has no open signup", True)]),
    "sunset approve": (
        APPROVER,
        ("sunset", "approve"),
        [
            ("/sunset approve", "needs an id", True),
            ("/sunset approve x", "is not a sunset number", True),
            ("/sunset approve 99", "There is no sunset #99", True),
        ],
    ),
    "sunset reject": (
        APPROVER,
        ("sunset", "reject"),
        [("/sunset reject 99", "There is no sunset #99", True)],
    ),
}

# Someone without the role: refused with a sentence, before anything is looked up.
REFUSED = [
    (NOBODY, "/newgroup sales", "is for HR or admins;"),
    (NOBODY, "/report usage", "/report usage is for HR or admins;"),
    (SENDER, "/report usage --months 1", "/report usage is for HR or admins;"),
    (NOBODY, "/addgroup eng bob@corp.example", "owners of eng@corp.example"),
    (NOBODY, "/removegroup eng alice@corp.example", "owners of eng@corp.example"),
    (NOBODY, "/groups alice@corp.example", "Only HR and admins"),
    (NOBODY, "/campaign new x --to customers --template welcome", "is for campaign senders"),
    (NOBODY, "/campaign list", "is for campaign senders, approvers or admins;"),
    (SENDER, "/approve sub", "is for approvers"),
    (SENDER, "/reject sub because", "is for approvers"),
    (HR, "/campaign submit spring", "is for campaign senders"),
    (SENDER, "/suppressions list", "is for admins"),
    (HR, "/suppressions lift lena@example.com --reason typo", "is for admins"),
    (APPROVER, "/privacy erase lena@example.com --confirm", "is for admins"),
    (NOBODY, "/automation new x --on joined --template welcome", "is for campaign senders"),
    (NOBODY, "/contacts show lena@example.com", "is for campaign senders, approvers or admins;"),
    (SENDER, "/lists open x --wording 'you agree to get news'", "is for admins"),
    (SENDER, "/sunset approve 1", "is for approvers"),
]


def hostile_cases(path: tuple[str, ...]) -> list[tuple[str, str | None, bool]]:
    """Each hostile string where the command's first argument goes: any sentence, never a change."""
    return [(f"/{' '.join(path)} {quoted(h)}", None, False) for h in HOSTILE]


def quoted(value: str) -> str:
    return quote(value)


# Every table's row count in one statement (a scalar subquery each): a snapshot is taken after each of the
# ~2,000 cases, and a query per table was two thirds of this file's CPU.
COUNTED = [t for t in Base.metadata.sorted_tables if t.name != "processed_events"]
COUNTS = select(*(select(func.count()).select_from(t).scalar_subquery().label(t.name) for t in COUNTED))


async def snapshot(bot) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    async with bot.core.ctx.sessions() as s:
        counts = dict(zip([t.name for t in COUNTED], (await s.execute(COUNTS)).one(), strict=True))
        campaigns = (
            await s.execute(
                select(
                    Campaign.name,
                    Campaign.state,
                    Campaign.subject,
                    Campaign.template,
                    Campaign.audience_name,
                    Campaign.content_hash,
                ).order_by(Campaign.name)
            )
        ).all()
        groups = (await s.execute(select(Group.address, Group.display_name).order_by(Group.address))).all()
        members = (
            await s.execute(select(Membership.group_id, Membership.email).order_by(Membership.id))
        ).all()
    return {"counts": counts, "campaigns": campaigns, "groups": groups, "members": members}


@pytest.fixture
async def seeded(bot, tmp_path: Path):  # type: ignore[no-untyped-def]
    (tmp_path / "contacts.csv").write_text(CSV)
    await import_contacts(bot.core.ctx, tmp_path / "contacts.csv", "customers")
    assert "Created" in await bot.say(HR, "/newgroup eng")
    assert "Added" in await bot.say(HR, "/addgroup eng alice@corp.example")
    assert "Draft" in await bot.say(SENDER, "/campaign new spring --to customers --template welcome")
    assert "Draft" in await bot.say(SENDER, "/campaign new sub --to customers --template welcome")
    assert "Submitted" in await bot.say(SENDER, "/campaign submit sub")
    return bot


def check_answer(reply: str, usage: str, fragment: str | None, with_usage: bool) -> str | None:
    """None when the answer is right; else what is wrong with it."""
    lines = reply.splitlines()
    if not lines:
        return "no answer"
    if "Traceback" in reply or "Something went wrong" in reply or "Error:" in reply:
        return "an internal error reached the person"
    first = lines[0]
    if not first.rstrip().endswith((".", "?")) or len(first) > 400:
        return "the first line is not one short sentence"
    if any(ord(c) < 32 or 0x202A <= ord(c) <= 0x202E for c in reply if c != "\n"):
        return "a control character was echoed back"
    if fragment is not None and fragment not in first:
        return f"expected “{fragment}”"
    if with_usage and lines[1:] != [f"Usage: {usage}"]:
        return "the usage line is missing"
    if not with_usage and len(lines) > 1 and not lines[1].startswith("Usage: "):
        return "more than a sentence"
    return None


@pytest.mark.parametrize("command", list(COMMANDS))
async def test_bad_input_gets_a_sentence_and_changes_nothing(seeded, command: str) -> None:  # type: ignore[no-untyped-def]
    bot = seeded
    who, path, cases = COMMANDS[command]
    spec = bot.core.table.commands[path][0] if path in bot.core.table.commands else None
    usage = spec.usage if spec else f"/{path[0]} " + "|".join(bot.core.table.subcommands(path[0])) + " …"
    all_cases: list[tuple[str, str | None, bool]] = list(cases)
    all_cases += [
        (f"/{' '.join(path)}{tail}", fragment, with_usage) for tail, fragment, with_usage in GENERIC
    ]
    if spec is not None and spec.args:
        all_cases += hostile_cases(path)
    before = await snapshot(bot)
    problems = []
    for text, fragment, with_usage in all_cases:
        reply = await bot.say(who, text)
        wrong = check_answer(reply, usage, fragment, with_usage)
        if wrong:
            problems.append(f"{text[:80]!r}: {wrong}\n    got: {reply[:300]!r}")
        after = await snapshot(bot)
        if after != before:
            problems.append(f"{text[:80]!r} changed the database")
            before = after
    await bot.settle()
    assert not problems, "\n".join(problems)


async def test_refused_without_the_role_and_nothing_changes(seeded) -> None:  # type: ignore[no-untyped-def]
    before = await snapshot(seeded)
    for who, text, fragment in REFUSED:
        reply = await seeded.say(who, text)
        assert fragment in reply and reply.count("\n") == 0, (text, reply)
    assert await snapshot(seeded) == before


async def test_unknown_commands_and_blank_lines(seeded) -> None:  # type: ignore[no-untyped-def]
    before = await snapshot(seeded)
    assert "don't know the command “/nosuch”" in await seeded.say(HR, "/nosuch")
    assert "\\u202e" in await seeded.say(HR, "\u202e/help")  # the override is shown, not obeyed
    assert await seeded.say(HR, "   ") == "Type /help to see what I can do."
    assert await snapshot(seeded) == before


async def test_apostrophes_are_letters_not_quotes(seeded) -> None:  # type: ignore[no-untyped-def]
    """Messengers send it’s or it's in a reason; neither is an unclosed quotation mark."""
    reply = await seeded.say(APPROVER, "/reject sub it’s not ready, the footer's wrong")
    assert "Rejected “sub”" in reply
    status = await seeded.say(SENDER, "/campaign status sub")
    assert "it’s not ready, the footer's wrong" in status


async def test_a_campaign_named_with_digits_is_found_by_name(seeded) -> None:  # type: ignore[no-untyped-def]
    assert "Draft" in await seeded.say(SENDER, "/campaign new 2024 --to customers --template welcome")
    assert "Submitted" in await seeded.say(SENDER, "/campaign submit 2024")
    reply = await seeded.say(APPROVER, "/reject 2024 wrong year")
    assert "Rejected “2024”" in reply


def click(who: str, action_id: str, value: str) -> Action:
    return Action(
        Actor("console", who, email=who),
        action_id,
        value,
        Conversation("console", "approvals"),
        delivery_id=f"click-{uuid.uuid4()}",
    )


async def test_button_clicks_with_bad_values_answer_with_a_sentence(seeded) -> None:  # type: ignore[no-untyped-def]
    before = await snapshot(seeded)
    cases = [
        ("campaign.nosuch", "1", "That button is no longer active."),
        ("campaign.approve", "x", "That button's value is not a campaign."),
        ("campaign.approve", "", "That button's value is not a campaign."),
        ("campaign.approve", "²", "That button's value is not a campaign."),
        ("campaign.approve", "9" * 30, "That button's value is not a campaign."),
        ("campaign.reject", "999999:why", "That campaign no longer exists."),
    ]
    for action_id, value, says in cases:
        reply = await seeded.core.handle_action(click(APPROVER, action_id, value))
        assert reply is not None and reply.text.splitlines()[0] == says, (action_id, value, reply)
    assert await snapshot(seeded) == before


async def test_clicks_racing_each_other_send_once(seeded, smtp) -> None:  # type: ignore[no-untyped-def]
    """A double click, a second approver and a reject, all at once: one decision, at most one send."""
    card = seeded.cards()[-1].card
    value = card.buttons[0].value
    replies = await asyncio.gather(
        seeded.core.handle_action(click(APPROVER, "campaign.approve", value)),
        seeded.core.handle_action(click(APPROVER, "campaign.approve", value)),
        seeded.core.handle_action(click(APPROVER2, "campaign.approve", value)),
        seeded.core.handle_action(click(APPROVER2, "campaign.reject", value + ":no")),
    )
    await seeded.settle()
    texts = [r.text for r in replies if r is not None]
    assert len(texts) == 4 and not any("Something went wrong" in t for t in texts), texts
    async with seeded.core.ctx.sessions() as s:
        decisions = (await s.execute(select(Approval.decision))).scalars().all()
    assert len(decisions) == 1  # whichever click won; the others were told so
    won = "Approved “sub”" if decisions == ["approved"] else "Rejected “sub”"
    assert sum(t.startswith(won) for t in texts) == 1, texts
    sent = [r for m in smtp.messages for r in m.rcpt_tos]
    assert sent == (["lena@example.com"] if decisions == ["approved"] else [])


async def test_someone_elses_campaign_is_refused_without_a_usage_line(seeded) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import ADMIN

    assert "Draft" in await seeded.say(ADMIN, "/campaign new theirs --to customers --template welcome")
    before = await snapshot(seeded)
    for text in ("/campaign edit theirs --subject hi", "/campaign submit theirs"):
        reply = await seeded.say(SENDER, text)
        assert (
            reply.startswith("Only admin@corp.example (who created “theirs”) or an admin")
            and "\n" not in reply
        )
    assert await snapshot(seeded) == before


async def test_console_as_takes_only_an_address(seeded) -> None:  # type: ignore[no-untyped-def]
    console = seeded.console
    console.as_email = HR
    for text in ("/as", "/as x@", "/as not an address"):
        assert await console.say(text) is None
        assert seeded.out.getvalue().rstrip().endswith("Usage: /as <email>")
        assert console.as_email == HR
    reply = await console.say("/assign")  # not /as
    assert reply is not None and "don't know the command “/assign”" in reply.text
    assert await console.say("/as SAM@corp.example") is None and console.as_email == SENDER
