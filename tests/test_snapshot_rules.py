"""The send snapshot (one INSERT … SELECT) writes exactly the rows the audience rules in Python give:
consent, suppressions (erased ones by hash), leavers, internal and external group members, names and
attributes falling back as `stream_candidates` does, and addresses that are not plain lower-case ASCII."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select

from bot.addresses import email_hash
from bot.app import App, build_app
from bot.campaigns.audience import snapshot_deliveries, stream_audience
from bot.db.models import (
    Campaign,
    Contact,
    ContactList,
    Delivery,
    Group,
    ListMember,
    Membership,
    Person,
    Suppression,
)
from tests.conftest import make_settings

NOW = datetime(2026, 5, 1, tzinfo=UTC)


def contact(email: str, name: str | None = "C", attributes: Any = None, consent: bool = True) -> Contact:
    return Contact(
        email=email,
        name=name,
        attributes={"k": email} if attributes is None else attributes,
        consent_at=NOW if consent else None,
    )


async def seed(app: App) -> None:
    async with app.ctx.sessions() as session, session.begin():
        lst = ContactList(name="customers")
        contacts = [
            contact("plain@example.com"),
            contact("noconsent@example.com", consent=False),
            contact("suppressed@example.com"),
            contact("erased@example.com"),  # suppressed by hash only: the suppression row lost its address
            contact("Mixed.Case@Example.com"),  # not plain: its hash is of the lower-cased address
            contact("Other.Case@Example.com"),
            contact("spaced@example.com "),  # a space: its hash is of the stripped address
            contact("tab@example.com\t"),
            contact("empty@example.com", name=None, attributes={}),
            contact("null@example.com", name="", attributes={"a": None}),
            # group-only contacts
            contact("ext@partner.example", name="Ext"),
            contact("extnoconsent@partner.example", consent=False),
            contact("lookalike@notcorp.example", name="Look"),
            contact("alice@corp.example", name="Alice C", attributes={"from": "contact"}),
            contact("nobody@corp.example", name="Nobody C", attributes={"from": "contact"}),
        ]
        session.add(lst)
        session.add_all(contacts)
        await session.flush()
        for c in contacts[:10]:
            session.add(ListMember(list_id=lst.id, contact_id=c.id))
        session.add_all(
            [
                Suppression(
                    email_hash=email_hash("suppressed@example.com"),
                    email="suppressed@example.com",
                    reason="manual",
                ),
                Suppression(email_hash=email_hash("erased@example.com"), email=None, reason="erased"),
                Suppression(
                    email_hash=email_hash("mixed.case@example.com"), email=None, reason="unsubscribed"
                ),
                Suppression(email_hash=email_hash("spaced@example.com"), email=None, reason="unsubscribed"),
                Suppression(
                    email_hash=email_hash("gone@corp.example"), email="gone@corp.example", reason="manual"
                ),
            ]
        )
        people = [
            Person(email="alice@corp.example", name="", attributes={}),  # falls back to the contact's
            Person(email="bob@eu.corp.example", name="Bob", attributes={"team": "eu"}),
            Person(email="left@corp.example", name="Left", status="left", attributes={"x": 1}),
            Person(email="gone@corp.example", name="Gone", attributes={}),
            Person(email="Carl@Corp.Example", name="Carl", attributes={"team": "caps"}),
        ]
        session.add_all(people)
        await session.flush()
        group = Group(address="mixed@corp.example", local_part="mixed", kind="external-allowed")
        session.add(group)
        await session.flush()
        by_email = {p.email: p.id for p in people}
        for email in [
            "alice@corp.example",
            "bob@eu.corp.example",
            "left@corp.example",
            "gone@corp.example",
            "Carl@Corp.Example",
            "nobody@corp.example",  # internal, no person on record: no consent needed
            "ghost@corp.example",  # internal, neither person nor contact
            "ext@partner.example",
            "extnoconsent@partner.example",
            "lookalike@notcorp.example",  # not corp.example's subdomain: external, needs consent
            "unlisted@mail.corp.example",  # a subdomain not in org.domains: external, no consent
            "x%gmail.com@corp.example",  # the percent hack routes it to gmail.com: external, no consent
            "x!gmail.com@corp.example",
            "@relay.example:x@corp.example",
            "stranger@partner.example",  # external, no contact at all
        ]:
            session.add(Membership(group_id=group.id, email=email, person_id=by_email.get(email)))
        for i, (kind, name) in enumerate(
            [("list", "customers"), ("group", "mixed@corp.example"), ("joiners", "people")]
        ):
            session.add(
                Campaign(
                    id=i + 1,
                    name=f"c{i}",
                    template="t",
                    subject="s",
                    audience_kind=kind,
                    audience_name=name,
                    from_address="news@corp.example",
                    created_by="sam@corp.example",
                    state="sending",
                )
            )


async def test_snapshot_writes_what_the_python_rules_give(database_url: str, tmp_path: Path) -> None:
    # eu.corp.example is internal because it is listed: a subdomain is never internal by itself.
    settings = make_settings(database_url, 25, tmp_path, org={"domains": ["corp.example", "eu.corp.example"]})
    app = await build_app(settings)
    try:
        await seed(app)
        for campaign_id in (1, 2, 3):
            async with app.ctx.sessions() as session, session.begin():
                campaign = await session.get(Campaign, campaign_id)
                assert campaign is not None
                expected = [
                    (r.email, r.name, r.attributes)
                    async for chunk in stream_audience(session, app.ctx.settings, campaign)
                    for r in chunk
                ]
                expected.sort(key=lambda row: row[0])
                written = await snapshot_deliveries(session, app.ctx.settings, campaign)
            async with app.ctx.sessions() as session:
                rows = (
                    await session.execute(
                        select(Delivery).where(Delivery.campaign_id == campaign_id).order_by(Delivery.id)
                    )
                ).scalars()
                got = []
                for d in rows:
                    assert (d.status, d.attempts, d.trigger_key) == ("pending", 0, "")
                    got.append((d.email, d.name, d.attributes))
            assert sorted(got, key=lambda row: row[0]) == expected
            assert written == len(expected)
        emails = {e for e, _n, _a in expected}
        assert emails == {
            "alice@corp.example",
            "bob@eu.corp.example",
            "Carl@Corp.Example",
        }  # active, unsuppressed
        async with app.ctx.sessions() as session:
            by_campaign = {
                (d.campaign_id, d.email): (d.name, d.attributes)
                for d in (await session.execute(select(Delivery))).scalars()
            }
        assert {e for c, e in by_campaign if c == 1} == {
            "plain@example.com",
            "Other.Case@Example.com",
            "tab@example.com\t",
            "empty@example.com",
            "null@example.com",
        }
        assert {e for c, e in by_campaign if c == 2} == {
            "alice@corp.example",
            "bob@eu.corp.example",
            "Carl@Corp.Example",
            "nobody@corp.example",
            "ghost@corp.example",
            "ext@partner.example",
            "lookalike@notcorp.example",
        }
        assert by_campaign[(2, "alice@corp.example")] == ("Alice C", {"from": "contact"})
        assert by_campaign[(2, "ghost@corp.example")] == (None, {})
        assert by_campaign[(1, "empty@example.com")] == (None, {})
    finally:
        await app.close()
