"""`/campaign report` reads well: rates with their denominators, benchmarks only once they mean
something, clicks per link, bounces by class; a chart whose data (checked here, apart from drawing) has
whole-number count axes, a time axis that fits the send, every series, and honest empty states; CJK
labels in Chinese; the signed, expiring report page."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from pathlib import Path

from fontTools.ttLib import TTFont
from sqlalchemy import select

from bot import i18n
from bot.campaigns.report import (
    FONT,
    Figures,
    bounce_class,
    build_report,
    chart_data,
    draw,
    integer_ticks,
    steps,
)
from bot.contacts.importer import import_contacts
from bot.db.models import Campaign
from tests.audience_kit import web
from tests.conftest import APPROVER, SENDER

T0 = datetime(2026, 12, 3, 7, 0, 0)
CSV = "email,name,consent_at,consent_source\n" + "".join(
    f"{who}@example.com,{who.title()} Doe,2026-03-02T10:15:00+00:00,signup form\n"
    for who in ("ana", "ben", "cho", "dev")
)


def demo_like(**overrides: object) -> Figures:
    """A 4-recipient campaign sent in 0.2 s and reported 25 s later: two opened, one of them clicked."""
    values: dict[str, object] = {
        "campaign": "spring",
        "state": "completed",
        "recipients": 4,
        "sent": 4,
        "delivered": 4,
        "opens": 2,
        "clicks": 1,
        "statuses": {"sent": 4},
        "started_at": T0,
        "finished_at": T0 + timedelta(seconds=0.2),
        "now": T0 + timedelta(seconds=25),
        "sent_steps": steps([T0 + timedelta(seconds=0.05 * i) for i in range(1, 5)]),
        "open_steps": steps([T0 + timedelta(seconds=8), T0 + timedelta(seconds=12)]),
        "click_steps": steps([T0 + timedelta(seconds=12)]),
    }
    values.update(overrides)
    return Figures(**values)  # type: ignore[arg-type]


def series(panel, key):  # type: ignore[no-untyped-def]
    return next(s for s in panel.series if s.key == key)


def test_a_small_fast_send_gets_a_fitting_time_axis_whole_number_counts_and_every_series() -> None:
    data = chart_data(demo_like())
    assert data.unit == "seconds" and data.x_max == 60.0  # the minimum span, not a spike at 0.18 s
    assert "seconds since the send started (2026-12-03 07:00:00 UTC)" == data.x_label
    delivery, engagement = data.panels
    assert delivery.empty is None and engagement.empty is None
    assert [s.key for s in delivery.series] == ["sent", "bounced", "unsubscribed", "complained"]
    assert [s.key for s in engagement.series] == ["opened", "clicked"]
    assert delivery.y_ticks == (0, 1, 2, 3, 4) and engagement.y_ticks == (0, 1, 2)
    for panel in data.panels:
        assert all(isinstance(y, int) for y in panel.y_ticks)
        for s in panel.series:
            assert all(isinstance(y, int) for y in s.ys)
            assert s.xs[0] == 0.0 and s.xs[-1] == data.now_x  # every line runs to "now", not beyond
            assert s.ys[-1] == s.total and f"({s.total})" in s.label
    sent = series(delivery, "sent")
    assert sent.total == 4 and max(x for x, _ in sent.marks) < 1  # all four went out in the first second
    opened, clicked = series(engagement, "opened"), series(engagement, "clicked")
    assert (opened.colour, opened.marker, opened.linestyle) != (
        clicked.colour,
        clicked.marker,
        clicked.linestyle,
    )
    assert (
        opened.linewidth > clicked.linewidth and clicked.zorder > opened.zorder
    )  # clicked drawn over, thinner
    assert [y for _, y in opened.marks] == [1, 2] and [y for _, y in clicked.marks] == [1]
    assert series(delivery, "bounced").total == 0 and series(delivery, "bounced").label == "bounced (0)"


def test_a_large_send_gets_a_few_markers_not_one_per_recipient() -> None:
    many = [T0 + timedelta(seconds=i) for i in range(5000)]
    sent = series(chart_data(demo_like(sent=5000, delivered=5000, sent_steps=steps(many))).panels[0], "sent")
    assert sent.total == 5000 and len(sent.ys) == 5002 and len(sent.marks) <= 41
    assert sent.marks[-1] == (sent.xs[-2], 5000)  # the last count is marked


def test_the_time_axis_follows_the_campaign_duration() -> None:
    long = demo_like(now=T0 + timedelta(hours=5))
    assert chart_data(long).unit == "hours" and chart_data(long).x_max == 5.0
    assert chart_data(demo_like(now=T0 + timedelta(minutes=30))).unit == "minutes"
    assert chart_data(demo_like(now=T0 + timedelta(days=9))).unit == "days"


def test_integer_ticks_stay_whole_and_few() -> None:
    assert integer_ticks(0) == (0, 1)
    assert integer_ticks(4) == (0, 1, 2, 3, 4)
    assert integer_ticks(7) == (0, 2, 4, 6, 8)
    big = integer_ticks(1234)
    assert big[-1] >= 1234 and len(big) <= 6 and all(isinstance(x, int) for x in big)


def test_everything_bounced_is_not_nothing_sent() -> None:
    refused = [T0 + timedelta(seconds=0.1 * i) for i in range(1, 5)]
    figures = demo_like(
        sent=0,
        delivered=0,
        opens=0,
        clicks=0,
        hard_bounces=4,
        statuses={"bounced": 4},
        sent_steps=steps([]),
        open_steps=steps([]),
        click_steps=steps([]),
        bounce_steps=steps(refused),
        bounce_classes={("hard", "address"): 4},
    )
    delivery, engagement = chart_data(figures).panels
    assert delivery.empty is None and delivery.note == "Every message bounced: nothing was delivered."
    assert series(delivery, "bounced").total == 4 and series(delivery, "sent").total == 0
    assert engagement.empty == "Nothing was delivered, so nothing could be opened or clicked."
    text = figures.text()
    assert "hard bounces 4 of 4 attempts (100.0%)" in text
    assert "bounces by class: hard: unknown or bad address 4" in text
    assert "Nothing was sent" not in text


def test_nothing_sent_yet_and_tracking_off_say_so() -> None:
    waiting = demo_like(
        state="sending", sent=0, delivered=0, opens=0, clicks=0, statuses={"pending": 4},
        sent_steps=steps([]), open_steps=steps([]), click_steps=steps([]),
    )  # fmt: skip
    delivery, engagement = chart_data(waiting).panels
    assert delivery.empty == "Sending has started; nothing has gone out yet." and not delivery.series
    assert engagement.empty == "Nothing was delivered yet."
    untracked = chart_data(demo_like(tracking=False)).panels[1]
    assert untracked.empty == "Opens and clicks are not tracked."
    quiet = chart_data(demo_like(opens=0, clicks=0, open_steps=steps([]), click_steps=steps([]))).panels[1]
    assert quiet.empty is None and quiet.note == "No opens or clicks recorded yet."
    assert [s.total for s in quiet.series] == [0, 0]  # still drawn, and in the legend


def test_benchmarks_wait_for_time_and_volume_then_compare() -> None:
    early = demo_like().text()
    assert "Benchmarks (20% opens, 3% clicks) not compared yet" in early
    assert "4 delivered is fewer than 100" in early and "compare after 2026-12-05 07:00 UTC" in early
    assert "above the common 20% benchmark" not in early
    assert "opens 2 of 4 delivered (50.0%); clicks 1 of 4 delivered (25.0% click-through)" in early
    assert "1 of 2 openers clicked (50.0%)" in early
    assert "Apple Mail Privacy Protection" in early
    settled = demo_like(delivered=400, sent=400, opens=100, clicks=8, now=T0 + timedelta(days=3)).text()
    assert (
        "Benchmarks: opens 25.0% — above the common 20% benchmark; clicks 2.0% — below the common 3% benchmark."
        in settled
    )
    sending = demo_like(state="sending", delivered=400, sent=400, now=T0 + timedelta(days=3)).text()
    assert "the send has not ended" in sending


def test_bounce_classes_come_from_the_enhanced_status() -> None:
    assert bounce_class("hard", "550 5.1.1 user unknown") == "address"
    assert bounce_class("soft", "4.2.2 mailbox full") == "mailbox"
    assert bounce_class("hard", "554 5.7.1 blocked as spam") == "policy"
    assert bounce_class("hard", "no code here") == "other"


def test_chinese_labels_and_the_bundled_font_has_their_glyphs(tmp_path: Path) -> None:
    with i18n.using("zh_CN"):
        data = chart_data(demo_like(campaign="春季促销"))
    words = [data.title, data.x_label] + [
        w for p in data.panels for w in (p.title, p.ylabel, *(s.label for s in p.series))
    ]
    assert "已打开 (2)" in words and "投递" in words
    cmap = TTFont(FONT).getBestCmap()
    missing = {c for w in words for c in w if ord(c) > 0x2E7F and ord(c) not in cmap}
    assert not missing, f"the bundled font lacks {missing}"
    path = tmp_path / "zh.png"
    draw(data, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


async def test_a_four_recipient_campaign_report_has_its_chart_links_and_page(bot, smtp, tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "contacts.csv"
    path.write_text(CSV)
    await import_contacts(bot.core.ctx, path, "customers")
    await bot.say(SENDER, "/campaign new spring --to customers --template welcome")
    await bot.say(SENDER, "/campaign submit spring")
    assert "Approved" in await bot.say(APPROVER, "/approve spring")
    await bot.settle()
    assert len(smtp.messages) == 4
    html = smtp.handler.to("ana@example.com")[0].message.get_body(("html",)).get_content()
    pixel = re.search(r'src="http://127\.0\.0\.1:8080(/o/[^"]+)"', html).group(1)  # type: ignore[union-attr]
    click = re.search(r'href="http://127\.0\.0\.1:8080(/c/[^"]+)"', html).group(1)  # type: ignore[union-attr]
    async with web(bot) as client:
        assert (await client.get(pixel)).status_code == 200
        assert (await client.get(click)).status_code == 302
        assert (await client.get(click)).status_code == 302  # the same person twice: 1 person, 2 clicks

        bot.console.as_email = SENDER
        reply = await bot.console.say("/campaign report spring")
        assert reply is not None
        assert "sent 4, delivered 4 of 4 attempts (100.0%)" in reply.text
        assert (
            "clicks per link:" in reply.text
            and "https://corp.example/spring — 1 person, 2 clicks" in reply.text
        )
        assert "not compared yet" in reply.text
        (image,) = reply.images
        assert Path(image.path).read_bytes()[:4] == b"\x89PNG" and "spring" in image.title
        assert reply.card is not None and reply.card.link is not None
        url = reply.card.link[1]
        assert url.startswith("http://127.0.0.1:8080/report/")
        page = await client.get(url.removeprefix("http://127.0.0.1:8080"))
        assert page.status_code == 200 and "sent 4, delivered 4" in page.text
        assert "img-src 'self' data:;" in page.headers["content-security-policy"]
        chart = await client.get(url.removeprefix("http://127.0.0.1:8080") + "/chart.png")
        assert chart.status_code == 200 and chart.headers["content-type"] == "image/png"

        token = url.rsplit("/", 1)[1]
        forged = token[:-2] + ("AA" if token[-2:] != "AA" else "BB")
        assert (await client.get(f"/report/{forged}")).status_code == 403
        assert (await client.get(f"/report/{forged}/chart.png")).status_code == 403
        signer = bot.core.ctx.signer
        campaign_id = signer.verify_expiring(token, "r")[0]
        expired = signer.sign_expiring("r", campaign_id, ttl_s=-1)
        refused = await client.get(f"/report/{expired}")
        assert refused.status_code == 403 and "not valid or has expired" in refused.text
        other_kind = signer.sign_expiring("p", campaign_id, ttl_s=3600)  # a preview token is no report token
        assert (await client.get(f"/report/{other_kind}")).status_code == 403

    async with bot.core.ctx.sessions() as session:
        campaign = (await session.execute(select(Campaign).where(Campaign.name == "spring"))).scalar_one()
    data = chart_data(await build_report(bot.core.ctx, campaign))
    delivery, engagement = data.panels
    assert series(delivery, "sent").total == 4 and data.x_max >= 60 and delivery.y_ticks == (0, 1, 2, 3, 4)
    assert series(engagement, "opened").total == 1 and series(engagement, "clicked").total == 1
    text = await bot.say(SENDER, "/campaign report spring")
    assert "(picture saved: " in text  # the console names the file


def test_unsubscribes_and_complaints_by_day_and_the_last_campaigns_to_the_list() -> None:
    from bot.campaigns.report import Earlier

    day1, day2 = T0, T0 + timedelta(days=1, hours=2)
    text = demo_like(
        audience="customers",
        unsubscribes=2,
        complaints=1,
        unsubscribe_steps=steps([day1, day2]),
        complaint_steps=steps([day2]),
        by_day=[(day1.date(), 1, 0), (day2.date(), 1, 1)],
        earlier=[Earlier("winter", T0 - timedelta(days=60), 200, 50, 9)],
    ).text()
    assert "unsubscribes and complaints by day:" in text
    assert "2026-12-03: 1 unsubscribe, 0 complaints" in text
    assert "2026-12-04: 1 unsubscribe, 1 complaint" in text
    assert "the last campaigns to customers:" in text
    assert "winter (2026-10-04): 200 delivered, opens 25.0%, clicks 4.5%" in text
    assert "unsubscribes 2 of 4 delivered (50.0%), complaints 1 (25.0%)" in text
    assert "above the 0.3% spam-rate ceiling" in text


async def test_the_report_compares_with_the_last_campaign_to_the_same_list(bot, smtp, tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "contacts.csv"
    path.write_text(CSV)
    await import_contacts(bot.core.ctx, path, "customers")
    for name in ("spring", "summer"):
        await bot.say(SENDER, f"/campaign new {name} --to customers --template welcome")
        await bot.say(SENDER, f"/campaign submit {name}")
        assert "Approved" in await bot.say(APPROVER, f"/approve {name}")
        await bot.settle()
    summer = await bot.say(SENDER, "/campaign report summer")
    assert "the last campaigns to customers:" in summer and "spring (" in summer
    assert "spring (" in summer and "4 delivered, opens 0.0%, clicks 0.0%" in summer
    spring = await bot.say(SENDER, "/campaign report spring")
    assert "the last campaigns" not in spring  # nothing was sent to the list before spring


async def test_a_click_without_an_image_load_counts_as_an_open(bot, smtp, tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "contacts.csv"
    path.write_text(CSV)
    await import_contacts(bot.core.ctx, path, "customers")
    await bot.say(SENDER, "/campaign new spring --to customers --template welcome")
    await bot.say(SENDER, "/campaign submit spring")
    assert "Approved" in await bot.say(APPROVER, "/approve spring")
    await bot.settle()
    ana = smtp.handler.to("ana@example.com")[0].message.get_body(("html",)).get_content()
    ben = smtp.handler.to("ben@example.com")[0].message.get_body(("html",)).get_content()
    async with web(bot) as client:
        for html in (ana, ben):  # images blocked: a click, no pixel
            click = re.search(r'href="http://127\.0\.0\.1:8080(/c/[^"]+)"', html).group(1)  # type: ignore[union-attr]
            assert (await client.get(click)).status_code == 302
        pixel = re.search(r'src="http://127\.0\.0\.1:8080(/o/[^"]+)"', ana).group(1)  # type: ignore[union-attr]
        assert (await client.get(pixel)).status_code == 200  # ana loaded images later too
    async with bot.core.ctx.sessions() as session:
        campaign = (await session.execute(select(Campaign).where(Campaign.name == "spring"))).scalar_one()
    figures = await build_report(bot.core.ctx, campaign)
    assert figures.opens == 2 and figures.clicks == 2
    text = figures.text()
    assert "opens 2 of 4 delivered (50.0%)" in text and "2 of 2 openers clicked (100.0%)" in text
    assert "Apple Mail Privacy Protection" in text
    engagement = chart_data(figures).panels[1]
    assert series(engagement, "opened").total == 2 and series(engagement, "clicked").total == 2
    opened, clicked = series(engagement, "opened"), series(engagement, "clicked")
    assert all(o <= c for (o, _), (c, _) in zip(opened.marks, clicked.marks, strict=True))  # opened no later


def test_the_legend_sits_outside_the_plot_so_it_hides_no_data() -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from bot.campaigns.report import figure

    fig = figure(chart_data(demo_like()))  # small send: the cumulative lines peak top-left
    FigureCanvasAgg(fig).draw()
    axes = [ax for ax in fig.axes if ax.get_legend() is not None]
    assert len(axes) == 2
    for ax in axes:
        box, plot = ax.get_legend().get_window_extent(), ax.get_window_extent()
        assert not box.overlaps(plot), "the legend covers the plot area"


def test_lines_stop_at_the_report_time_and_the_rest_of_the_axis_stays_empty() -> None:
    data = chart_data(demo_like(now=T0 + timedelta(seconds=23)))
    assert data.x_max == 60.0 and data.now_x == 23.0  # the axis keeps its minimum span
    for panel in data.panels:
        for s in panel.series:
            assert max(s.xs) == 23.0 and all(x <= 23.0 for x, _ in s.marks)
    later = chart_data(demo_like(now=T0 + timedelta(hours=5)))
    assert later.now_x == later.x_max == 5.0


async def test_the_report_page_speaks_the_language_of_whoever_asked(bot, smtp, tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "contacts.csv"
    path.write_text(CSV)
    await import_contacts(bot.core.ctx, path, "customers")
    await bot.say(SENDER, "/campaign new spring --to customers --template welcome")
    await bot.say(SENDER, "/campaign submit spring")
    assert "Approved" in await bot.say(APPROVER, "/approve spring")
    await bot.settle()
    bot.console.as_email = SENDER
    await bot.console.say("/lang zh_CN")
    reply = await bot.console.say("/campaign report spring")
    assert reply is not None and reply.card is not None and reply.card.link is not None
    url = reply.card.link[1].removeprefix("http://127.0.0.1:8080")
    async with web(bot) as client:
        page = await client.get(url)
        assert page.status_code == 200
        assert "<html lang='zh-CN'>" in page.text and "报告" in page.text and "Report:" not in page.text
        chart = await client.get(url + "/chart.png")
        assert chart.status_code == 200
        await bot.console.say("/lang en")
        english = (await bot.console.say("/campaign report spring")).card.link[1]  # type: ignore[union-attr]
        page = await client.get(english.removeprefix("http://127.0.0.1:8080"))
        assert "<html lang='en'>" in page.text and "Report: “spring”" in page.text
        signer = bot.core.ctx.signer  # the language is signed: changing it breaks the token
        campaign_id, locale = signer.verify_expiring(url.rsplit("/", 1)[1], "r")  # type: ignore[misc]
        assert locale == "zh_CN"
        old = signer.sign_expiring("r", campaign_id, ttl_s=3600)  # a link made before: still valid, English
        assert (await client.get(f"/report/{old}")).status_code == 200


def test_the_console_names_the_picture_in_the_readers_language_without_nested_quotes() -> None:
    from bot.events import Image, Message
    from bot.message_text import CONSOLE, render

    message = Message("x", images=(Image("/tmp/r.png", "Report: “spring”"),))
    assert "(picture saved: /tmp/r.png — Report: “spring”)" in render(message, CONSOLE, "en")
    assert "（图片已保存：/tmp/r.png — Report: “spring”）" in render(message, CONSOLE, "zh_CN")


async def test_an_automation_that_never_sent_has_no_report_like_a_draft_campaign(bot, smtp, tmp_path) -> None:  # type: ignore[no-untyped-def]
    reply = await bot.say(SENDER, "/automation new welcome --on joined --template welcome")
    assert "Draft automation “welcome”" in reply, reply
    refused = await bot.say(SENDER, "/automation report welcome")
    assert "“welcome” is draft; it has no report until it is sent." in refused, refused
    assert "0 recipients" not in refused and "Benchmarks" not in refused
    path = tmp_path / "contacts.csv"
    path.write_text(CSV)
    await import_contacts(bot.core.ctx, path, "customers")
    await bot.say(SENDER, "/campaign new spring --to customers --template welcome")
    assert "“spring” is draft; it has no report until it is sent." in await bot.say(
        SENDER, "/campaign report spring"
    )


def test_no_benchmark_line_when_nothing_was_delivered() -> None:
    bounced = demo_like(
        sent=0, delivered=0, opens=0, clicks=0, hard_bounces=4, statuses={"bounced": 4},
        sent_steps=steps([]), open_steps=steps([]), click_steps=steps([]),
    ).text()  # fmt: skip
    assert "Benchmarks" not in bounced and "0 delivered is fewer" not in bounced
    waiting = demo_like(
        state="sending", sent=0, delivered=0, opens=0, clicks=0, statuses={"pending": 4},
        sent_steps=steps([]), open_steps=steps([]), click_steps=steps([]),
    ).text()  # fmt: skip
    assert "Benchmarks" not in waiting
    assert "Benchmarks (20% opens, 3% clicks) not compared yet" in demo_like().text()


async def test_well_formed_report_refusals_carry_their_sentence_alone(bot, tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "contacts.csv"
    path.write_text(CSV)
    await import_contacts(bot.core.ctx, path, "customers")
    await bot.say(SENDER, "/campaign new spring --to customers --template welcome")
    await bot.say(SENDER, "/automation new welcome --on joined --template welcome")
    for text, sentence in (
        ("/campaign report spring", "“spring” is draft; it has no report until it is sent."),
        ("/campaign report nosuch", "There is no campaign “nosuch”. /campaign list shows them."),
        ("/automation report nosuch", "There is no automation “nosuch”. /automation list shows them."),
        ("/automation report welcome", "“welcome” is draft; it has no report until it is sent."),
    ):
        reply = await bot.say(SENDER, text)
        assert reply == sentence, (text, reply)  # no "Usage:" line: the command was well-formed
    assert "Usage: /campaign report <name>" in await bot.say(SENDER, "/campaign report")  # malformed


def test_counts_of_one_read_in_the_singular_and_lists_read_as_lists() -> None:
    from bot.campaigns.report import Earlier  # noqa: F401

    one = demo_like(
        recipients=1, sent=1, delivered=1, opens=1, clicks=1, statuses={"sent": 1},
        sent_steps=steps([T0]), open_steps=steps([T0]), click_steps=steps([T0]), unsubscribes=1,
        unsubscribe_steps=steps([T0]), by_day=[(T0.date(), 1, 0)], links=[("https://corp.example/a", 1, 1), ("https://corp.example/b", 2, 3)],
    )  # fmt: skip
    text = one.text()
    assert "https://corp.example/a — 1 person, 1 click" in text
    assert "https://corp.example/b — 2 people, 3 clicks" in text
    assert "2026-12-03: 1 unsubscribe, 0 complaints" in text
    assert chart_data(one).title == "“spring”: 1 recipient"
    assert chart_data(demo_like()).title == "“spring”: 4 recipients"
    with i18n.using("zh_CN"):
        assert "1 人，1 次点击" in one.text()


async def test_the_role_refusal_lists_its_roles_and_the_page_alt_text_names_every_series(
    bot, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import NOBODY

    refused = await bot.say(NOBODY, "/campaign report spring")
    assert "/campaign report is for campaign senders, approvers or admins;" in refused, refused
    bot.console.locale = "zh_CN"
    refused = await bot.say(NOBODY, "/campaign report spring")
    assert "、" in refused and "或管理员" in refused, refused
    bot.console.locale = "en"
    path = tmp_path / "contacts.csv"
    path.write_text(CSV)
    await import_contacts(bot.core.ctx, path, "customers")
    await bot.say(SENDER, "/campaign new spring --to customers --template welcome")
    await bot.say(SENDER, "/campaign submit spring")
    await bot.say(APPROVER, "/approve spring")
    await bot.settle()
    bot.console.as_email = SENDER
    reply = await bot.console.say("/campaign report spring")
    url = reply.card.link[1].removeprefix("http://127.0.0.1:8080")  # type: ignore[union-attr]
    async with web(bot) as client:
        page = (await client.get(url)).text
    alt = re.search(r"alt='([^']*)'", page).group(1)  # type: ignore[union-attr]
    for word in ("sent", "bounced", "unsubscribed", "complained", "opened", "clicked"):
        assert word in alt, alt
