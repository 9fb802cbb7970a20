"""The usage review (/report usage): a seeded quarter of sends — group posts, campaigns, an automation, a
test send — with planted misuses, through the console adapter; the audit report's trends; bad input."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.header import Header

from sqlalchemy import func, select, update

from bot.contacts.importer import import_contacts
from bot.db.models import Automation, Campaign, Delivery, Group, GroupHealth, GroupPost, Membership
from bot.groups import posts
from bot.usage.digest import JOB_ID as DIGEST_JOB
from tests.conftest import APPROVER, HR, NOBODY, SENDER

NOW = datetime.now(UTC)

NEWSLETTER = b"""From: Marketing Team <marketing@corp.example>
To: partners@corp.example
Subject: Partner Newsletter - November edition
Message-ID: <nl-11@corp.example>
List-Unsubscribe: <https://mail.corp.example/u/abc>
Content-Type: text/plain; charset=utf-8

Our autumn offers for partners: https://shop.corp.example/deals?utm_source=newsletter&utm_medium=email

You receive this because you are on our partner list. Unsubscribe: https://mail.corp.example/u/abc
"""
SYNC = b"""From: Alice <alice@corp.example>
To: eng@corp.example
Subject: Sprint planning moved to Thursday
Message-ID: <sync-1@corp.example>

Same room, see https://wiki.corp.example/sprint for the agenda.
"""
CLOSED = b"""From: Hannah <hannah@corp.example>
To: all-staff@corp.example
Subject: Office closed for the holiday on Friday
Message-ID: <closed-1@corp.example>

Enjoy the long weekend.
"""
DIGEST = b"""From: Bob <bob@corp.example>
To: eng@corp.example
Subject: Fwd: This Week in Rust - weekly digest
Message-ID: <fwd-1@corp.example>

Forwarded for the team.
To unsubscribe from this newsletter, click here.
"""
VENDORS = b"""From: Dana <dana@corp.example>
To: vendors@corp.example
Subject: Delivery dates for the December order
Message-ID: <vendors-1@corp.example>

Please confirm by Monday.
"""
CUSTOMERS = """email,name,consent_at,consent_source
lena@example.com,Lena Fischer,2026-03-02T10:15:00+00:00,signup form
raj@example.net,Raj Patel,2026-04-11T08:00:00+00:00,trade fair
"""


async def external_group(bot, name: str, members: list[tuple[str, int]]) -> None:  # type: ignore[no-untyped-def]
    """A group that may have external members, each added `days` ago (as the rules would have made it)."""
    async with bot.core.ctx.sessions() as s, s.begin():
        group = Group(
            address=f"{name}@corp.example",
            local_part=name,
            kind="external-allowed",
            owners=[HR],
            created_by=HR,
        )
        s.add(group)
        await s.flush()
        for email, days in members:
            s.add(
                Membership(
                    group_id=group.id, email=email, source="manual", added_at=NOW - timedelta(days=days)
                )
            )


async def post(bot, address: str, raw: bytes, days_ago: int) -> int:  # type: ignore[no-untyped-def]
    """A post in the post log as the relay writes it (the same inspection), delivered `days_ago`."""
    async with bot.core.ctx.sessions() as s, s.begin():
        group = (await s.execute(select(Group).where(Group.address == address))).scalar_one()
        seen = posts.inspect(raw, 65536)
        stored = await posts.add_post(
            s,
            group,
            via="relay",
            state="delivered",
            sender=seen.author_address or "",
            data=None,
            inspected=seen,
            key=None,
            now=NOW - timedelta(days=days_ago),
            size=len(raw),
        )
        await posts.snapshot_members(s, stored)
        return stored.id


async def campaign(bot, tmp_path, name: str, to: str, subject: str, csv: str = "") -> None:  # type: ignore[no-untyped-def]
    if csv:
        path = tmp_path / f"{name}.csv"
        path.write_text(csv)
        await import_contacts(bot.core.ctx, path, to)
    reply = await bot.say(SENDER, f'/campaign new {name} --to {to} --template welcome --subject "{subject}"')
    assert "Draft campaign" in reply, reply
    assert "Submitted" in await bot.say(SENDER, f"/campaign submit {name}")
    assert "Approved" in await bot.say(APPROVER, f"/approve {name}")
    await bot.settle()


async def automation(bot) -> None:  # type: ignore[no-untyped-def]
    """An onboarding automation that mailed two joiners last month."""
    async with bot.core.ctx.sessions() as s, s.begin():
        c = Campaign(
            name="welcome-joiners",
            kind="automation",
            state="active",
            template="welcome",
            subject="Welcome to Example Corp",
            audience_kind="joiners",
            audience_name="joiners",
            from_address="news@corp.example",
            created_by=SENDER,
        )
        s.add(c)
        await s.flush()
        s.add(Automation(name="welcome-joiners", campaign_id=c.id, trigger="joined", created_by=SENDER))
        for email in ("erin@corp.example", "frank@corp.example"):
            s.add(Delivery(campaign_id=c.id, email=email, status="sent", sent_at=NOW - timedelta(days=30)))


async def seeded_quarter(bot, tmp_path) -> dict[str, int]:  # type: ignore[no-untyped-def]
    await bot.say(HR, "/newgroup eng")
    await bot.say(HR, "/addgroup eng alice@corp.example bob@corp.example carl@corp.example")
    await bot.say(HR, "/newgroup all-staff")
    await bot.say(
        HR, "/addgroup all-staff alice@corp.example bob@corp.example dana@corp.example erin@corp.example"
    )
    # partners: external members keep joining (one before the quarter, three during it).
    await external_group(
        bot,
        "partners",
        [
            ("dana@corp.example", 300),
            ("pia@partner.example", 120),
            ("quinn@agency.example", 80),
            ("ravi@partner.example", 50),
            ("sol@reseller.example", 20),
        ],
    )
    # vendors: the same two external people all quarter (not growing).
    await external_group(bot, "vendors", [("dana@corp.example", 400), ("ops@supplier.example", 400)])
    ids = {
        "newsletter": await post(bot, "partners@corp.example", NEWSLETTER, 10),  # planted
        "sync": await post(bot, "eng@corp.example", SYNC, 40),
        "closed": await post(bot, "all-staff@corp.example", CLOSED, 60),
        "digest": await post(bot, "eng@corp.example", DIGEST, 15),  # a forwarded newsletter, colleagues only
        "vendors": await post(bot, "vendors@corp.example", VENDORS, 5),
    }
    await campaign(
        bot, tmp_path, "spring", "spring-list", "Spring offers: 20% off", CUSTOMERS
    )  # clean: consented
    # planted: a campaign whose whole audience is company addresses
    await campaign(bot, tmp_path, "allhands", "all-staff@corp.example", "All-hands on Friday")
    assert "[TEST]" in await bot.say(SENDER, "/campaign test spring sam@corp.example")
    await automation(bot)
    return ids


def field(reply: str, title: str) -> str:
    """One card field's text as the console shows it (up to the next field)."""
    start = reply.index(title)
    rest = reply[start + len(title) :]
    ends = [
        rest.find(t)
        for t in ("How to fix", "Sends and why", "Group health (/audit)", "By kind")
        if rest.find(t) > 0
    ]
    return rest[: min(ends)] if ends else rest


async def test_the_usage_review_finds_each_planted_misuse_and_no_clean_send(bot, tmp_path) -> None:  # type: ignore[no-untyped-def]
    ids = await seeded_quarter(bot, tmp_path)
    reply = await bot.say(HR, "/report usage")
    assert "Usage review" in reply and "3 to look at" in reply, reply
    misuse = field(reply, "Possible misuse (3)")
    # 1. the newsletter to an email group with external members: its evidence.
    assert (
        f"Marketing-like mail posted to an email group — post #{ids['newsletter']} to partners@corp.example"
        in misuse
    )
    assert "an unsubscribe footer or List-Unsubscribe header; tracking links; 4 external recipients" in misuse
    assert "pia@partner.example" in misuse
    fixes = field(reply, "How to fix")
    assert (
        "Marketing-like mail posted to an email group: Move this audience to a contact list with consent"
        in fixes
    )
    # 2. the campaign whose whole audience is company addresses.
    assert "An internal-only audience reached through a campaign — campaign allhands" in misuse
    assert "all 4 recipients are company addresses (corp.example)" in misuse
    assert (
        "An internal-only audience reached through a campaign: Internal news belongs in an email group"
        in fixes
    )
    # 3. the group whose external members grew.
    assert "A group whose external members keep growing — group partners@corp.example" in misuse
    assert "external members 1 → 2 → 3 → 4 over the period (+3)" in misuse
    assert "sol@reseller.example" in misuse and "turn the group internal" in fixes
    # None of the clean sends is flagged.
    clean_sends = (
        "spring",
        "vendors@",
        "eng@",
        "welcome-joiners",
        *(f"#{ids[k]}" for k in ("sync", "closed", "digest")),
    )
    for clean in clean_sends:
        assert clean not in misuse, clean
    # Every send is categorised, with its reasons.
    why = field(reply, "Sends and why")
    assert (
        "marketing campaign (a campaign to the contact list spring-list; the subject reads like an offer"
        in why
    )
    assert "lifecycle mail (an automation (trigger: joined))" in why
    assert "team coordination (a post to eng@corp.example, 3 recipients; no unsubscribe footer" in why
    assert "internal announcement (the subject reads like an announcement (“Office closed”" in why or (
        "internal announcement (the subject reads like an announcement" in why
    )
    assert "newsletter (the subject reads like a newsletter" in why
    uses = field(reply, "By use case")
    assert "lifecycle mail — sends: 1, recipients: 2" in uses and "newsletter — sends: 2," in uses
    assert "group post 5, campaign 2, automation 1" in reply
    # The review links to the group health report.
    assert "Group health (/audit)" in reply and "/audit has the details" in reply

    # One group only: its posts, its growth.
    reply = await bot.say(HR, "/report usage --group vendors --months 1")
    assert "for vendors@corp.example" in reply and "nothing looks misused" in reply, reply
    assert "Delivery dates" in reply and "Partner Newsletter" not in reply


async def test_the_audit_report_shows_the_change_since_the_last_audit(bot) -> None:  # type: ignore[no-untyped-def]
    await bot.say(HR, "/newgroup eng")
    await bot.say(HR, "/addgroup eng alice@corp.example")
    await external_group(bot, "partners", [("pia@partner.example", 30)])
    reply = await bot.say(HR, "/audit")
    assert "Change since the last audit: No earlier audit to compare with" in reply
    async with bot.core.ctx.sessions() as s, s.begin():  # that audit was last week's
        await s.execute(update(GroupHealth).values(taken_at=NOW - timedelta(days=7)))
    await bot.say(HR, "/addgroup eng bob@corp.example")
    async with bot.core.ctx.sessions() as s, s.begin():
        gid = (await s.execute(select(Group.id).where(Group.local_part == "partners"))).scalar_one()
        s.add(Membership(group_id=gid, email="quinn@agency.example", source="manual"))
    await bot.say(HR, "/newgroup quiet")
    reply = await bot.say(HR, "/audit")
    week = f"{NOW - timedelta(days=7):%Y-%m-%d}"
    assert (
        f"Since {week}: members 2 → 4 (+2), external members 1 → 2 (+1), empty groups 0 → 1 (+1), "
        "groups with no owner 1 → 2 (+1)" in reply
    ), reply
    await bot.say(HR, "/audit")  # again today: today's counts replace today's earlier ones
    async with bot.core.ctx.sessions() as s:
        assert (await s.execute(select(func.count()).select_from(GroupHealth))).scalar_one() == 2
    # The usage review links to it with the same trend.
    assert f"Since {week}: members 2 → 4 (+2)" in await bot.say(HR, "/report usage")


async def test_bad_input_gets_one_sentence_and_changes_nothing(bot) -> None:  # type: ignore[no-untyped-def]
    await bot.say(HR, "/newgroup eng")
    for text, expected in (
        ("/report usage --months 0", "Give a number of months from 1 to 24 (not “0”)."),
        ("/report usage --months 999", "Give a number of months from 1 to 24 (not “999”)."),
        ("/report usage --months three", "Give a number of months from 1 to 24 (not “three”)."),
        ("/report usage --months -2", "Give a number of months from 1 to 24"),
        ("/report usage --group nosuch", "There is no group “nosuch”."),
    ):
        reply = await bot.say(HR, text)
        assert expected in reply and "Traceback" not in reply, (text, reply)
    assert "Usage: /report usage [--months <months>] [--group <group>]" in await bot.say(
        HR, "/report usage --months 0"
    )
    refused = await bot.say(NOBODY, "/report usage")
    assert "/report usage is for HR or admins;" in refused and "Usage review" not in refused
    async with bot.core.ctx.sessions() as s:
        assert (await s.execute(select(func.count()).select_from(GroupHealth))).scalar_one() == 0


async def test_the_digest_goes_to_hr_when_scheduled(bot, tmp_path) -> None:  # type: ignore[no-untyped-def]
    bot.app.schedule_group_jobs()
    assert bot.app.scheduler.next_run(DIGEST_JOB) is None  # off by default
    bot.app.ctx.settings.reports.usage_digest = "weekly"
    bot.app.schedule_group_jobs()
    nxt = bot.app.scheduler.next_run(DIGEST_JOB)
    assert nxt is not None and nxt.weekday() == 0 and nxt.hour == 8
    await bot.say(HR, "/newgroup eng")
    await bot.say(HR, "/addgroup eng alice@corp.example")
    await post(bot, "eng@corp.example", SYNC, 3)
    await post(bot, "eng@corp.example", CLOSED, 20)  # before the week: not in the weekly digest
    await bot.app.scheduler.run_now(DIGEST_JOB)
    sent = [m for _kind, conv, m in bot.console.transcript if conv == "hr" and "Usage review" in m.text]
    assert sent and "1 send to 1 recipient;" in sent[-1].text and "Sprint planning" in str(sent[-1].card), [
        m.text for _k, _c, m in bot.console.transcript
    ]
    bot.app.ctx.settings.reports.usage_digest = "off"
    bot.app.schedule_group_jobs()
    assert bot.app.scheduler.next_run(DIGEST_JOB) is None


def test_the_post_log_tells_tracking_links_from_plain_links() -> None:
    assert posts.inspect(NEWSLETTER, 65536).has_tracking  # utm_ parameters
    assert not posts.inspect(SYNC, 65536).has_tracking  # a plain link to the wiki
    html = (
        b"From: a@corp.example\r\nSubject: x\r\nContent-Type: text/html\r\n\r\n"
        b'<a href="https://click.mailer.example/ls/click?upn=abc">Read</a>'
    )
    assert posts.inspect(html, 65536).has_tracking  # a mailing service's click redirect


async def test_a_marketing_like_post_in_bulk_is_flagged_without_external_members(bot) -> None:  # type: ignore[no-untyped-def]
    bot.app.ctx.settings.reports.bulk_recipients = 3
    await bot.say(HR, "/newgroup all-staff")
    await bot.say(HR, "/addgroup all-staff alice@corp.example bob@corp.example carl@corp.example")
    await bot.say(HR, "/newgroup eng")
    await bot.say(HR, "/addgroup eng alice@corp.example bob@corp.example")
    big = await post(bot, "all-staff@corp.example", NEWSLETTER.replace(b"partners@", b"all-staff@"), 3)
    small = await post(bot, "eng@corp.example", DIGEST, 3)
    pasted = await post(bot, "eng@corp.example", SYNC.replace(b"/sprint ", b"/sprint?utm_source=slack "), 2)
    reply = await bot.say(HR, "/report usage --months 1")
    # A colleague's one link with utm_ parameters to the team: no tracking links, team coordination.
    assert (
        f"#{pasted} “Sprint planning moved to Thursday”: team coordination "
        "(a post to eng@corp.example, 2 recipients; no unsubscribe footer, no tracking links; company "
        "recipients only)" in reply
    ), reply
    misuse = field(reply, "Possible misuse (1)")
    assert f"post #{big} to all-staff@corp.example" in misuse, reply
    assert "bulk: 3 recipients (reports.bulk_recipients is 3)" in misuse and f"#{small}" not in misuse


async def test_the_review_answers_in_chinese(bot) -> None:  # type: ignore[no-untyped-def]
    await bot.say(HR, "/newgroup eng")
    await bot.say(HR, "/addgroup eng alice@corp.example")
    await post(bot, "eng@corp.example", SYNC, 3)
    bot.console.locale = "zh_CN"
    reply = await bot.say(HR, "/report usage")
    assert "使用情况审查" in reply and "团队协作" in reply and "未发现误用" in reply, reply
    assert "请给出 1 到 24 之间的月数（不是“0”）。" in await bot.say(HR, "/report usage --months 0")


async def test_an_empty_period_and_a_post_log_shorter_than_the_period_say_so(bot) -> None:  # type: ignore[no-untyped-def]
    reply = await bot.say(HR, "/report usage --months 6")
    assert "nothing was sent in this period." in reply.splitlines()[0], reply
    start = f"{NOW - timedelta(days=180):%Y-%m-%d}"
    assert (
        f"The post log keeps 180 days (relay.post_retention_days): posts before {start} are not counted."
        in reply
    )
    assert "posts before" not in await bot.say(HR, "/report usage --months 3")


def test_every_card_field_fits_a_slack_field_and_says_how_many_more() -> None:
    from bot.usage.classify import Send, classify
    from bot.usage.review import Review

    review = Review(NOW - timedelta(days=90), NOW, None)
    for i in range(300):
        send = Send(
            kind="post",
            ref=f"#{i}",
            at=NOW - timedelta(hours=i),
            target="partners@corp.example",
            subject=f"Partner newsletter no. {i} with a rather long subject line to fill the card",
            recipients=400,
            external=120,
            has_unsubscribe=True,
            has_tracking=True,
            example_external=("pia@partner.example", "quinn@agency.example", "ravi@partner.example"),
        )
        review.items.append((send, classify(send, domains="corp.example", bulk=100)))
    card = review.message().card
    assert card is not None
    for name, value in card.fields:
        assert len(name) + len(value) < 2000, (name, len(value))
    fields = dict(card.fields)
    assert "300 to look at" in review.message().text
    assert fields["Possible misuse (300)"].splitlines()[-1].startswith("… and ")
    assert fields["Sends and why"].splitlines()[-1].startswith("… and ")


async def test_a_post_through_the_relay_records_its_tracking_links_for_the_review(  # type: ignore[no-untyped-def]
    database_url, smtp, tmp_path
) -> None:
    from tests.group_mail_kit import fanned_out
    from tests.test_group_posts import mail, running
    from tests.test_group_posts import post as send_post

    async for bot, port in running(database_url, smtp.port, tmp_path):
        body = (
            "Read it: https://news.corp.example/a?utm_source=digest&utm_medium=email\n\nUnsubscribe here.\n"
        )
        data = mail("alice@corp.example", "eng@corp.example", subject="Engineering weekly digest", body=body)
        assert "accepted" in await send_post(port, "alice@corp.example", "eng@corp.example", data)
        await fanned_out(bot.app)
        async with bot.app.ctx.sessions() as s:
            logged = (await s.execute(select(GroupPost))).scalar_one()
        assert logged.has_tracking_links and logged.has_unsubscribe
        reply = await bot.say(HR, "/report usage --months 1")
        assert (
            f"#{logged.id} “Engineering weekly digest”: newsletter (the subject reads like a newsletter (“weekly”); "
            "an unsubscribe footer or List-Unsubscribe header; tracking links; company recipients only)"
            in reply
        ), reply
        assert "nothing looks misused" in reply  # colleagues only, not in bulk


def test_the_chinese_catalog_calls_a_postroom_campaign_qunfa_and_keeps_yingxiao_for_the_use_case() -> None:
    import json
    import re
    from pathlib import Path

    catalog = json.loads((Path(__file__).parents[1] / "bot/locale/zh_CN/usage.json").read_text())
    for english, chinese in catalog.items():
        if re.search(r"\bcampaigns?\b", english, re.I) and "marketing campaign" not in english:
            assert "营销活动" not in chinese and "群发活动" in chinese, (english, chinese)
    assert catalog["marketing campaign"] == "营销活动"
    for english, chinese in catalog.items():
        assert ", " not in chinese and "; " not in chinese, (english, chinese)


async def test_the_chinese_review_uses_chinese_punctuation(bot, tmp_path) -> None:  # type: ignore[no-untyped-def]
    await seeded_quarter(bot, tmp_path)
    await bot.say(HR, "/audit")
    bot.console.locale = "zh_CN"
    reply = await bot.say(HR, "/report usage")
    assert "群发活动 allhands" in reply and "营销活动（" in reply, reply  # the Postroom thing; the use case
    body = reply.replace("reports.bulk_recipients", "")
    assert ", " not in body and "; " not in body, reply
    assert "。 " not in reply and "个无负责人。没有更早的审计" in reply, reply  # no space between sentences
    assert "发到邮件组的营销类邮件：把这些收件人" in reply, reply
    assert "4 位外部收件人（" in reply, reply


async def test_the_first_audit_says_a_later_day_shows_the_change_and_sentences_end_in_full_stops(bot) -> None:  # type: ignore[no-untyped-def]
    await bot.say(HR, "/newgroup eng")
    await bot.say(HR, "/addgroup eng alice@corp.example")
    first = await bot.say(HR, "/audit")
    assert "No earlier audit to compare with; the first audit on a later day shows the change." in first
    again = await bot.say(HR, "/audit")  # the same day: still nothing to compare with, and it says why
    assert "the first audit on a later day shows the change." in again and "the next one" not in again
    async with bot.core.ctx.sessions() as s, s.begin():
        await s.execute(update(GroupHealth).values(taken_at=NOW - timedelta(days=7)))
    review = await bot.say(HR, "/report usage")
    assert "(±0). /audit has the details." in review, review


async def test_one_groups_review_shows_that_groups_health_and_trend(bot, tmp_path) -> None:  # type: ignore[no-untyped-def]
    await seeded_quarter(bot, tmp_path)
    reply = await bot.say(HR, "/report usage --group partners")
    health = field(reply, "Group health (/audit)")
    since = f"{NOW - timedelta(days=92):%Y-%m}"  # the period's start, three calendar months back
    assert "partners@corp.example: members 5, external members 4." in health, health
    assert "members 2 → 5 (+3), external members 1 → 4 (+3)." in health and f"Since {since}" in health, health
    assert "groups," not in health and "/audit has the details." in health  # not the company's counts
    whole = field(await bot.say(HR, "/report usage"), "Group health (/audit)")
    assert "4 groups, 14 members" in whole


async def test_the_consent_fix_asks_an_admin_to_open_the_list_when_the_reader_is_not_one(
    bot, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import ADMIN

    await seeded_quarter(bot, tmp_path)
    hr = field(await bot.say(HR, "/report usage"), "How to fix")
    assert "ask an admin to run /lists open <list>, which gives it a signup page" in hr, hr
    assert "(/lists open <list> gives it a signup page)" not in hr
    admin = field(await bot.say(ADMIN, "/report usage"), "How to fix")
    assert "(/lists open <list> gives it a signup page)" in admin and "ask an admin" not in admin, admin


BLACK_FRIDAY = b"""From: Sam <sam@corp.example>
To: vendors@corp.example
Subject: Black Friday: 50% off every licence, buy before Sunday
Message-ID: <bf-1@corp.example>

Our biggest sale of the year: https://bit.ly/3xYzAbc

Reply STOP if you'd rather not hear from us.
"""


async def test_a_plain_marketing_post_to_external_members_is_flagged_with_its_evidence(bot) -> None:  # type: ignore[no-untyped-def]
    """An offer in the subject, a link shortener and "reply STOP": marketing, flagged (issue 15)."""
    seen = posts.inspect(BLACK_FRIDAY, 65536)
    assert seen.has_tracking and seen.has_unsubscribe  # bit.ly counts clicks; "Reply STOP" is an opt-out
    await external_group(
        bot, "vendors", [("dana@corp.example", 40), ("ops@supplier.example", 40), ("li@buyer.example", 40)]
    )
    bf = await post(bot, "vendors@corp.example", BLACK_FRIDAY, 2)
    reply = await bot.say(HR, "/report usage --months 1")
    assert f"#{bf} “Black Friday: 50% off every licence, buy before Sunday”: marketing" in reply, reply
    misuse = field(reply, "Possible misuse (1)")
    assert f"post #{bf} to vendors@corp.example" in misuse, reply
    assert "the subject reads like an offer (“50% off”)" in misuse and "2 external recipients" in misuse
    assert "tracking links" in misuse and "an unsubscribe footer" in misuse


async def test_the_review_counts_external_recipients_by_the_one_company_address_rule(bot) -> None:  # type: ignore[no-untyped-def]
    """A routed local part (the percent hack) and an unlisted subdomain are not company addresses
    (config.internal_address): the review counts them as external, as the guard and the snapshot do."""
    await external_group(
        bot,
        "vendors",
        [("dana@corp.example", 40), ("ops%supplier.example@corp.example", 40), ("li@eu.corp.example", 40)],
    )
    bf = await post(bot, "vendors@corp.example", BLACK_FRIDAY, 2)
    misuse = field(await bot.say(HR, "/report usage --months 1"), "Possible misuse (1)")
    assert f"post #{bf} to vendors@corp.example" in misuse and "2 external recipients" in misuse, misuse


async def test_an_offer_alone_to_external_members_is_flagged(bot) -> None:  # type: ignore[no-untyped-def]
    await external_group(bot, "vendors", [("dana@corp.example", 40), ("ops@supplier.example", 40)])
    subject = Header("限时优惠：全场八折", "utf-8").encode().encode()
    raw = b"From: Sam <sam@corp.example>\nTo: vendors@corp.example\nSubject: " + subject + b"\n\nhi\n"
    offer = await post(bot, "vendors@corp.example", raw, 2)
    team = await post(bot, "vendors@corp.example", VENDORS, 2)
    reply = await bot.say(HR, "/report usage --months 1")
    misuse = field(reply, "Possible misuse (1)")
    assert f"post #{offer} to vendors@corp.example" in misuse and "(“限时”)" in misuse, reply
    assert f"#{team} “Delivery dates for the December order”: team coordination" in reply


INTEGRATION = b"""From: Sam <sam@corp.example>
To: vendors@corp.example
Subject: Re: integration question
Message-ID: <re-1@corp.example>

The thread I mentioned: https://forum.example.org/t/42?utm_source=twitter

If you want to opt out of the beta, just tell me.

Sam
"""


async def test_a_reply_with_one_pasted_utm_link_and_opt_out_words_is_not_marketing(bot) -> None:  # type: ignore[no-untyped-def]
    """Issue 15: a clean reply to external members was flagged as marketing."""
    seen = posts.inspect(INTEGRATION, 65536)
    assert not seen.has_tracking and not seen.has_unsubscribe
    footer = INTEGRATION.replace(b"just tell me.", b"opt out here: https://beta.corp.example/leave")
    assert posts.inspect(footer, 65536).has_unsubscribe  # opt-out wording with a link, at the end
    two = INTEGRATION.replace(b"\n\nIf", b" and https://forum.example.org/t/43?utm_source=x\n\nIf")
    assert posts.inspect(two, 65536).has_tracking  # two tagged links: a campaign's
    await external_group(bot, "vendors", [("dana@corp.example", 40), ("ops@supplier.example", 40)])
    clean = await post(bot, "vendors@corp.example", INTEGRATION, 2)
    offer = INTEGRATION.replace(b"Re: integration question", b"Re: your 20% off offer")
    replied = await post(bot, "vendors@corp.example", offer.replace(b"<re-1@", b"<re-2@"), 2)
    reply = await bot.say(HR, "/report usage --months 1")
    assert f"#{clean} “Re: integration question”: team coordination" in reply, reply
    assert f"#{replied} “Re: your 20% off offer”: team coordination" in reply, reply
    assert "Possible misuse (0)" in reply and "nothing looks misused" in reply


def inspected_link(url: str) -> bool:
    raw = f"From: a@corp.example\r\nSubject: x\r\n\r\nSee {url}\r\n".encode()
    return posts.inspect(raw, 65536).has_tracking


def test_a_mailing_service_click_host_is_a_tracking_link_and_a_parcel_tracking_page_is_not() -> None:
    """The host-label alternative of TRACKING could never match after https:// (issue 15)."""
    for url in (
        "https://click.mailer.example/abc",
        "https://track.customer.io/x",
        "https://clicks.shop.example/r/1",
        "http://trk.mailer.example/c?u=2",
        "https://email.mg.example/c/3",
        "https://links.news.example/s/4",
    ):
        assert inspected_link(url), url
    for url in (
        "https://tracking.dhl.example/x",  # a parcel's tracking page: no marketing
        "https://click.example/about",  # a site called click.example, not a click host
        "https://wiki.corp.example/track/me",
        "https://docs.example.org/email.html",
    ):
        assert not inspected_link(url), url
