"""Findings of a new user's tryout of campaigns, each pinned: what /campaign edit says it changed, one
bound for a subject, which card a resubmission updates, ids on cards, who a test mail is addressed to,
what a cancelled campaign's card shows."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from sqlalchemy import select

from bot.db.models import AuditEntry, Campaign
from tests.conftest import APPROVER, SENDER
from tests.slack_rig import APPROVALS, U_APPROVER, U_SENDER, Rig
from tests.slack_rig import load_customers as load_slack_customers
from tests.test_campaign_flow import load_customers

SLACK_OVERRIDES = {"update_interval_s": 0}  # every card update goes out: none is folded into a later one


def blocks_text(call) -> str:  # type: ignore[no-untyped-def]
    return json.dumps(call.params.get("blocks"), ensure_ascii=False)


# -- /campaign edit: the words the sender typed; one bound for the subject ------------------------------
async def test_edit_names_what_changed_as_the_options_typed(bot, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    await load_customers(bot, tmp_path)
    await bot.say(SENDER, "/campaign new spring --to customers --template welcome")
    reply = await bot.say(
        SENDER, '/campaign edit spring --tracking off --subject "Hello {{ first_name }}" --to customers'
    )
    assert reply == "Updated “spring” (--to, --subject, --tracking)."
    for column in ("subject_template", "audience_kind", "audience_name", "audience_where"):
        assert column not in reply
    assert await bot.say(SENDER, '/campaign edit spring --where "company = \\"Tanaka KK\\""') == (
        "Updated “spring” (--where)."
    )
    async with bot.core.ctx.sessions() as session:
        details = (
            (await session.execute(select(AuditEntry.detail).where(AuditEntry.action == "campaign.edit")))
            .scalars()
            .all()
        )
    assert list(details) == ["--to, --subject, --tracking", "--where"]


async def test_new_and_edit_bound_the_subject_alike(bot, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    await load_customers(bot, tmp_path)
    too_long, longest = "y" * 501, "y" * 500
    refused = "The subject is longer than 500 characters (it has 501)."
    new = await bot.say(
        SENDER, f"/campaign new spring --to customers --template welcome --subject {too_long}"
    )
    assert new.startswith(refused) and "Usage: /campaign new" in new
    assert "Draft campaign" in await bot.say(SENDER, "/campaign new spring --to customers --template welcome")
    edit = await bot.say(SENDER, f"/campaign edit spring --subject {too_long}")
    assert edit.startswith(refused) and "Usage: /campaign edit" in edit
    assert "subject “Welcome to" in await bot.say(SENDER, "/campaign status spring")  # unchanged
    # What either accepts can be sent: the longest subject renders at preview.
    assert (
        await bot.say(SENDER, f"/campaign edit spring --subject {longest}") == "Updated “spring” (--subject)."
    )
    preview = await bot.say(SENDER, "/campaign preview spring")
    assert f"Subject: {longest}" in preview and "Checks: all passed." in preview


# -- a card belongs to one submission --------------------------------------------------------------------
async def test_a_resubmission_updates_its_own_card_never_the_rejected_one(
    rig: Rig, smtp, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    await load_slack_customers(rig.core, tmp_path)
    await rig.say(U_SENDER, "/campaign new spring --to customers --template welcome")
    await rig.say(U_SENDER, "/campaign submit spring")
    (first,) = [c for c in rig.fake.of("chat.postMessage") if c.params["channel"] == APPROVALS]
    assert (await rig.say(U_APPROVER, "/reject spring too short")).startswith("Rejected “spring”")

    def updates_of(card) -> list:  # type: ignore[no-untyped-def]
        return [c for c in rig.fake.of("chat.update") if c.params["ts"] == card.params["_ts"]]

    rejected = await rig.fake.wait_for(
        lambda: [c for c in updates_of(first) if "Rejected by" in blocks_text(c)]
    )
    seen = len(updates_of(first))
    await rig.say(U_SENDER, '/campaign edit spring --subject "Spring is here"')
    await rig.say(U_SENDER, "/campaign submit spring")
    cards = [c for c in rig.fake.of("chat.postMessage") if c.params["channel"] == APPROVALS]
    assert len(cards) == 2 and cards[0] is first
    second = cards[1]
    await rig.say(U_APPROVER, "/approve spring")
    await asyncio.to_thread(smtp.handler.wait_for, 2)
    await asyncio.wait_for(rig.app.drain(), 20)
    async with rig.core.ctx.sessions() as session:
        assert (await session.execute(select(Campaign.state))).scalar_one() == "completed"
    await rig.fake.wait_for(lambda: [c for c in updates_of(second) if "sent — 2 delivered" in blocks_text(c)])
    # The rejected card still says what happened to its submission: nothing after it was touched it.
    assert len(updates_of(first)) == seen, [blocks_text(c)[:300] for c in updates_of(first)[seen:]]
    assert "Rejected by maria@corp.example: too short" in blocks_text(updates_of(first)[-1])
    assert rejected


async def test_a_card_posted_before_cards_were_kept_per_submission_is_still_updated(
    bot, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy import update

    from bot.db.models import MessageRecord
    from tests.conftest import APPROVER

    await load_customers(bot, tmp_path)
    await bot.say(SENDER, "/campaign new spring --to customers --template welcome")
    await bot.say(SENDER, "/campaign submit spring")
    async with bot.core.ctx.sessions() as session, session.begin():
        cid = (await session.execute(select(Campaign.id))).scalar_one()
        await session.execute(update(MessageRecord).values(subject=f"campaign:{cid}"))  # as 0.x stored it
    before = len(bot.console.transcript)
    assert "Rejected “spring”" in await bot.say(APPROVER, "/reject spring not yet")
    updates = [m for kind, _c, m in bot.console.transcript[before:] if kind == "update"]
    assert len(updates) == 1 and "Rejected by maria@corp.example: not yet" in str(updates[0].card)
    # With a second submission, such a card may be an earlier one's: it is left alone.
    await bot.say(SENDER, '/campaign edit spring --subject "Again"')
    await bot.say(SENDER, "/campaign submit spring")
    async with bot.core.ctx.sessions() as session, session.begin():
        await session.execute(update(MessageRecord).values(subject=f"campaign:{cid}"))
    before = len(bot.console.transcript)
    await bot.say(APPROVER, "/reject spring still not")
    assert [kind for kind, _c, _m in bot.console.transcript[before:] if kind == "update"] == []


# -- /campaign test: addressed to the tester; the sample's data announced --------------------------------
async def test_a_test_mail_is_addressed_to_the_tester_and_says_whose_data_it_shows(
    bot, smtp, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    await load_customers(bot, tmp_path)
    await bot.say(
        SENDER, '/campaign new spring --to customers --template welcome --subject "Hi {{ first_name }}"'
    )
    assert (await bot.say(SENDER, "/campaign test spring alice@corp.example")).startswith(
        "Sent a test of “spring” to alice@corp.example (subject: [TEST] Hi Lena)"
    )
    (received,) = smtp.handler.to("alice@corp.example")
    msg = received.message
    assert msg["To"] == "Alice <alice@corp.example>"  # her name on record, not the sample's
    banner = (
        "Test message for alice@corp.example: it shows the data of lena@example.com, a recipient of "
        "“spring”. Nobody else got it."
    )
    text = msg.get_body(("plain",)).get_content().replace("\r\n", "\n")
    assert text.startswith(banner + "\n\n") and "Hello Lena" in text
    html_part = msg.get_body(("html",)).get_content()
    assert html_part.lower().index("<body") < html_part.index(banner) < html_part.index("Hello Lena")
    await bot.say(SENDER, "/campaign test spring sam@corp.example")  # the sender's own address
    assert smtp.handler.to("sam@corp.example")[0].message["To"] == "Sam <sam@corp.example>"


# -- what a card shows once decided ----------------------------------------------------------------------
async def test_a_cancelled_campaigns_card_shows_the_share_that_went_out(bot, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    await load_customers(bot, tmp_path)
    await bot.say(SENDER, "/campaign new spring --to customers --template welcome")
    async with bot.core.ctx.sessions() as session:
        campaign = (await session.execute(select(Campaign))).scalar_one()
    card = bot.app.cards.approval_card(
        campaign, None, outcome="Cancelled.", counts={"sent": 1, "cancelled": 3}
    )
    assert card.progress == 0.25
    assert dict(card.fields)["Progress"] == "1/4 — cancelled 3, sent 1"
    # No deliveries yet (a draft, a voided request): no progress at all, not a full bar.
    empty = bot.app.cards.approval_card(campaign, None, outcome="draft", counts={})
    assert empty.progress is None and "Progress" not in dict(empty.fields)


async def test_cards_name_the_campaign_and_submission_and_say_where_it_stands(bot, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import APPROVER

    await load_customers(bot, tmp_path)
    await bot.say(SENDER, "/campaign new spring --to customers --template welcome")
    await bot.say(SENDER, "/campaign submit spring")
    assert bot.cards()[-1].card.title == "Approval needed: campaign “spring”, submission 1"
    await bot.say(APPROVER, "/reject spring not yet")
    assert bot.cards()[-1].card.title == "Campaign “spring”, submission 1: rejected"
    await bot.say(SENDER, '/campaign edit spring --subject "Again"')
    await bot.say(SENDER, "/campaign submit spring")
    assert bot.cards()[-1].card.title == "Approval needed: campaign “spring”, submission 2"
    await bot.say(SENDER, "/campaign cancel spring")
    assert bot.cards()[-1].card.title == "Campaign “spring”, submission 2: cancelled"
    # The console prints no message number of its own (it read like a plan's: /plan approve 1).
    out = bot.out.getvalue()
    assert "#1" not in out and "message #" not in out and "(updated) " in out


async def test_edit_takes_no_tracking_as_new_does(bot, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The README's /campaign new has --no-tracking; /campaign edit refused it ("has no option")."""
    await load_customers(bot, tmp_path)
    await bot.say(SENDER, "/campaign new spring --to customers --template welcome")
    assert await bot.say(SENDER, "/campaign edit spring --no-tracking") == "Updated “spring” (--tracking)."
    async with bot.core.ctx.sessions() as session:
        tracking = (
            await session.execute(select(Campaign.tracking).where(Campaign.name == "spring"))
        ).scalar_one()
    assert tracking is False
    both = await bot.say(SENDER, "/campaign edit spring --no-tracking --tracking on")
    assert both.startswith("--no-tracking and --tracking on say opposite things")


# -- /approve of a draft: it was never "any more" ----------------------------------------------------------
async def test_approving_a_never_submitted_draft_says_it_waits_for_submission_without_usage(
    bot, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    await load_customers(bot, tmp_path)
    await bot.say(SENDER, "/campaign new spring --to customers --template welcome")
    for command in ("/approve spring", '/reject spring "not yet"'):
        reply = await bot.say(APPROVER, command)
        assert reply == (
            "“spring” is a draft and waits for nobody's approval: its sender submits it with "
            "/campaign submit spring."
        ), reply
    async with bot.core.ctx.sessions() as session:
        state = (await session.execute(select(Campaign.state).where(Campaign.name == "spring"))).scalar_one()
    assert state == "draft"


async def test_refusals_by_state_or_by_a_name_that_is_not_there_carry_no_usage_line(
    bot, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """The usage line is for a malformed command; these were well formed and refused by what exists."""
    await load_customers(bot, tmp_path)
    await bot.say(SENDER, "/campaign new spring --to customers --template welcome")
    assert "Submitted" in await bot.say(SENDER, "/campaign submit spring")
    for command, sentence in (
        ("/campaign submit spring", "only a draft can be submitted"),
        ("/campaign new other --to nosuchlist --template welcome", "is neither a contact list nor a group"),
        ("/campaign new other --to customers --template nosuch", "There is no template “nosuch”"),
    ):
        reply = await bot.say(SENDER, command)
        assert sentence in reply and "Usage" not in reply, (command, reply)


async def test_test_mail_refusals_are_refusals_and_a_leaver_is_named_as_one(bot, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Tryout: each well-formed /campaign test refused by who the address is carried the usage line, and a
    colleague who left was "not a colleague on record"."""
    await load_customers(bot, tmp_path)
    await bot.say(SENDER, "/campaign new spring --to customers --template welcome")
    async with bot.core.ctx.sessions() as session, session.begin():
        from bot.db.models import Person

        session.add(
            Person(employee_id="E9", email="ivan@corp.example", name="Ivan", status="left", source="hr")
        )
    for command, sentence in (
        ("/campaign test spring someone@gmail.com", "Tests go to internal addresses only"),
        ("/campaign test spring ghost@corp.example", "is not a colleague on record"),
        ("/campaign test spring ivan@corp.example", "ivan@corp.example has left the company (HR's record)"),
        ("/campaign preview spring stranger@example.com", "is not in the audience"),
    ):
        reply = await bot.say(SENDER, command)
        assert sentence in reply and "Usage" not in reply, (command, reply)
