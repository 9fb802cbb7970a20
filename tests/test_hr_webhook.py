"""The signed HR webhook drives the lifecycle: joiner, mover, leaver, redelivery, order, bad input."""

from __future__ import annotations

import json
import time

import pytest
from sqlalchemy import func, select

from bot.db.models import AuditEntry, Membership, Person, PersonId
from tests.conftest import HR
from tests.lifecycle_kit import groups_of, hr_event, lifecycle_bot, post_event, signed, web_client

IVAN = "ivan@corp.example"


@pytest.fixture
async def lbot(database_url, smtp, tmp_path):  # type: ignore[no-untyped-def]
    async for b in lifecycle_bot(database_url, smtp.port, tmp_path):
        yield b


async def test_joiner_mover_leaver_through_the_webhook(lbot) -> None:  # type: ignore[no-untyped-def]
    async with web_client(lbot) as client:
        r = await post_event(
            client,
            hr_event(
                "joined",
                "ev-1",
                "E100",
                IVAN,
                "2026-11-02T09:00:00Z",
                name="Ivan Petrov",
                department="Engineering",
                location="Berlin",
            ),
        )
        assert r.status_code == 200, r.text
        assert await groups_of(lbot, IVAN) == {
            "all-staff": "rule:all-staff",
            "eng": "rule:eng",
            "berlin": "rule:berlin",
        }
        assert (
            "Ivan Petrov (ivan@corp.example) joined: added to all-staff@corp.example, berlin@corp.example, "
            "eng@corp.example." in lbot.out.getvalue()
        )

        await lbot.say(HR, f"/addgroup social {IVAN}")
        r = await post_event(
            client, hr_event("changed", "ev-2", "E100", IVAN, "2026-11-03T09:00:00Z", department="Sales")
        )
        assert r.status_code == 200 and r.json()["added"] == ["sales@corp.example"]
        assert await groups_of(lbot, IVAN) == {
            "all-staff": "rule:all-staff",
            "sales": "rule:sales",
            "berlin": "rule:berlin",
            "social": "manual",
        }
        assert "department Engineering → Sales" in lbot.out.getvalue()

        for _ in range(5):
            r = await post_event(client, hr_event("left", "ev-3", "E100", IVAN, "2026-11-04T09:00:00Z"))
            assert r.status_code == 200
        assert r.json()["status"] == "duplicate"
        assert await groups_of(lbot, IVAN) == {}
        async with lbot.core.ctx.sessions() as s:
            removes = (
                await s.execute(
                    select(func.count())
                    .select_from(AuditEntry)
                    .where(AuditEntry.action == "membership.remove", AuditEntry.detail.like("%left%"))
                )
            ).scalar_one()
        assert removes == 4  # one effect, though sent five times

        # An old `changed` arriving after `left` resurrects nobody.
        r = await post_event(
            client,
            hr_event("changed", "ev-old", "E100", IVAN, "2026-11-03T12:00:00Z", department="Engineering"),
        )
        assert r.json()["status"] == "stale"
        async with lbot.core.ctx.sessions() as s:
            assert (
                await s.execute(select(Person.status).where(Person.employee_id == "E100"))
            ).scalar_one() == "left"
        assert await groups_of(lbot, IVAN) == {}


async def test_rehire_gets_rules_again_and_hr_hears_what_they_had(lbot) -> None:  # type: ignore[no-untyped-def]
    async with web_client(lbot) as client:
        await post_event(
            client, hr_event("joined", "r1", "E7", IVAN, "2026-01-01T09:00:00Z", department="Sales")
        )
        await lbot.say(HR, f"/addgroup social {IVAN}")
        await post_event(client, hr_event("left", "r2", "E7", IVAN, "2026-02-01T09:00:00Z"))
        assert await groups_of(lbot, IVAN) == {}
        r = await post_event(
            client, hr_event("joined", "r3", "E7", IVAN, "2026-06-01T09:00:00Z", department="Engineering")
        )
        assert r.status_code == 200
    assert await groups_of(lbot, IVAN) == {"all-staff": "rule:all-staff", "eng": "rule:eng"}
    assert (
        "is back (rehired): added to all-staff@corp.example, eng@corp.example. When they left they were in "
        "all-staff@corp.example, sales@corp.example, social@corp.example."
    ) in lbot.out.getvalue()


async def test_a_joined_under_a_new_id_with_a_leavers_email_is_refused_not_taken_as_their_rehire(
    lbot,
) -> None:  # type: ignore[no-untyped-def]
    """Tryout: E6 frank left; `joined` E6b frank@… re-activated E6, matched by email. A rehire keeps the
    employee id (above); another id with a leaver's address is refused, like a `changed` giving another
    person's address, and changes nothing."""
    frank = "frank@corp.example"
    async with web_client(lbot) as client:
        await post_event(
            client, hr_event("joined", "f1", "E6", frank, "2026-01-01T09:00:00Z", department="Sales")
        )
        await post_event(client, hr_event("left", "f2", "E6", frank, "2026-02-01T09:00:00Z"))
        for kind in ("joined", "changed"):
            r = await post_event(
                client, hr_event(kind, f"f3-{kind}", "E6b", frank, "2026-06-01T09:00:00Z", department="Sales")
            )
            assert r.status_code == 422, (kind, r.text)
            assert r.json()["error"] == (
                "frank@corp.example belongs to E6, who left; a rehire keeps the employee id: send the joined "
                "event for E6, or correct the email."
            )
        assert await groups_of(lbot, frank) == {}
        r = await post_event(
            client, hr_event("joined", "f4", "E6", frank, "2026-06-01T09:00:00Z", department="Sales")
        )
        assert r.status_code == 200 and r.json()["added"], r.text  # the rehire under E6 still works
    async with lbot.core.ctx.sessions() as s:
        ids = (await s.execute(select(PersonId.external_id).order_by(PersonId.external_id))).scalars().all()
    assert list(ids) == ["E6"]


async def test_leaver_who_owned_a_group_is_reported_to_hr(lbot) -> None:  # type: ignore[no-untyped-def]
    async with web_client(lbot) as client:
        await post_event(
            client,
            hr_event(
                "joined", "o1", "E1", "alice@corp.example", "2026-01-01T09:00:00Z", department="Engineering"
            ),
        )
        await post_event(client, hr_event("left", "o2", "E1", None, "2026-03-01T09:00:00Z"))
    assert "They owned eng@corp.example: those groups need a new owner." in lbot.out.getvalue()
    assert await groups_of(lbot, "alice@corp.example") == {}


async def test_a_changed_event_giving_a_percent_hack_address_is_refused_and_changes_nothing(
    lbot,
) -> None:  # type: ignore[no-untyped-def]
    """Tryout: `changed` with bob%gmail.com@corp.example removed bob from his groups and stored the address
    (Postfix delivers it to gmail.com); every CSV import was refused afterwards because of it."""
    bob, hack = "bob@corp.example", "bob%gmail.com@corp.example"
    async with web_client(lbot) as client:
        r = await post_event(
            client, hr_event("joined", "ev-b1", "E7", bob, "2026-11-02T09:00:00Z", department="Engineering")
        )
        assert r.status_code == 200, r.text
        before = await groups_of(lbot, bob)
        assert before
        for kind in ("changed", "left", "joined"):
            r = await post_event(
                client, hr_event(kind, f"ev-b-{kind}", "E7", hack, "2026-11-03T09:00:00Z", department="Sales")
            )
            assert r.status_code == 422, (kind, r.text)
            error = r.json()["error"]
            assert error.startswith(
                f"{hack} is not a company address (a “%” before the @-sign"
            ) and error.endswith("; correct employee.email."), error
    assert await groups_of(lbot, bob) == before and await groups_of(lbot, hack) == {}
    async with lbot.core.ctx.sessions() as s:
        assert (await s.execute(select(Person.email).where(Person.employee_id == "E7"))).scalar_one() == bob


def employee(name: str = "Ivan Petrov", **attributes: object) -> dict[str, object]:
    return {"employee": {"id": "E5", "email": IVAN, "name": name, "attributes": attributes}}


# A valid event with one attribute worth 3, to swap for what json.dumps would never write.
RAW = (
    b'{"event_id": "raw", "type": "joined", "occurred_at": "2026-11-02T09:00:00Z", '
    b'"employee": {"id": "E5", "email": "ivan@corp.example", "attributes": {"level": 3}}}'
)

BAD = [
    (
        "bad signature",
        lambda b: {**signed(b), "X-Postroom-Signature": "sha256=" + "0" * 64},
        None,
        401,
        "signature",
    ),
    ("stale timestamp", lambda b: signed(b, ts=int(time.time()) - 301), None, 401, "5 minutes"),
    ("no headers", lambda b: {"Content-Type": "application/json"}, None, 401, "required"),
    ("malformed json", signed, b'{"event_id": "x", ', 400, "not valid JSON"),
    ("unknown type", signed, {"type": "promoted"}, 422, "type must be joined, changed or left"),
    ("missing email", signed, {"employee": {"id": "E5", "attributes": {}}}, 422, "employee.email is missing"),
    (
        "external address",
        signed,
        {"employee": {"id": "E5", "email": "x@gmail.com", "attributes": {}}},
        422,
        "x@gmail.com is outside corp.example",
    ),
    (
        "percent-hack address",  # Postfix would deliver it to x@gmail.com: never a company address
        signed,
        {"employee": {"id": "E5", "email": "x%gmail.com@corp.example", "attributes": {}}},
        422,
        "x%gmail.com@corp.example is not a company address",
    ),
    (
        "oversize body",
        signed,
        {"employee": {"id": "E5", "email": IVAN, "attributes": {"x": "y" * 70_000}}},
        413,
        "larger than",
    ),
    ("naive time", signed, {"occurred_at": "2026-11-02T09:00:00"}, 422, "no time zone"),
    # Issue "Safe to run for real": input that can never succeed is refused for good (4xx), never 503.
    ("far-future date", signed, {"occurred_at": "9999-12-31T00:00:00Z"}, 422, "can't come from the future"),
    ("date before 2000", signed, {"occurred_at": "1970-01-01T00:00:00Z"}, 422, "before 2000-01-01"),
    (
        "NUL in a name",
        signed,
        employee(name="Ivan\x00Petrov"),
        422,
        "employee.name contains a control character (U+0000)",
    ),
    (
        "VT in a name",
        signed,
        employee(name="Ivan\x0bPetrov"),
        422,
        "employee.name contains a control character (U+000B)",
    ),
    ("override in a name", signed, employee(name="\u202eIvan"), 422, "text-direction override (U+202E)"),
    # Tryout: invisible formatting characters make two names look alike (or one read oddly) in chat.
    ("zero-width joiner in a name", signed, employee(name="Iv\u200dan"), 422, "invisible character (U+200D)"),
    (
        "right-to-left mark in a name",
        signed,
        employee(name="Ivan\u200f"),
        422,
        "invisible character (U+200F)",
    ),
    ("zero-width space in a name", signed, employee(name="I\u200bvan"), 422, "invisible character (U+200B)"),
    # Tryout: a key given twice was taken silently (the last one won): which one did HR's system mean?
    (
        "a key twice",
        signed,
        RAW.replace(b'"type": "joined"', b'"type": "joined", "type": "left"'),
        400,
        "“type” appears twice",
    ),
    (
        "a nested key twice",
        signed,
        RAW.replace(
            b'"email": "ivan@corp.example"', b'"email": "ivan@corp.example", "email": "x@corp.example"'
        ),
        400,
        "“email” appears twice",
    ),
    ("half a surrogate", signed, employee(name="Ivan\ud800"), 422, "broken character (U+D800"),
    (
        "control character in an attribute",
        signed,
        employee(department="Engi\x1bneering"),
        422,
        "employee.attributes.department contains a control character (U+001B)",
    ),
    ("control character in the event id", signed, {"event_id": "ev\x07"}, 422, "event_id contains a control"),
    ("NaN", signed, RAW.replace(b"3", b"NaN"), 400, "NaN is not a number in JSON"),
    ("nested thousands deep", signed, b"[" * 4000 + b"]" * 4000, 400, "not valid JSON"),
    ("Infinity", signed, RAW.replace(b"3", b"-Infinity"), 400, "-Infinity is not a number in JSON"),
    ("a number too large to be finite", signed, RAW.replace(b"3", b"1e999"), 422, "not a finite number"),
    ("a number too large to keep", signed, employee(level=10**20), 422, "too large to keep exactly"),
    # Tryout: a 30-digit employee id was applied; JSON parsers beyond ±2^53 round it to another person's.
    (
        "a 30-digit employee id",
        signed,
        {"employee": {"id": 10**29 + 7, "email": IVAN, "attributes": {}}},
        422,
        "employee.id is a number too large to keep exactly",
    ),
    ("an event id beyond 2^53", signed, {"event_id": -(2**53) - 1}, 422, "event_id is a number too large"),
    ("a nested attribute", signed, employee(skills=[{"go": True}]), 422, "a list of those"),
    ("a long list", signed, employee(skills=["x"] * 51), 422, "more than 50 items"),
    (
        "odd digits in the timestamp",
        lambda b: {**signed(b), "X-Postroom-Timestamp": b"\xb2"},
        None,
        400,
        "whole number",
    ),
    (
        "a 400-digit timestamp",
        lambda b: {**signed(b), "X-Postroom-Timestamp": "9" * 400},
        None,
        400,
        "whole number",
    ),
    # Tryout: a UTF-16 body (with or without its byte-order mark) was decoded as UTF-16 and applied; JSON
    # between systems is UTF-8 (RFC 8259), and a body in another encoding is refused whole.
    ("UTF-16 with a byte-order mark", signed, RAW.decode().encode("utf-16"), 415, "must be JSON in UTF-8"),
    ("UTF-16 without a byte-order mark", signed, RAW.decode().encode("utf-16-le"), 415, "not UTF-16"),
    ("UTF-16 big-endian", signed, RAW.decode().encode("utf-16-be"), 415, "must be JSON in UTF-8"),
    ("UTF-32", signed, RAW.decode().encode("utf-32"), 415, "must be JSON in UTF-8"),
    (
        "Latin-1",
        signed,
        RAW.replace(b'"attributes"', '"name": "Iván", "attributes"'.encode("latin-1")),
        400,
        "is not UTF-8",
    ),
    (
        "a charset other than UTF-8",
        lambda b: {**signed(b), "Content-Type": "application/json; charset=utf-16"},
        None,
        415,
        "charset=utf-16",
    ),
    (
        "non-ASCII signature",
        lambda b: {**signed(b), "X-Postroom-Signature": b"sha256=\xe9"},
        None,
        401,
        "signature",
    ),
]


@pytest.mark.parametrize("name,headers,change,status,words", BAD, ids=[b[0] for b in BAD])
async def test_bad_input_gets_a_4xx_sentence_and_changes_nothing(
    lbot, name, headers, change, status, words
) -> None:  # type: ignore[no-untyped-def]
    payload = hr_event("joined", f"bad-{name}", "E5", IVAN, "2026-11-02T09:00:00Z", department="Engineering")
    if isinstance(change, dict):
        payload.update(change)
        body = json.dumps(payload).encode()
    elif isinstance(change, bytes):
        body = change
    else:
        body = json.dumps(payload).encode()
    async with web_client(lbot) as client:
        r = await client.post("/hooks/hr", content=body, headers=headers(body))
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert words in error and error.endswith(".") and error.count(". ") == 0
    async with lbot.core.ctx.sessions() as s:
        assert (await s.execute(select(func.count()).select_from(Person))).scalar_one() == 0
        assert (await s.execute(select(func.count()).select_from(Membership))).scalar_one() == 0


async def test_a_utf8_body_with_a_byte_order_mark_is_taken(lbot) -> None:  # type: ignore[no-untyped-def]
    body = b"\xef\xbb\xbf" + RAW
    headers = {**signed(body), "Content-Type": "application/json; charset=UTF-8"}
    async with web_client(lbot) as client:
        r = await client.post("/hooks/hr", content=body, headers=headers)
    assert r.status_code == 200, r.text
    async with lbot.core.ctx.sessions() as s:
        assert (await s.execute(select(Person.email).where(Person.employee_id == "E5"))).scalar_one() == IVAN


async def test_an_unknown_id_with_an_active_persons_email_is_refused_not_a_takeover(lbot) -> None:  # type: ignore[no-untyped-def]
    """Attacker tryout: alice is E1; a signed `joined` for X12 with alice@ renamed her "Mallory" and moved
    her groups, and a `left` for X12 then removed her from everything. A bare `left` for an unknown id
    with someone's address did the same. HR ids are immutable: each is refused (422) and changes nothing."""
    alice = "alice@corp.example"
    async with web_client(lbot) as client:
        r = await post_event(
            client, hr_event("joined", "a1", "E1", alice, "2026-01-01T09:00:00Z", department="Engineering")
        )
        assert r.status_code == 200, r.text
        before = await groups_of(lbot, alice)
        assert before
        for kind, event_id in (("joined", "x1"), ("changed", "x2"), ("left", "x3")):
            r = await post_event(
                client,
                hr_event(kind, event_id, "X12", alice, "2026-06-01T09:00:00Z", "Mallory", department="Board"),
            )
            assert r.status_code == 422, (kind, r.text)
            assert r.json()["error"] == (
                "alice@corp.example belongs to E1; an HR id is one person's and does not change: send the "
                "event for E1, or correct the email."
            ), (kind, r.text)
    assert await groups_of(lbot, alice) == before
    async with lbot.app.ctx.sessions() as session:
        person = (await session.execute(select(Person).where(Person.email == alice))).scalar_one()
        assert person.status == "active" and person.name != "Mallory"
        assert "X12" not in set(
            (
                await session.execute(select(PersonId.external_id).where(PersonId.person_id == person.id))
            ).scalars()
        )


NOT_A_MAILBOX = [
    ("alice+x@corp.example", "alice+x@corp.example is alice@corp.example with a tag"),
    ("postmaster@corp.example", "a role mailbox every mail domain keeps (RFC 2142)"),
    ("abuse@corp.example", "a role mailbox every mail domain keeps (RFC 2142)"),
    ("bounces@corp.example", "one of Postroom's own addresses"),
    ("bounces+x@corp.example", "one of Postroom's own addresses"),
    ("unsubscribe@corp.example", "the unsubscribe mailbox (campaigns.unsubscribe_mailbox)"),
    ("news@corp.example", "the campaigns' From address (campaigns.from_address)"),
    ("news+x@corp.example", "is news@corp.example with a tag, and that is the campaigns' From address"),
    ("eng@corp.example", "is the address of the group eng@corp.example"),
    ("eng+x@corp.example", "is the group eng@corp.example's address with a tag"),
]


@pytest.mark.parametrize("email,words", NOT_A_MAILBOX, ids=[e for e, _w in NOT_A_MAILBOX])
async def test_a_joiner_or_an_address_change_to_what_is_no_persons_mailbox_is_refused(
    lbot, email, words
) -> None:  # type: ignore[no-untyped-def]
    """Tryout finding: HR joiners on alice+x@ (delivered to alice@'s mailbox), postmaster@, abuse@, the
    return path, the unsubscribe mailbox, the campaign sender, a group's address with a tag were taken
    as people, and the rules put those addresses in every group. Each is refused (422), and so is an
    address change to one; nothing changes."""
    async with web_client(lbot) as client:
        r = await post_event(
            client,
            hr_event("joined", "j1", "E1", "carol@corp.example", "2026-11-01T09:00:00Z", department="Sales"),
        )
        assert r.status_code == 200, r.text
        before = await groups_of(lbot, "carol@corp.example")
        for kind, emp, event_id in (("joined", "E2", "j2"), ("changed", "E1", "c1")):
            r = await post_event(
                client, hr_event(kind, event_id, emp, email, "2026-11-02T09:00:00Z", department="Engineering")
            )
            assert r.status_code == 422, (kind, r.text)
            error = r.json()["error"]
            assert words in error and error.endswith("."), (kind, error)
    assert await groups_of(lbot, "carol@corp.example") == before
    async with lbot.core.ctx.sessions() as s:
        emails = set((await s.execute(select(Person.email))).scalars())
        ids = set((await s.execute(select(PersonId.external_id))).scalars())
    assert emails == {"carol@corp.example"} and ids == {"E1"}, (emails, ids)


def test_a_plus_address_outside_the_company_is_a_persons_own(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Outside the company's domains Postroom can't know what a "+" means: an external contractor's
    address is theirs as it is; on them, a tag is refused (and with postfix.recipient_delimiter empty,
    a "+" is no tag at all)."""
    from bot.groups.service import not_a_mailbox
    from tests.conftest import make_settings

    settings = make_settings("sqlite+aiosqlite:///:memory:", 2525, tmp_path)
    assert not_a_mailbox(settings, "dana+corp@partner.example", set()) is None
    assert not_a_mailbox(settings, "mary-ann@corp.example", set()) is None
    assert "with a tag" in (not_a_mailbox(settings, "dana+corp@corp.example", set()) or "")
    untagged = make_settings(
        "sqlite+aiosqlite:///:memory:", 2525, tmp_path, postfix={"recipient_delimiter": ""}
    )
    assert not_a_mailbox(untagged, "dana+corp@corp.example", set()) is None
