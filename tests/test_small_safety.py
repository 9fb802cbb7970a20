"""Small things found by attacking a running Postroom (issue "Safe to run for real"), each with the test
that failed before its fix: /campaign test mails one person only, /groups answers people in the company
only, and an edit after approval updates every card that showed the approval."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tests.conftest import APPROVER, HR, SENDER
from tests.test_campaign_flow import load_customers


async def test_a_campaign_test_goes_to_one_colleague_never_to_a_group(bot, smtp, tmp_path) -> None:  # type: ignore[no-untyped-def]
    await load_customers(bot, tmp_path)
    await bot.say(HR, "/newgroup all-staff")
    await bot.say(HR, "/addgroup all-staff alice@corp.example bob@corp.example")
    await bot.say(SENDER, "/campaign new spring --to customers --template welcome")
    refused = await bot.say(SENDER, "/campaign test spring all-staff@corp.example")
    assert "all-staff@corp.example is an email group: a test goes to one person." in refused
    stranger = await bot.say(SENDER, "/campaign test spring ghost@corp.example")
    assert "ghost@corp.example is not a colleague on record" in stranger
    assert smtp.messages == []
    sent = await bot.say(SENDER, "/campaign test spring alice@corp.example")
    assert sent.startswith("Sent a test of “spring” to alice@corp.example")
    assert [m.rcpt_tos for m in smtp.messages] == [["alice@corp.example"]]
    mine = await bot.say(SENDER, "/campaign test spring sam@corp.example")  # the sender's own address
    assert mine.startswith("Sent a test of “spring” to sam@corp.example")


async def test_groups_answers_people_in_the_company_only(bot) -> None:  # type: ignore[no-untyped-def]
    await bot.say(HR, "/newgroup eng")
    assert "/groups is for people in the company." in await bot.say("guest@partner.example", "/groups")
    assert "/groups is for people in the company." in await bot.say("guest@partner.example", "/groups eng")
    assert "eng@corp.example" in await bot.say("nora@corp.example", "/groups")


async def test_an_edit_after_approval_updates_the_card_that_showed_the_approval(bot, smtp, tmp_path) -> None:  # type: ignore[no-untyped-def]
    await load_customers(bot, tmp_path)
    at = (datetime.now(UTC) + timedelta(hours=2)).isoformat(timespec="seconds")
    await bot.say(SENDER, "/campaign new later --to customers --template welcome")
    await bot.say(SENDER, f"/campaign submit later --at {at}")
    assert "it starts at" in await bot.say(APPROVER, "/approve later")
    approved = bot.cards()[-1].card
    assert any(v.startswith("Approved by maria@corp.example; starts") for _n, v in approved.fields)
    edited = await bot.say(SENDER, '/campaign edit later --subject "Something else"')
    assert "The earlier approval request is void" in edited
    card = bot.cards()[-1].card
    outcome = dict(card.fields)["Outcome"]
    assert outcome.startswith(
        "Edited by sam@corp.example after it was submitted: that approval request is void"
    )
    assert not card.buttons
    assert bot.app.scheduler.next_run("campaign-start-1") is None  # the scheduled start is gone too
    assert "draft" in await bot.say(SENDER, "/campaign status later")
