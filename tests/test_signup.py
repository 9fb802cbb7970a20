"""Double opt-in signup through the real web app: the hosted page, the form, the JSON endpoint, the
confirmation link; abuse limits in the database; no signal whether an address exists; an unconfirmed
signup is never mailed by a campaign and expires."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select

from bot.db.models import ConsentEvent, Contact, Delivery, Signup, Suppression
from tests.audience_kit import WORDING, confirmation_links, make_bot, open_signup, wait_for_mail, web  # noqa: F401
from tests.conftest import APPROVER, SENDER


async def test_a_hosted_page_signup_is_a_contact_only_once_confirmed(make_bot, smtp) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    bot = await make_bot(signup={"record_ip": True, "record_user_agent": True})
    await open_signup(bot)
    async with web(bot) as client:
        page = await client.get("/s/customers")
        assert page.status_code == 200 and WORDING in page.text and "<script" not in page.text
        assert (
            "name='website'" in page.text and "<label for='pr-email'>" in page.text
        )  # honeypot; labelled fields
        taken = await client.post(
            "/s/customers",
            data={"email": "Neo@Example.COM", "name": "Neo", "website": "", "source": "page"},
            headers={"User-Agent": "test-browser/1.0", "Referer": "https://corp.example/join"},
        )
        assert taken.status_code == 200 and "confirmation link is on its way" in taken.text
        await bot.app.drain()
        await wait_for_mail(smtp, "neo@example.com")
        mail = smtp.handler.to("neo@example.com")[0].message
        assert mail["Subject"] == "Confirm your subscription to customers"
        assert "neo@example.com" not in mail.get_content().split("/s/confirm/")[1]  # the link names an id
        async with bot.app.ctx.sessions() as s:
            assert (
                await s.execute(select(Contact).where(Contact.email == "neo@example.com"))
            ).first() is None
        (link,) = confirmation_links(smtp, "neo@example.com")
        shown = await client.get(link)  # a mail scanner following the link confirms nothing
        assert shown.status_code == 200 and "<form method='post'" in shown.text
        async with bot.app.ctx.sessions() as s:
            assert (
                await s.execute(select(Contact).where(Contact.email == "neo@example.com"))
            ).first() is None
        done = await client.post(link, headers={"User-Agent": "test-browser/1.0"})
        assert done.status_code == 200 and "you are on the list “customers”" in done.text
        again = await client.post(link)
        assert again.status_code == 200  # a second click: still confirmed, nothing doubled
    async with bot.app.ctx.sessions() as s:
        contact = (await s.execute(select(Contact).where(Contact.email == "neo@example.com"))).scalar_one()
        events = (await s.execute(select(ConsentEvent).order_by(ConsentEvent.id))).scalars().all()
    assert contact.consent_method == "double opt-in" and contact.consent_at is not None
    steps = [(e.kind, e.list_name) for e in events if e.contact_id == contact.id or e.kind == "requested"]
    assert ("requested", "customers") in steps and ("confirmed", "customers") in steps
    confirmed = next(e for e in events if e.kind == "confirmed")
    assert confirmed.wording == WORDING and confirmed.wording_version == "customers#1"
    assert confirmed.ip == "198.51.100.7" and confirmed.user_agent == "test-browser/1.0"
    assert "hosted signup page on https://corp.example/join" in (confirmed.source or "")
    shown = await bot.say(SENDER, "/contacts show neo@example.com")
    assert "requested" in shown and "confirmed" in shown and WORDING in shown, shown
    from tests.conftest import ADMIN

    assert "Erased" in await bot.say(ADMIN, "/privacy erase neo@example.com --confirm")
    async with bot.app.ctx.sessions() as s:
        kept = (await s.execute(select(ConsentEvent.kind, ConsentEvent.ip, ConsentEvent.user_agent))).all()
        assert (await s.execute(select(func.count()).select_from(Signup))).scalar_one() == 0
    assert {k for k, _, _ in kept} >= {"requested", "confirmed"} and all(
        ip is None and ua is None for _, ip, ua in kept
    )


async def test_ip_and_user_agent_are_not_kept_unless_the_organisation_enables_it(make_bot, smtp) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    bot = await make_bot()
    await open_signup(bot)
    async with web(bot) as client:
        await client.post("/s/customers", data={"email": "ana@example.com"}, headers={"User-Agent": "ua"})
        await bot.app.drain()
        await wait_for_mail(smtp, "ana@example.com")
        (link,) = confirmation_links(smtp, "ana@example.com")
        await client.post(link, headers={"User-Agent": "ua"})
    async with bot.app.ctx.sessions() as s:
        rows = (await s.execute(select(ConsentEvent.ip, ConsentEvent.user_agent))).all()
    assert rows and all(ip is None and ua is None for ip, ua in rows)


async def test_an_unconfirmed_signup_is_never_mailed_by_a_campaign_and_expires(make_bot, smtp) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    bot = await make_bot()
    await open_signup(bot)
    async with web(bot) as client:
        reply = await client.post("/s/customers.json", json={"email": "pending@example.com"})
        assert reply.status_code == 202 and reply.json()["status"] == "accepted"
    await bot.app.drain()
    await wait_for_mail(smtp, "pending@example.com")
    await bot.say(SENDER, "/campaign new spring --to customers --template welcome")
    assert "Submitted" in await bot.say(SENDER, "/campaign submit spring")
    await bot.say(APPROVER, "/approve spring")
    await bot.settle()
    async with bot.app.ctx.sessions() as s:
        mailed = set((await s.execute(select(Delivery.email))).scalars())
    assert mailed == {"lena@example.com", "raj@example.net", "kim@example.org"}
    assert len(smtp.handler.to("pending@example.com")) == 1  # the confirmation mail, nothing else
    (link,) = confirmation_links(smtp, "pending@example.com")
    later = bot.app.ctx.now() + timedelta(hours=49)
    bot.app.ctx.clock = lambda: later
    assert await bot.app.signups.expire() == 1
    async with web(bot) as client:
        gone = await client.post(link)
        assert gone.status_code == 410 and "expired" in gone.text
    async with bot.app.ctx.sessions() as s:
        assert (await s.execute(select(Signup.state))).scalars().all() == ["expired"]
        assert (
            await s.execute(select(Contact).where(Contact.email == "pending@example.com"))
        ).first() is None


async def test_honeypot_and_rate_limits_and_no_signal_whether_an_address_exists(make_bot, smtp) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    bot = await make_bot(
        signup={"per_ip_per_hour": 6, "per_address_per_day": 3, "mails_per_address_per_day": 2}
    )
    await open_signup(bot)
    async with web(bot, "203.0.113.9") as client:
        bot_fill = await client.post(
            "/s/customers", data={"email": "spam@example.com", "website": "http://x"}
        )
        member = await client.post("/s/customers", data={"email": "lena@example.com"})  # on the list already
        stranger = await client.post("/s/customers", data={"email": "new@example.com"})
        assert bot_fill.status_code == member.status_code == stranger.status_code == 200
        assert bot_fill.text == member.text == stranger.text  # nobody learns who is on the list
        for _ in range(3):  # the same address again: at most two confirmation mails a day
            await client.post("/s/customers", data={"email": "new@example.com"})
        over = await client.post("/s/customers", data={"email": "other@example.com"})
        assert over.status_code == 429 and "Too many signups" in over.text
    async with web(bot, "203.0.113.10") as elsewhere:  # another network still may
        assert (await elsewhere.post("/s/customers", data={"email": "third@example.com"})).status_code == 200
    await bot.app.drain()
    await wait_for_mail(smtp, "third@example.com")
    assert smtp.handler.to("spam@example.com") == [] and smtp.handler.to("lena@example.com") == []
    assert len(smtp.handler.to("new@example.com")) == 2
    async with bot.app.ctx.sessions() as s:
        assert (await s.execute(select(func.count()).select_from(Signup))).scalar_one() == 2


async def test_bad_signups_get_a_sentence_and_a_status(make_bot, smtp) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    bot = await make_bot()
    await open_signup(bot)
    async with web(bot) as client:
        cases = [
            (
                await client.post("/s/customers", data={"email": "not an address"}),
                400,
                "not an email address",
            ),
            (await client.post("/s/nosuch", data={"email": "a@example.com"}), 404, "no signup for a list"),
            (await client.get("/s/nosuch"), 404, "no signup for a list"),
            (await client.post("/s/customers", content=b"email=" + b"a" * 20000), 413, "larger than"),
            (await client.post("/s/customers.json", content=b"{not json"), 400, "not JSON"),
            (await client.post("/s/customers.json", content=b"[" * 4000 + b"]" * 4000), 400, "not JSON"),
            (await client.post("/s/customers.json", content=b'{"email": NaN}'), 400, "not JSON"),
            (await client.post("/s/customers.json", json={"email": 7}), 400, "“email” string"),
            (await client.post("/s/customers.json", json=["a"]), 400, "“email” string"),
            # Tryout: a field given twice was taken silently (the first won); which one was meant?
            (
                await client.post(
                    "/s/customers",
                    content=b"email=a%40example.com&email=b%40example.com",
                    headers={"content-type": "application/x-www-form-urlencoded"},
                ),
                400,
                "The form gives “email” more than once",
            ),
            (
                await client.post(
                    "/s/customers.json", content=b'{"email": "a@example.com", "email": "b@example.com"}'
                ),
                400,
                "The key “email” appears twice in one JSON object",
            ),
            (await client.get("/s/confirm/forged.token"), 400, "not valid"),
            (await client.post("/s/confirm/forged.token"), 400, "not valid"),
            (
                await client.post("/s/customers", data={"email": "a@example.com", "name": "x\x1by"}),
                400,
                "control character (U+001B)",
            ),
        ]
    for response, status, words in cases:
        assert response.status_code == status and words in response.text, (status, response.text[:300])
        assert "Traceback" not in response.text
    async with bot.app.ctx.sessions() as s:
        assert (await s.execute(select(func.count()).select_from(Signup))).scalar_one() == 0


async def test_a_closed_list_takes_no_signup_and_the_form_snippet_posts_here(make_bot, smtp) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    bot = await make_bot()
    await open_signup(bot)
    snippet = await bot.say(SENDER, "/lists form customers")
    assert "action='http://127.0.0.1:8080/s/customers'" in snippet and "name='website'" in snippet
    async with web(bot) as client:
        embedded = await client.get("/s/customers/form")
        assert embedded.status_code == 200 and "<form method='post'" in embedded.text
    from tests.conftest import ADMIN

    assert "Closed" in await bot.say(ADMIN, "/lists close customers")
    async with web(bot) as client:
        assert (await client.post("/s/customers", data={"email": "a@example.com"})).status_code == 404


async def test_a_sales_person_adds_a_contact_with_the_consent_they_recorded(make_bot, smtp) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    bot = await make_bot()
    reply = await bot.say(
        SENDER,
        '/contacts add mo@example.com --list customers --consent "Asked at the fair to get news" --name "Mo"',
    )
    assert "Added mo@example.com to “customers”" in reply, reply
    shown = await bot.say(SENDER, "/contacts show mo@example.com")
    assert "added" in shown and f"chat:{SENDER}" in shown and "Asked at the fair" in shown, shown
    assert "mo@example.com" in await bot.say(SENDER, "/contacts find mo@")
    assert "Took mo@example.com off" in await bot.say(
        SENDER, "/contacts remove mo@example.com --list customers"
    )
    shown = await bot.say(SENDER, "/contacts show mo@example.com")
    assert "left" in shown and "lists: none" in shown, shown
    lists = await bot.say(SENDER, "/lists")
    assert "customers — 3 members, 2 with consent" in lists or "customers —" in lists, lists


async def test_a_confirmation_link_confirms_only_its_own_request_and_only_once(make_bot, smtp) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    """One signup row per list and address is reused by every request: an old link must not confirm a
    newer request (after an unsubscribe that would sign the person up again on someone else's word), and
    it must not claim "you are on the list" when that is no longer true."""
    from bot.campaigns.unsubscribe import Target, unsubscribe

    bot = await make_bot()
    await open_signup(bot)
    async with web(bot) as client:
        await client.post("/s/customers", data={"email": "ivy@example.com"})
        await bot.app.drain()
        await wait_for_mail(smtp, "ivy@example.com")
        (first,) = confirmation_links(smtp, "ivy@example.com")
        assert "you are on the list" in (await client.post(first)).text
        await unsubscribe(
            bot.app.ctx, Target("ivy@example.com", 0), via="web", how="one-click", detail="test"
        )
        shown = await client.get(first)  # opened again after the unsubscribe: it says what is true
        assert shown.status_code == 410 and "used already" in shown.text and "on the list" not in shown.text
        assert "on the list" not in (await client.post(first)).text
        await client.post("/s/customers", data={"email": "ivy@example.com"})  # a newer request, anyone's
        await bot.app.drain()
        await wait_for_mail(smtp, "ivy@example.com", 2)
        second = confirmation_links(smtp, "ivy@example.com")[1]
        old = await client.post(first)
        assert old.status_code == 410 and "newer signup replaced" in old.text
        async with bot.app.ctx.sessions() as s:
            assert (await s.execute(select(Signup.state))).scalar_one() == "pending"
            assert (await s.execute(select(Suppression.reason))).scalar_one() == "unsubscribed"
        assert "replaced" in (await client.get(first)).text
        done = await client.post(second)  # the person's own, newest link works
        assert done.status_code == 200 and "you are on the list “customers”" in done.text
    async with bot.app.ctx.sessions() as s:
        assert (await s.execute(select(Suppression))).first() is None
        kinds = (await s.execute(select(ConsentEvent.kind).order_by(ConsentEvent.id))).scalars().all()
    assert kinds.count("confirmed") == 2


async def test_an_idn_domain_is_mailed_as_ascii_and_a_look_alike_is_refused(make_bot, smtp) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    from bot.addresses import normalise

    assert normalise("Bob@Müller.DE") == "bob@xn--mller-kva.de"
    bot = await make_bot()
    await open_signup(bot)
    async with web(bot) as client:
        look_alike = await client.post(
            "/s/customers.json", json={"email": "bob@ex\u0430mple.org"}
        )  # Cyrillic а
        assert look_alike.status_code == 400 and "mixes letters from different scripts" in look_alike.text
        assert "Cyrillic and Latin" in look_alike.json()["error"]
        local = await client.post("/s/customers.json", json={"email": "jürgen@example.org"})
        assert local.status_code == 400 and "Traceback" not in local.text
        taken = await client.post("/s/customers.json", json={"email": "bob@müller.de"})
        assert taken.status_code == 202
        await bot.app.drain()
        await wait_for_mail(smtp, "bob@xn--mller-kva.de")  # the confirmation mail went out
    reply = await bot.say(
        SENDER, '/contacts add eva@bücher.example --list customers --consent "Asked at the fair"'
    )
    assert "eva@xn--bcher-kva.example" in reply, reply
    assert "mixes letters" in await bot.say(
        SENDER, '/contacts add eve@p\u0430ypal.com --list customers --consent "Asked at the fair"'
    )
    async with bot.app.ctx.sessions() as s:
        stored = set((await s.execute(select(Contact.email))).scalars()) | set(
            (await s.execute(select(Signup.email))).scalars()
        )
    assert {"bob@xn--mller-kva.de", "eva@xn--bcher-kva.example"} <= stored
    assert not any(not e.isascii() for e in stored)


async def test_a_company_address_joins_no_external_list_on_any_path(make_bot, smtp, tmp_path) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    from bot.contacts.importer import import_contacts

    bot = await make_bot()
    await open_signup(bot)
    async with web(bot) as client:
        inside = await client.post("/s/customers.json", json={"email": "Chen@Corp.Example"})
        outside = await client.post("/s/customers.json", json={"email": "zoe@example.org"})
        assert (
            inside.status_code == outside.status_code == 202 and inside.json() == outside.json()
        )  # no oracle
        await bot.app.drain()
    await wait_for_mail(smtp, "zoe@example.org")
    assert smtp.handler.to("chen@corp.example") == []
    assert "company address" in await bot.say(
        SENDER, '/contacts add chen@corp.example --list customers --consent "Asked at the fair"'
    )
    (tmp_path / "staff.csv").write_text("email,name\nchen@corp.example,Chen\numa@example.org,Uma\n")
    report = await import_contacts(bot.app.ctx, tmp_path / "staff.csv", "customers")
    assert report.added == 1 and report.bad == [] and report.internal == 1
    assert "1 row was a company address (corp.example) and was not imported" in report.summary()
    async with bot.app.ctx.sessions() as s:
        assert (await s.execute(select(Signup.email))).scalars().all() == ["zoe@example.org"]
        assert (await s.execute(select(Contact).where(Contact.email == "chen@corp.example"))).first() is None


async def _signups_through_uvicorn(bot, forwarded: list[str]) -> list[int]:  # type: ignore[no-untyped-def]
    """POSTs through the real server `postroom serve` runs, each claiming another X-Forwarded-For."""
    import httpx

    from bot.app import Runtime
    from tests.smtp import free_port

    runtime, port = Runtime(bot.app), free_port()
    await runtime.start_web("127.0.0.1", port)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            return [
                (
                    await client.post(
                        "/s/customers.json",
                        json={"email": f"x{i}@example.com"},
                        headers={"X-Forwarded-For": ip},
                    )
                ).status_code
                for i, ip in enumerate(forwarded)
            ]
    finally:
        runtime.web_server.should_exit = True
        await runtime.web_task


async def test_the_per_ip_limit_believes_forwarded_headers_only_from_trusted_proxies(make_bot, smtp) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    claimed = ["203.0.113.1", "203.0.113.2", "203.0.113.3"]
    bot = await make_bot(signup={"per_ip_per_hour": 2})
    await open_signup(bot)
    assert await _signups_through_uvicorn(bot, claimed) == [202, 202, 429]  # all from 127.0.0.1
    proxied = await make_bot(signup={"per_ip_per_hour": 2}, web={"trusted_proxies": ["127.0.0.1"]})
    assert await _signups_through_uvicorn(proxied, [f"198.51.100.{i}" for i in range(3)]) == [202, 202, 202]
    from bot.contacts.signup import network_of

    assert network_of("2001:db8:1:2::5") == network_of("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert network_of("::ffff:192.0.2.7") == "192.0.2.7" and network_of("192.0.2.7") == "192.0.2.7"
    async with web(proxied, "2001:db8:7:7::1") as one, web(proxied, "2001:db8:7:7::2") as same_net:
        assert (await one.post("/s/customers.json", json={"email": "v1@example.com"})).status_code == 202
        assert (await same_net.post("/s/customers.json", json={"email": "v2@example.com"})).status_code == 202
        over = await same_net.post("/s/customers.json", json={"email": "v3@example.com"})
        assert over.status_code == 429  # another address of the same /64 counts as the same network


async def test_a_member_and_a_new_address_get_the_same_work_before_the_answer(make_bot, smtp) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    """No timing oracle: what runs before the answer (the statements sent to the database) is the same
    for an address on the list and one that is not; the rest happens in the background."""
    from sqlalchemy import event

    from bot.contacts.signup import SignupForm

    bot = await make_bot()
    await open_signup(bot)
    statements: list[str] = []

    def seen(_conn, _cursor, statement, *_args) -> None:  # type: ignore[no-untyped-def]
        statements.append(" ".join(statement.split()))

    async def answered(email: str) -> list[str]:
        statements.clear()
        event.listen(bot.app.ctx.engine.sync_engine, "before_cursor_execute", seen)
        try:
            await bot.app.signups.request(SignupForm("customers", email, ip="192.0.2.1"))
        finally:
            event.remove(bot.app.ctx.engine.sync_engine, "before_cursor_execute", seen)
        shape = list(statements)
        await bot.app.drain()
        return shape

    member, new = await answered("lena@example.com"), await answered("newbie@example.org")
    assert member == new and member
    await wait_for_mail(smtp, "newbie@example.org")  # the background did the rest
    assert smtp.handler.to("lena@example.com") == []


async def test_a_name_from_chat_with_a_direction_override_or_control_character_is_refused(make_bot) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    bot = await make_bot()
    consent = '--consent "Said yes to our newsletter at the fair"'
    for name, code in (("Ann\u202egnp.exe", "U+202E"), ("Ann\u2066x", "U+2066"), ("Ann\x1bx", "U+001B")):
        reply = await bot.say(
            SENDER, f'/contacts add ann@example.com --list customers --name "{name}" {consent}'
        )
        assert "The name contains" in reply and code in reply, reply
    async with bot.app.ctx.sessions() as s:
        assert (await s.execute(select(Contact).where(Contact.email == "ann@example.com"))).first() is None
    reply = await bot.say(
        SENDER, f'/contacts add ann@example.com --list customers --name "Ann  Lee" {consent}'
    )
    assert "Added ann@example.com" in reply, reply
    async with bot.app.ctx.sessions() as s:
        ann = (await s.execute(select(Contact).where(Contact.email == "ann@example.com"))).scalar_one()
    assert ann.name == "Ann Lee"


CRM_KEY = "crm-" + "k3y" * 12


async def test_a_crm_with_the_api_key_passes_the_per_ip_limit_not_the_address_one(make_bot, smtp) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    bot = await make_bot(signup={"per_ip_per_hour": 2, "per_address_per_day": 2, "api_key": CRM_KEY})
    await open_signup(bot)
    crm = {"Authorization": f"Bearer {CRM_KEY}"}
    async with web(bot, "192.0.2.50") as client:  # the company's CRM: one address for every signup
        for i in range(5):
            sent = await client.post("/s/customers.json", json={"email": f"crm{i}@example.com"}, headers=crm)
            assert sent.status_code == 202, (i, sent.text)
        for _ in range(3):  # one address: its own daily limit (2) still holds, quietly
            assert (
                await client.post("/s/customers.json", json={"email": "same@example.com"}, headers=crm)
            ).status_code == 202
        wrong = await client.post(
            "/s/customers.json", json={"email": "x@example.com"}, headers={"Authorization": "Bearer nope"}
        )
        assert wrong.status_code == 401 and "API key" in wrong.json()["error"]
        # Without the key the network has its hourly limit, and is told when to come back.
        for i in range(2):
            assert (
                await client.post("/s/customers.json", json={"email": f"w{i}@example.com"})
            ).status_code == 202
        over = await client.post("/s/customers.json", json={"email": "y@example.com"})
        assert over.status_code == 429 and 0 < int(over.headers["Retry-After"]) <= 3600
        page = await client.post("/s/customers", data={"email": "z@example.com"})
        assert page.status_code == 429 and 0 < int(page.headers["Retry-After"]) <= 3600
    await bot.app.drain()
    await wait_for_mail(smtp, "crm4@example.com")
    await wait_for_mail(smtp, "same@example.com", 2)
    assert len(smtp.handler.to("same@example.com")) == 2  # the third was over the address's limit
    async with bot.app.ctx.sessions() as s:
        emails = set((await s.execute(select(Signup.email))).scalars())
    assert {f"crm{i}@example.com" for i in range(5)} <= emails


async def test_the_embedded_forms_honeypot_is_hidden_without_the_pages_stylesheet(make_bot) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    import re

    bot = await make_bot()
    await open_signup(bot)
    async with web(bot) as client:
        embedded = (await client.get("/s/customers/form")).text
    # A website embedding the snippet has no .hp rule: the field must hide itself, from sight and from
    # the keyboard and screen readers, and no browser may fill it in.
    (box,) = re.findall(r"<div[^>]*aria-hidden='true'[^>]*>", embedded)
    style = re.search(r"style='([^']*)'", box)
    assert style is not None and "position:absolute" in style.group(1) and "left:-10000px" in style.group(1)
    assert "overflow:hidden" in style.group(1) and "height:1px" in style.group(1)
    (field,) = re.findall(r"<input[^>]*name='website'[^>]*>", embedded)
    assert "tabindex='-1'" in field and "autocomplete='off'" in field and "aria-hidden='true'" in field


async def test_an_old_embedded_form_records_the_wording_it_showed_not_the_newest(make_bot, smtp) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    from tests.conftest import ADMIN

    bot = await make_bot()
    v1, v2 = "Partner news from us, now and then (v1).", "Partner news and event invitations (v2)."
    assert "v1" in await bot.say(ADMIN, f'/lists open Partners --wording "{v1}"')
    snippet_v1 = await bot.say(SENDER, "/lists form partners")
    assert "name='wording_version' value='1'" in snippet_v1, snippet_v1
    reworded = await bot.say(ADMIN, f'/lists open Partners --wording "{v2}"')
    assert "v2" in reworded and "/lists form Partners" in reworded, reworded
    assert "paste" in reworded, reworded
    async with web(bot) as client:
        old = await client.post(
            "/s/partners", data={"email": "old@example.com", "source": "form", "wording_version": "1"}
        )
        assert old.status_code == 200, old.text
        new = await client.post(
            "/s/partners", data={"email": "new@example.com", "source": "form", "wording_version": "2"}
        )
        assert new.status_code == 200, new.text
        forged = await client.post(
            "/s/partners", data={"email": "odd@example.com", "source": "form", "wording_version": "9"}
        )
        assert forged.status_code == 400 and "/s/partners" in forged.text, forged.text
        await bot.app.drain()
    async with bot.app.ctx.sessions() as s:
        signups = {x.email: x for x in (await s.execute(select(Signup))).scalars()}
    assert set(signups) == {"old@example.com", "new@example.com"}
    assert signups["old@example.com"].wording == v1
    assert signups["old@example.com"].wording_version == "Partners#1"
    assert signups["new@example.com"].wording == v2
    assert signups["new@example.com"].wording_version == "Partners#2"


async def test_the_json_endpoint_names_a_direction_override_and_answers_get_with_405_json(make_bot) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    bot = await make_bot()
    await open_signup(bot)
    async with web(bot) as client:
        override = await client.post(
            "/s/customers.json",
            content=b'{"email": "ann@example.com", "name": "Ann\\u202egnp.exe"}',
            headers={"Content-Type": "application/json"},
        )
        assert override.status_code == 400 and "text-direction override (U+202E)" in override.json()["error"]
        broken = await client.post(
            "/s/customers.json",
            content=b'{"email": "ann@example.com", "name": "Ann\\ud800"}',
            headers={"Content-Type": "application/json"},
        )
        assert broken.status_code == 400 and "U+D800" in broken.json()["error"], broken.text
        got = await client.get("/s/customers.json")
        assert got.status_code == 405 and got.headers["allow"] == "POST", got.text
        assert "POST" in got.json()["error"]


async def test_a_multipart_form_post_is_refused_with_415_and_a_sentence(make_bot) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    bot = await make_bot()
    await open_signup(bot)
    async with web(bot) as client:
        sent = await client.post("/s/customers", files={"email": (None, "ann@example.com")})
        assert sent.status_code == 415 and "application/x-www-form-urlencoded" in sent.text, sent.text
        assert "<main" in sent.text


async def test_a_local_part_over_64_octets_is_refused_from_chat_and_signup(make_bot) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    bot = await make_bot()
    await open_signup(bot)
    long = "a" * 65 + "@example.com"
    reply = await bot.say(
        SENDER, f'/contacts add {long} --list customers --consent "Said yes to our newsletter at the fair"'
    )
    assert "64" in reply and "Added" not in reply, reply
    async with web(bot) as client:
        sent = await client.post("/s/customers", data={"email": long})
        assert sent.status_code == 400 and "64" in sent.text, sent.text
        ok = await client.post("/s/customers", data={"email": "a" * 64 + "@example.com"})
        assert ok.status_code == 200, ok.text
    shown = await bot.say(SENDER, f"/contacts show {long}")  # a lookup is no new address: not refused for it
    assert "64" not in shown, shown


async def test_the_404_page_shows_control_and_direction_characters_as_escapes(make_bot) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    bot = await make_bot()
    async with web(bot) as client:
        for sent in (
            client.get("/s/abc%E2%80%AEfdp.exe"),
            client.post("/s/abc%E2%80%AEx", data={"email": "a@example.com"}),
        ):
            got = await sent
            assert got.status_code == 404 and "\u202e" not in got.text, got.text
            assert "abc\\u202e" in got.text, got.text
        got = await client.post("/s/abc%1Bx.json", json={"email": "a@example.com"})
        assert got.status_code == 404 and "abc\\u001bx" in got.json()["error"], got.text


async def test_a_page_url_must_be_an_absolute_http_or_https_url(make_bot) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    bot = await make_bot()
    await open_signup(bot)
    async with web(bot) as client:
        for bad in (
            "javascript:alert(1)",
            "ftp://corp.example/x",
            "/join",
            "https://",
            "https://corp.example/" + "a" * 2000,
        ):
            got = await client.post("/s/customers.json", json={"email": "ann@example.com", "page_url": bad})
            assert got.status_code == 422 and "page_url" in got.json()["error"], (bad[:40], got.text)
        good = await client.post(
            "/s/customers.json", json={"email": "ann@example.com", "page_url": "https://corp.example/join"}
        )
        assert good.status_code == 202, good.text
