"""Automations approved once: the campaign approval bound to trigger, delay and cap; messages through the
delivery engine; an edit voids the approval; a date trigger fires once per contact per date, across a
restart too; a joiner gets onboarding mail; the daily cap; a complaint rate that pauses with a card."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from bot.db.models import Automation, Campaign, CampaignEvent, Delivery
from bot.events import PersonEvent
from tests.audience_kit import at, make_bot, open_signup, restart, wait_for_mail  # noqa: F401
from tests.conftest import APPROVER, SENDER

CONSENT = '--consent "Said yes at the booth"'


async def approve(bot, name: str) -> None:  # type: ignore[no-untyped-def]
    reply = await bot.say(SENDER, f"/automation submit {name}")
    assert "Submitted automation" in reply, reply
    reply = await bot.say(APPROVER, f"/approve automation:{name}")
    assert "Approved automation “" in reply, reply
    await bot.settle()


async def deliveries(bot, name: str) -> list[Delivery]:  # type: ignore[no-untyped-def]
    async with bot.app.ctx.sessions() as s:
        cid = (await s.execute(select(Automation.campaign_id).where(Automation.name == name))).scalar_one()
        return list(
            (
                await s.execute(select(Delivery).where(Delivery.campaign_id == cid).order_by(Delivery.id))
            ).scalars()
        )


async def test_a_welcome_automation_is_sent_only_while_its_approval_matches(make_bot, smtp) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    bot = await make_bot()
    reply = await bot.say(SENDER, "/automation new welcome --on confirmed:customers --template welcome")
    assert "Draft automation “welcome”" in reply and "nothing is sent before it is approved" in reply, reply
    assert "An automation named" in await bot.say(
        SENDER, "/automation new welcome --on joined --template welcome"
    )
    await bot.say(SENDER, f"/contacts add early@example.com --list customers {CONSENT}")
    assert smtp.handler.to("early@example.com") == []  # not approved yet: nothing
    assert "is for approvers" in await bot.say(SENDER, "/approve automation:welcome")
    await approve(bot, "welcome")
    card = bot.cards()[-1].card
    assert card is not None and card.title == "Automation “welcome”, submission 1: approved"
    assert ("Trigger", "a contact confirms on the list “customers”") in card.fields
    assert "running" in await bot.say(SENDER, "/automation status welcome")

    await bot.say(SENDER, f"/contacts add ann@example.com --list customers {CONSENT}")
    await bot.settle()
    await wait_for_mail(smtp, "ann@example.com")
    assert smtp.handler.to("early@example.com") == []  # joined before it started: no welcome

    reply = await bot.say(SENDER, "/automation edit welcome --delay 1h")
    assert "Its approval is void" in reply, reply
    assert "is draft" in await bot.say(SENDER, "/automation status welcome")
    await bot.say(SENDER, f"/contacts add bea@example.com --list customers {CONSENT}")
    await bot.app.automations.scan()
    await bot.settle()
    assert smtp.handler.to("bea@example.com") == []
    assert [d.email for d in await deliveries(bot, "welcome")] == ["ann@example.com"]
    assert "its sender submits it with /automation submit welcome." in await bot.say(
        APPROVER, "/approve automation:welcome"
    )

    # The stored approval no longer matches even if the state were forced back: the engine refuses.
    async with bot.app.ctx.sessions() as s, s.begin():
        c = (await s.execute(select(Campaign).where(Campaign.name == "automation:welcome"))).scalar_one()
        c.state = "sending"
    bot.app.runs.start(c.id, "test")
    await bot.settle()
    async with bot.app.ctx.sessions() as s:
        assert (await s.get(Campaign, c.id)).state == "failed"  # type: ignore[union-attr]
    async with bot.app.ctx.sessions() as s, s.begin():
        (await s.get(Campaign, c.id)).state = "draft"  # type: ignore[union-attr]

    await approve(bot, "welcome")
    started = bot.app.ctx.now()
    await bot.say(SENDER, f"/contacts add cy@example.com --list customers {CONSENT}")
    await bot.settle()
    (cy,) = [d for d in await deliveries(bot, "welcome") if d.email == "cy@example.com"]
    assert cy.status == "pending" and cy.next_attempt_at >= started + timedelta(minutes=59)  # the new delay
    at(bot, started + timedelta(hours=2))
    await bot.app.automations.send_due()
    await bot.settle()
    await wait_for_mail(smtp, "cy@example.com")
    assert smtp.handler.to("bea@example.com") == []  # confirmed while it was void, before it ran again


async def test_a_renewal_reminder_fires_once_per_contact_per_date_also_across_a_restart(
    make_bot,  # noqa: F811
    smtp,
) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    bot = await make_bot()
    at(bot, datetime(2027, 1, 6, 9, 0, tzinfo=UTC))  # 14 days before Lena's renewal on 2027-01-20
    reply = await bot.say(
        SENDER, '/automation new renew --on "renewal_date - 14d" --template welcome --to customers'
    )
    assert "14 days before a contact's renewal_date" in reply, reply
    await approve(bot, "renew")
    assert await bot.app.automations.scan() == {"renew": 1}
    await bot.settle()
    assert await bot.app.automations.scan() == {"renew": 0}  # the same scan again: nothing twice
    await restart(bot)

    bot = await make_bot()
    at(bot, datetime(2027, 1, 7, 9, 0, tzinfo=UTC))  # the next day, still within the catch-up window
    await bot.app.scheduler.start(run_jobs=False)
    bot.app.automations.schedule()  # as serve does at start; the stored job names its handler
    assert await bot.app.scheduler.run_now("automations.scan") == {"renew": 0}
    at(bot, datetime(2027, 1, 18, 9, 0, tzinfo=UTC))  # Raj's turn (2027-02-01); Kim's is "not a date"
    assert await bot.app.automations.scan() == {"renew": 1}
    await bot.settle()
    rows = await deliveries(bot, "renew")
    assert [(d.email, d.trigger_key, d.status) for d in rows] == [
        ("lena@example.com", "date:renewal_date=2027-01-20", "sent"),
        ("raj@example.net", "date:renewal_date=2027-02-01", "sent"),
    ]
    assert len(smtp.handler.to("lena@example.com")) == 1 and len(smtp.handler.to("raj@example.net")) == 1
    assert smtp.handler.to("nocon@example.com") == []  # no consent: never


def chart_named(report, name: str) -> bool:  # type: ignore[no-untyped-def]
    return all(image.title == f"Report: “{name}”" for image in report.images)


async def test_the_daily_cap_holds_the_rest_for_the_next_day(make_bot, smtp) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    bot = await make_bot()
    at(bot, datetime(2027, 1, 20, 9, 0, tzinfo=UTC))
    await bot.say(SENDER, '/automation new day --on "renewal_date" --template welcome --to customers --cap 1')
    async with bot.app.ctx.sessions() as s, s.begin():
        from bot.db.models import Contact

        raj = (await s.execute(select(Contact).where(Contact.email == "raj@example.net"))).scalar_one()
        raj.attributes = {**raj.attributes, "renewal_date": "2027-01-20"}
    await approve(bot, "day")
    assert await bot.app.automations.scan() == {"day": 1}
    assert await bot.app.automations.scan() == {"day": 0}
    at(bot, datetime(2027, 1, 21, 9, 0, tzinfo=UTC))
    assert await bot.app.automations.scan() == {"day": 1}
    assert "daily cap 1" in await bot.say(SENDER, "/automation status day")
    await bot.settle()
    bot.console.as_email = SENDER
    report = await bot.console.say("/automation report day")  # the campaign report, with its chart
    assert report is not None and "Report for “day”" in report.text and chart_named(report, "day")
    assert "fewer than 100" in report.text and "the send has not ended" not in report.text
    (chart,) = report.images
    assert open(chart.path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert report.card is not None and report.card.link is not None and "/report/" in report.card.link[1]


async def test_a_joiner_gets_the_onboarding_automation_once(make_bot, smtp) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    bot = await make_bot()
    await bot.say(
        SENDER, '/automation new onboarding --on joined --template welcome --subject "Welcome aboard"'
    )
    await approve(bot, "onboarding")
    event = PersonEvent(
        "joined",
        "hr-webhook",
        "E900",
        "new.hire@corp.example",
        {"department": "Sales"},
        "evt-900",
        bot.app.ctx.now(),
        "New Hire",
    )
    await bot.app.core.handle_person_event(event)
    await bot.app.core.handle_person_event(event)  # redelivered: one effect
    await bot.settle()
    await wait_for_mail(smtp, "new.hire@corp.example")
    assert len(smtp.handler.to("new.hire@corp.example")) == 1
    assert smtp.handler.to("new.hire@corp.example")[0].message["Subject"] == "Welcome aboard"


async def test_a_complaint_rate_over_the_threshold_pauses_it_with_a_card(make_bot, smtp) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    bot = await make_bot(automations={"rate_min_samples": 2, "complaint_pause_share": 0.5})
    await bot.say(SENDER, "/automation new welcome --on confirmed:customers --template welcome")
    await approve(bot, "welcome")
    for who in ("a1", "a2", "a3"):
        await bot.say(SENDER, f"/contacts add {who}@example.com --list customers {CONSENT}")
    await bot.settle()
    rows = await deliveries(bot, "welcome")
    assert [d.status for d in rows] == ["sent", "sent", "sent"]
    async with bot.app.ctx.sessions() as s, s.begin():
        s.add(
            CampaignEvent(
                campaign_id=rows[0].campaign_id, delivery_id=rows[0].id, email_hash="x", kind="complaint"
            )
        )
    assert await bot.app.automations.check_rates("welcome") is None  # 1 of 3: under half
    async with bot.app.ctx.sessions() as s, s.begin():
        s.add(
            CampaignEvent(
                campaign_id=rows[1].campaign_id, delivery_id=rows[1].id, email_hash="y", kind="complaint"
            )
        )
    paused = await bot.app.automations.check_rates("welcome")
    assert paused is not None
    assert "is paused" in await bot.say(SENDER, "/automation status welcome")
    card = bot.cards()[-1]
    assert card.card is not None and card.card.title == "Automation “welcome” paused"
    await bot.say(SENDER, f"/contacts add a4@example.com --list customers {CONSENT}")
    await bot.settle()
    assert smtp.handler.to("a4@example.com") == []
    assert "Resumed" in await bot.say(SENDER, "/automation resume welcome")


async def test_a_delayed_message_is_not_sent_to_someone_who_left_the_list_meanwhile(make_bot, smtp) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    bot = await make_bot()
    await bot.say(SENDER, "/automation new later --on confirmed:customers --template welcome --delay 2d")
    await approve(bot, "later")
    await bot.say(SENDER, f"/contacts add stay@example.com --list customers {CONSENT}")
    await bot.say(SENDER, f"/contacts add go@example.com --list customers {CONSENT}")
    await bot.say(SENDER, "/contacts remove go@example.com --list customers")
    at(bot, bot.app.ctx.now() + timedelta(days=2, minutes=1))
    await bot.app.automations.send_due()
    await bot.settle()
    await wait_for_mail(smtp, "stay@example.com")
    assert smtp.handler.to("go@example.com") == []
    statuses = {d.email: d.status for d in await deliveries(bot, "later")}
    assert statuses == {"stay@example.com": "sent", "go@example.com": "suppressed"}


async def test_a_failed_automation_is_submitted_again_and_catches_up(make_bot, smtp, tmp_path) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    bot = await make_bot()
    await bot.say(SENDER, "/automation new welcome --on confirmed:customers --template welcome")
    await approve(bot, "welcome")
    await bot.say(SENDER, f"/contacts add ann@example.com --list customers {CONSENT}")
    await bot.settle()
    await wait_for_mail(smtp, "ann@example.com")
    for path in (tmp_path / "templates").glob("welcome.*"):  # changed on disk after the approval
        path.write_text(path.read_text().replace("Hello", "Hi there"))
    await bot.say(SENDER, f"/contacts add bea@example.com --list customers {CONSENT}")
    await bot.settle()
    status = await bot.say(SENDER, "/automation status welcome")
    assert "is failed" in status and "submit it again" in status, status
    assert smtp.handler.to("bea@example.com") == []
    await bot.say(SENDER, f"/contacts add cy@example.com --list customers {CONSENT}")  # joins while failed
    await bot.settle()
    reply = await bot.say(SENDER, "/automation resume welcome")
    assert "/automation submit welcome" in reply, reply  # the advice is the one that works
    await approve(bot, "welcome")  # the status's advice: submit it again
    await wait_for_mail(smtp, "bea@example.com")
    await bot.app.automations.scan()  # the scheduled scan (automations.scan_cron)
    await bot.settle()
    await wait_for_mail(smtp, "cy@example.com")  # caught up within automations.catch_up_days
    assert b"Hi there" in smtp.handler.to("cy@example.com")[0].data
    assert len(smtp.handler.to("ann@example.com")) == 1
    assert "running" in await bot.say(SENDER, "/automation status welcome")


async def test_the_report_counts_only_what_its_own_sends_caused(make_bot, smtp) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    from bot.addresses import email_hash
    from bot.db.models import Suppression

    bot = await make_bot()
    async with bot.app.ctx.sessions() as s, s.begin():  # Lena left long ago, through another campaign
        s.add(
            Suppression(
                email_hash=email_hash("lena@example.com"), email="lena@example.com", reason="unsubscribed"
            )
        )
    at(bot, datetime(2027, 1, 6, 9, 0, tzinfo=UTC))  # Lena's renewal reminder is due: she is suppressed
    await bot.say(SENDER, '/automation new renew --on "renewal_date - 14d" --template welcome --to customers')
    await approve(bot, "renew")
    await bot.app.automations.scan()
    await bot.settle()
    at(bot, datetime(2027, 1, 18, 9, 0, tzinfo=UTC))  # Raj's: sent, and he unsubscribes from it
    await bot.app.automations.scan()
    await bot.settle()
    await wait_for_mail(smtp, "raj@example.net")
    (raj,) = [d for d in await deliveries(bot, "renew") if d.email == "raj@example.net"]
    async with bot.app.ctx.sessions() as s, s.begin():
        s.add(
            Suppression(
                email_hash=email_hash("raj@example.net"),
                email="raj@example.net",
                reason="unsubscribed",
                campaign_id=raj.campaign_id,
                created_at=datetime(2027, 1, 18, 10, 0, tzinfo=UTC),
            )
        )
    report = await bot.say(SENDER, "/automation report renew")
    assert "1 recipient." in report and "sent 1," in report, report
    assert "unsubscribes 1 of 1 delivered (100.0%)" in report, report
    assert "not sent: suppressed" not in report
    assert "1 contact was suppressed already when its turn came: not mailed, not counted here." in report


async def test_an_unknown_trigger_or_date_attribute_is_refused_naming_the_closest(make_bot) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    bot = await make_bot()
    reply = await bot.say(SENDER, "/automation new hello --on joind --template welcome --to customers")
    assert "“joind” is not a trigger" in reply and "did you mean “joined”?" in reply, reply
    reply = await bot.say(
        SENDER, "/automation new a1 --on joind --template welcome"
    )  # no --to: the word first
    assert "“joind” is not a trigger" in reply and "did you mean “joined”?" in reply, reply
    reply = await bot.say(SENDER, "/automation new a2 --on joined_at --template welcome")  # a real attribute
    assert "needs --to" in reply, reply
    reply = await bot.say(
        SENDER, '/automation new renew --on "renewal_dat - 14d" --template welcome --to customers'
    )
    assert "No contact on “customers” has a date attribute “renewal_dat”" in reply, reply
    assert "did you mean “renewal_date”?" in reply, reply
    reply = await bot.say(SENDER, "/automation new x --on confirmd:customers --template welcome")
    assert "did you mean “confirmed:customers”?" in reply, reply
    async with bot.app.ctx.sessions() as s:
        assert (await s.execute(select(Automation))).first() is None
    assert "Draft automation" in await bot.say(
        SENDER, '/automation new renew --on "renewal_date - 14d" --template welcome --to customers'
    )


async def test_delete_takes_a_paused_or_draft_automation_away_and_keeps_its_history(make_bot, smtp) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    from bot.db.models import AuditEntry

    bot = await make_bot()
    await bot.say(SENDER, "/automation new welcome --on confirmed:customers --template welcome")
    await approve(bot, "welcome")
    await bot.say(SENDER, f"/contacts add ann@example.com --list customers {CONSENT}")
    await bot.settle()
    await wait_for_mail(smtp, "ann@example.com")
    reply = await bot.say(SENDER, "/automation delete welcome")
    assert "is running; /automation pause welcome first" in reply, reply
    await bot.say(SENDER, "/automation pause welcome")
    reply = await bot.say(SENDER, "/automation delete welcome")
    assert reply == "Deleted automation “welcome”; its 1 message sent and its report stay in the history.", (
        reply
    )
    assert "no automation" in (await bot.say(SENDER, "/automation status welcome")).lower()
    assert "welcome" not in await bot.say(SENDER, "/automation list")
    async with bot.app.ctx.sessions() as s:
        sent = (await s.execute(select(Delivery).where(Delivery.email == "ann@example.com"))).scalar_one()
        kept = await s.get(Campaign, sent.campaign_id)
        audit = (
            await s.execute(select(AuditEntry.action).where(AuditEntry.action == "automation.delete"))
        ).all()
    assert kept is not None and kept.state == "cancelled" and sent.status == "sent" and len(audit) == 1
    # The name is free again; a draft is deleted at once.
    assert "Draft automation" in await bot.say(
        SENDER, "/automation new welcome --on confirmed:customers --template welcome"
    )
    assert "Deleted automation “welcome”" in await bot.say(SENDER, "/automation delete welcome")
    assert "There is no automation" in await bot.say(SENDER, "/automation delete welcome")


async def test_one_thing_is_counted_in_the_singular(make_bot) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    from tests.conftest import ADMIN

    bot = await make_bot()
    shown = await bot.say(SENDER, "/contacts find lena")
    assert shown.startswith("1 contact matches"), shown
    listed = await bot.say(SENDER, "/lists")
    assert listed.startswith("1 contact list:"), listed
    assert "1 contacts" not in await bot.say(SENDER, "/segment new de customers --where \"country = 'DE'\"")
    reply = await bot.say(SENDER, "/segment new pros customers --where \"country = 'AT'\"")
    assert "matches 1 contact now" in reply, reply
    assert (await bot.say(SENDER, "/segment list")).startswith("2 segments:")
    reply = await bot.say(SENDER, "/campaign new spring --to pros --template welcome")
    assert "The segment matches 1 contact now" in reply, reply
    await bot.say(SENDER, "/automation new welcome --on confirmed:customers --template welcome")
    assert (await bot.say(SENDER, "/automation list")).startswith("1 automation:")
    assert "0 messages made today" in await bot.say(SENDER, "/automation status welcome")
    await bot.say(ADMIN, '/lists open partners --wording "Partner news, now and then."')
    await bot.say(SENDER, f"/contacts add zed@example.com --list partners {CONSENT}")
    listed = await bot.say(SENDER, "/lists")
    assert "partners — 1 member, 1 with consent" in listed, listed
    for text in (shown, listed):
        assert "1 contacts" not in text and "1 members" not in text


async def test_an_approved_automation_is_live(make_bot, smtp) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    """/approve automation:<name> says it is live and points to /automation status, not /campaign status."""
    bot = await make_bot()
    await bot.say(SENDER, "/automation new welcome --on joined --template welcome")
    assert "Submitted automation" in await bot.say(SENDER, "/automation submit welcome")
    reply = await bot.say(APPROVER, "/approve automation:welcome")
    assert "Approved automation “welcome”; it is live: it sends whenever its trigger fires." in reply, reply
    assert "/automation status welcome shows it." in reply and "/campaign status" not in reply, reply
    assert "sending has started" not in reply
