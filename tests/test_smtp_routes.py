"""Several SMTP routes: `[smtp]` is the route "default", `[smtp.routes.<name>]` the others, each with its own
server, login, connections and rate. A campaign or automation names its route (`--route`), or
`smtp.domain_routes` picks one by its sender's domain; the route is part of what is approved; a route whose
login fails pauses only the campaigns on it. Against one real aiosmtpd server per route on loopback and a
real database (SQLite and PostgreSQL)."""

from __future__ import annotations

import io
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import create_async_engine

from adapters.console import ConsoleAdapter
from bot import i18n
from bot.app import build_app
from bot.campaigns import notes, service
from bot.config import ConfigError, load_settings
from bot.contacts.importer import import_contacts
from bot.db.models import Campaign
from tests.conftest import APPROVER, HR, SENDER, ChatBot, make_settings
from tests.smtp import SmtpServer, free_port
from tests.smtp_faults import PASSWORD, USERNAME, FaultyServer
from tests.test_campaign_delivery import CONSENTED, CSV, FAST, state_of

pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")  # loopback only


def route(port: int, **extra: Any) -> dict[str, Any]:
    return {"host": "127.0.0.1", "port": port, "timeout_s": 5, "connections": 2, **extra}


@pytest.fixture
async def make_bot(database_url: str, smtp: SmtpServer, tmp_path: Path):  # type: ignore[no-untyped-def]
    """A bot whose [smtp] is the `smtp` fixture's server, with the routes and domain_routes given."""
    made: list[ChatBot] = []

    async def factory(routes: dict[str, Any], **smtp_extra: Any) -> ChatBot:
        settings = make_settings(
            database_url,
            smtp.port,
            tmp_path,
            smtp={"routes": routes, **smtp_extra},
            campaigns={**FAST, "reports_dir": str(tmp_path / "reports")},
        )
        app = await build_app(settings)
        console = ConsoleAdapter(HR, out=io.StringIO(), prompt=False)
        app.attach(console)
        await console.start(app.core)
        bot = ChatBot(app, console, console.out)  # type: ignore[arg-type]
        made.append(bot)
        path = tmp_path / "contacts.csv"
        if not path.exists():
            path.write_text(CSV)
            await import_contacts(app.core.ctx, path, "customers")
        return bot

    yield factory
    for bot in made:
        await bot.app.close()


async def new(bot: ChatBot, name: str, *extra: str) -> str:
    return await bot.say(SENDER, f"/campaign new {name} --to customers --template welcome {' '.join(extra)}")


async def approve(bot: ChatBot, name: str) -> None:
    assert "Submitted" in await bot.say(SENDER, f"/campaign submit {name}")
    assert "Approved" in await bot.say(APPROVER, f"/approve {name}")
    await bot.settle()


def received(server: SmtpServer | FaultyServer) -> Counter[str]:
    return Counter(r for m in server.messages for r in m.rcpt_tos)


async def campaign(bot: ChatBot, name: str) -> Campaign:
    async with bot.core.ctx.sessions() as session:
        return (await session.execute(select(Campaign).where(Campaign.name == name))).scalar_one()


async def test_a_campaign_with_route_bulk_is_delivered_by_the_bulk_server_only(make_bot, smtp) -> None:  # type: ignore[no-untyped-def]
    with SmtpServer() as bulk:
        bot = await make_bot({"bulk": route(bulk.port)})
        reply = await new(bot, "spring", "--route", "bulk")
        assert "Draft campaign" in reply, reply
        status = await bot.say(SENDER, "/campaign status spring")
        assert "leaves by the SMTP route “bulk”" in status, status
        await approve(bot, "spring")
        assert await state_of(bot, "spring") == "completed"
        assert received(bulk) == Counter({e: 1 for e in CONSENTED})
        assert smtp.messages == [], "the default route got nothing"
        card = bot.cards()[-1].card
        assert card is not None and ("SMTP route", "bulk") in card.fields

        # A campaign naming no route goes by [smtp], and its status names none.
        assert "Draft campaign" in await new(bot, "autumn")
        assert "SMTP route" not in await bot.say(SENDER, "/campaign status autumn")
        await approve(bot, "autumn")
        assert await state_of(bot, "autumn") == "completed"
        assert received(smtp) == Counter({e: 1 for e in CONSENTED})
        assert len(bulk.messages) == len(CONSENTED)


async def test_domain_routes_picks_the_route_by_the_sending_domain(make_bot, smtp) -> None:  # type: ignore[no-untyped-def]
    with SmtpServer() as bulk:
        # make_settings' campaigns.from_address is news@corp.example; the key, as a DNS tool prints it
        bot = await make_bot({"bulk": route(bulk.port)}, domain_routes={"Corp.Example.": "bulk"})
        assert "Draft campaign" in await new(bot, "spring")
        assert "leaves by the SMTP route “bulk”" in await bot.say(SENDER, "/campaign status spring")
        await approve(bot, "spring")
        assert await state_of(bot, "spring") == "completed"
        assert received(bulk) == Counter({e: 1 for e in CONSENTED}) and smtp.messages == []
        assert (await campaign(bot, "spring")).route is None  # chosen by the domain, not stored

        # --route default says [smtp] whatever the domain maps to.
        assert "Draft campaign" in await new(bot, "autumn", "--route", "default")
        await approve(bot, "autumn")
        assert received(smtp) == Counter({e: 1 for e in CONSENTED})
        assert len(bulk.messages) == len(CONSENTED)


async def test_an_unknown_route_is_refused_with_the_routes_there_are_and_changes_nothing(
    make_bot, smtp
) -> None:  # type: ignore[no-untyped-def]
    bot = await make_bot({"bulk": route(free_port())})
    sentence = "There is no SMTP route “bluk”; the routes configured are: default, bulk."
    reply = await new(bot, "spring", "--route", "bluk")
    assert reply.startswith(sentence) and "Traceback" not in reply, reply
    async with bot.core.ctx.sessions() as session:
        assert (await session.execute(select(Campaign.id))).first() is None

    assert "Draft campaign" in await new(bot, "spring", "--route", "bulk")
    before = await campaign(bot, "spring")
    reply = await bot.say(SENDER, "/campaign edit spring --route bluk --subject Changed")
    assert reply.startswith(sentence), reply
    after = await campaign(bot, "spring")
    assert (after.route, after.subject, after.state) == ("bulk", before.subject, "draft")

    reply = await bot.say(
        SENDER, "/automation new welcome --on confirmed:customers --template welcome --route bluk"
    )
    assert reply.startswith(sentence), reply
    reply = await bot.say(
        SENDER, "/automation new welcome --on confirmed:customers --template welcome --route bulk"
    )
    assert "Draft automation" in reply, reply
    assert (await campaign(bot, service.AUTOMATION_PREFIX + "welcome")).route == "bulk"


async def test_the_route_is_part_of_the_approval_an_edit_after_approval_voids_it(make_bot, smtp) -> None:  # type: ignore[no-untyped-def]
    with SmtpServer() as bulk:
        bot = await make_bot({"bulk": route(bulk.port)})
        assert "Draft campaign" in await new(bot, "spring")
        later = (datetime.now(UTC) + timedelta(days=2)).replace(microsecond=0).isoformat()
        assert "Submitted" in await bot.say(SENDER, f"/campaign submit spring --at {later}")
        assert "Approved" in await bot.say(APPROVER, "/approve spring")
        assert await state_of(bot, "spring") == "scheduled"
        approved = await campaign(bot, "spring")
        ctx = bot.core.ctx
        reply = await bot.say(SENDER, "/campaign edit spring --route bulk")
        assert "(--route)" in reply and "approval request is void" in reply, reply
        edited = await campaign(bot, "spring")
        assert (edited.state, edited.content_hash, edited.route) == ("draft", None, "bulk")
        # The hash an approval is bound to differs once the route is named: an approval of the campaign
        # on [smtp] can never send it by another route.
        assert service.current_hash(ctx, edited) != service.current_hash(ctx, approved)
        assert bulk.messages == [] and smtp.messages == []


async def test_a_wrong_password_on_one_route_pauses_only_its_campaigns(make_bot, smtp) -> None:  # type: ignore[no-untyped-def]
    with FaultyServer(auth=True) as bulk:
        bad = route(bulk.port, username=USERNAME, password="wrong-password")
        bot = await make_bot({"bulk": bad})
        assert "Draft campaign" in await new(bot, "spring", "--route", "bulk")
        assert "Draft campaign" in await new(bot, "autumn")
        await approve(bot, "spring")
        await approve(bot, "autumn")
        assert await state_of(bot, "spring") == "paused"
        assert await state_of(bot, "autumn") == "completed"
        assert received(smtp) == Counter({e: 1 for e in CONSENTED})
        assert bulk.messages == []
        status = await bot.say(SENDER, "/campaign status spring")
        assert f"127.0.0.1:{bulk.port} (smtp.routes.bulk) refused Postroom's login (535" in status, status

        # The admin fixes the route's password; a resume sends everyone once, by that route.
        bot = await make_bot({"bulk": {**bad, "password": PASSWORD}})
        assert "Resumed" in await bot.say(SENDER, "/campaign resume spring")
        await bot.settle()
        assert await state_of(bot, "spring") == "completed"
        assert received(bulk) == Counter({e: 1 for e in CONSENTED})
        assert len(smtp.messages) == len(CONSENTED)


# Review: a named route that refused the login paused with "Check smtp.username and smtp.password" — the
# settings of [smtp], which were right — instead of the route's own.
ROUTE_FAULTS: dict[str, tuple[dict[str, Any], str, str]] = {
    # case: (how the bulk relay is broken, the settings it names in English, and in Chinese)
    "wrong password (535 at AUTH)": (
        {"password": "wrong-password"},
        "Check smtp.routes.bulk.username and smtp.routes.bulk.password.",
        "请检查 smtp.routes.bulk.username 和 smtp.routes.bulk.password。",
    ),
    "relay access denied (554 5.7.1 at RCPT)": (
        {"rcpt_reply": "554 5.7.1 Relay access denied"},
        "Check smtp.routes.bulk.username and smtp.routes.bulk.password, and that",
        "请检查 smtp.routes.bulk.username 和 smtp.routes.bulk.password，",
    ),
    "misconfigured relay (500 at DATA)": (
        {"data_reply": "500 Error: command not recognized"},
        "Check that smtp.routes.bulk.host and smtp.routes.bulk.port point at",
        "请检查 smtp.routes.bulk.host 和 smtp.routes.bulk.port 是否",
    ),
    "connection refused": (
        {},
        "Check smtp.routes.bulk.host, smtp.routes.bulk.port and smtp.routes.bulk.starttls,",
        "请检查 smtp.routes.bulk.host、smtp.routes.bulk.port 和 smtp.routes.bulk.starttls，",
    ),
}


@pytest.mark.parametrize("case", list(ROUTE_FAULTS))
async def test_a_routes_pause_sentence_names_the_routes_own_settings(make_bot, smtp, case: str) -> None:  # type: ignore[no-untyped-def]
    broken, english, chinese = ROUTE_FAULTS[case]
    broken = dict(broken)  # a copy: the case runs once per database
    server = FaultyServer(auth=True)
    password = broken.pop("password", PASSWORD)
    for attr, value in broken.items():
        setattr(server.handler, attr, value)
    if case != "connection refused":
        server.__enter__()
    try:
        bot = await make_bot({"bulk": route(server.port, username=USERNAME, password=password)})
        assert "Draft campaign" in await new(bot, "spring", "--route", "bulk")
        await approve(bot, "spring")
        assert await state_of(bot, "spring") == "paused"
        status = await bot.say(SENDER, "/campaign status spring")
        assert english in status, status
        assert "smtp.username" not in status and "smtp.host" not in status, status
        with i18n.using("zh_CN"):
            shown = notes.show((await campaign(bot, "spring")).status_note)
        assert chinese in shown, shown
    finally:
        if case != "connection refused":
            server.__exit__()


async def test_a_route_removed_from_the_configuration_pauses_its_campaign_with_a_sentence(
    make_bot, smtp
) -> None:  # type: ignore[no-untyped-def]
    bot = await make_bot({"bulk": route(free_port())})
    assert "Draft campaign" in await new(bot, "spring", "--route", "bulk")
    later = (datetime.now(UTC) + timedelta(days=2)).replace(microsecond=0).isoformat()
    assert "Submitted" in await bot.say(SENDER, f"/campaign submit spring --at {later}")
    assert "Approved" in await bot.say(APPROVER, "/approve spring")
    bot = await make_bot({})  # restarted without [smtp.routes.bulk]
    async with bot.core.ctx.sessions() as session, session.begin():
        await session.execute(text("UPDATE campaigns SET state = 'sending' WHERE name = 'spring'"))
    bot.app.runs.start((await campaign(bot, "spring")).id, "test")
    await bot.settle()
    assert await state_of(bot, "spring") == "paused"
    status = await bot.say(SENDER, "/campaign status spring")
    assert "SMTP route “bulk”, which is no longer configured (there are: default)" in status, status
    assert smtp.messages == []


# Review: `"example.com." = "bulk"` (the absolute form DNS tools print) matched no sender: the campaign left
# by [smtp], and nothing said so.
def test_domain_routes_keys_in_upper_case_or_with_a_trailing_dot_match_and_two_for_one_domain_are_refused(
    tmp_path: Path,
) -> None:
    path = tmp_path / "postroom.toml"
    routes = '[smtp.routes.bulk]\nhost = "smtp.bulk.example"\nport = 587\n'
    path.write_text('[smtp]\ndomain_routes = {"News.ACME.example." = "bulk"}\n' + routes)
    s = load_settings(path)
    assert s.smtp.domain_routes == {"news.acme.example": "bulk"}
    assert s.smtp.route_for(None, "news@news.acme.example") == "bulk"
    assert s.smtp.route_for(None, "News@NEWS.Acme.Example") == "bulk"
    assert s.smtp.route_for(None, "news@acme.example") == "default"

    path.write_text(
        '[smtp]\ndomain_routes = {"acme.example" = "bulk", "Acme.Example." = "default"}\n' + routes
    )
    with pytest.raises(ConfigError) as refused:
        load_settings(path)
    said = str(refused.value)
    assert "domain_routes names 'acme.example' and 'Acme.Example.', which are the same domain" in said, said
    assert "Traceback" not in said


def test_routes_come_from_toml_tables_and_the_environment(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "postroom.toml"
    path.write_text(
        '[smtp]\ndomain_routes = {"News.Acme.example" = "bulk"}\n'
        '[smtp.routes.bulk]\nhost = "smtp.bulk.example"\nport = 587\nrate_per_s = 20\n'
    )
    monkeypatch.setenv("POSTROOM_SMTP__ROUTES__BULK__PASSWORD", "from-the-env")
    monkeypatch.setenv("POSTROOM_SMTP__ROUTES__TX__HOST", "smtp.tx.example")
    monkeypatch.setenv("POSTROOM_SMTP__ROUTES__TX__PORT", "25")
    monkeypatch.setenv("POSTROOM_RELAY__ROUTE", "tx")
    s = load_settings(path)
    bulk, tx = s.smtp.routes["bulk"], s.smtp.routes["tx"]
    assert (bulk.host, bulk.port, bulk.password, bulk.rate_per_s) == (
        "smtp.bulk.example",
        587,
        "from-the-env",
        20,
    )
    assert (tx.host, tx.port, tx.rate_per_s) == ("smtp.tx.example", 25, None)
    assert s.smtp.route_names() == ["default", "bulk", "tx"] and s.relay.route == "tx"
    assert s.smtp.route_for(None, "news@news.acme.example") == "bulk"
    assert s.smtp.route_for(None, "news@acme.example") == "default"

    monkeypatch.setenv("POSTROOM_RELAY__ROUTE", "nope")
    with pytest.raises(ConfigError, match=r"relay.route is 'nope', which is not configured \(there are: "):
        load_settings(path)
    for name in (
        "RELAY__ROUTE",
        "SMTP__ROUTES__BULK__PASSWORD",
        "SMTP__ROUTES__TX__HOST",
        "SMTP__ROUTES__TX__PORT",
    ):
        monkeypatch.delenv("POSTROOM_" + name)
    path.write_text('[smtp]\ndomain_routes = {"acme.example" = "bulk"}\n')
    with pytest.raises(ConfigError, match=r"route 'bulk', which is not configured \(there are: default\)"):
        load_settings(path)
    path.write_text('[smtp.routes.default]\nhost = "x.example"\nport = 25\n')
    with pytest.raises(ConfigError, match=r"route 'default' is \[smtp\] itself"):
        load_settings(path)


async def test_the_migration_keeps_existing_campaigns_on_the_default_route(
    database_url: str, tmp_path: Path
) -> None:
    from alembic import command

    from bot.db.engine import alembic_config, upgrade

    if database_url.startswith("sqlite"):
        database_url = f"sqlite+aiosqlite:///{tmp_path / 'old.db'}"
    engine = create_async_engine(database_url)

    def to_0014(conn):  # type: ignore[no-untyped-def]
        cfg = alembic_config()
        cfg.attributes["connection"] = conn
        if conn.dialect.name == "postgresql":  # the session's database, migrated to head: step back
            command.downgrade(cfg, "0014")
        else:  # a new file
            command.upgrade(cfg, "0014")

    try:
        async with engine.begin() as conn:
            await conn.run_sync(to_0014)
            await conn.execute(
                text(
                    "INSERT INTO campaigns (name, state, template, subject, audience_kind, audience_name, "
                    "from_address, created_by, kind, submission, tracking, created_at, updated_at) VALUES "
                    "('old', 'completed', 'welcome', 'Hi', 'list', 'customers', 'news@corp.example', "
                    "'s@corp.example', 'campaign', 0, true, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
                )
            )
        before, after = await upgrade(engine)
        assert (before, after) == ("0014", "0016")
        async with engine.connect() as conn:
            rows = (await conn.execute(text("SELECT name, route FROM campaigns"))).all()
        assert [tuple(r) for r in rows] == [("old", None)]
        settings = load_settings(read_file=False, database={"url": database_url})
        assert settings.smtp.route_for(rows[0].route, "news@corp.example") == "default"
    finally:
        await engine.dispose()


async def test_serve_names_each_route_and_warns_about_each_one_that_cannot_be_reached(
    make_bot, smtp, capsys
) -> None:  # type: ignore[no-untyped-def]
    from bot.app import Runtime
    from bot.cli import _warn_about_relay, startup_lines
    from bot.doctor import Doctor, Lookup
    from bot.mail.dkim import DkimSigner

    nobody = free_port()
    with FaultyServer(auth=True) as tx:
        routes = {
            "bulk": route(nobody, rate_per_s=20, connections=8),
            "tx": route(tx.port, username=USERNAME, password="wrong-password"),
        }
        bot = await make_bot(routes, domain_routes={"news.acme.example": "bulk"})
        settings = bot.core.ctx.settings
        (line,) = [x for x in startup_lines(settings, Runtime(bot.app)) if x.startswith("Mail routes: ")]
        assert line == (
            f"Mail routes: default 127.0.0.1:{smtp.port} (2 connections, no rate limit) for group mail; "
            f"bulk 127.0.0.1:{nobody} (8 connections, 20/s) for news.acme.example; "
            f"tx 127.0.0.1:{tx.port} (2 connections, no rate limit, login {USERNAME})"
        )
        await _warn_about_relay(settings)
        warned = [x for x in capsys.readouterr().err.splitlines() if x.startswith("Warning:")]
        assert len(warned) == 2, warned
        assert warned[0].startswith(
            f"Warning: The mail relay at 127.0.0.1:{nobody} (smtp.routes.bulk) can't be"
        )
        assert warned[0].endswith(
            "check smtp.routes.bulk.host and smtp.routes.bulk.port (campaign mail and group posts wait until it answers)."
        )
        assert "(smtp.routes.tx) refused Postroom's login (535" in warned[1]
        assert warned[1].endswith("check smtp.routes.tx.username and smtp.routes.tx.password.")

        findings = await Doctor(settings, DkimSigner([]), Lookup()).relays()
        assert [(f.status, f.subject) for f in findings] == [
            ("ok", f"127.0.0.1:{smtp.port}"),
            ("fix", f"127.0.0.1:{nobody} (smtp.routes.bulk)"),
            ("fix", f"127.0.0.1:{tx.port} (smtp.routes.tx)"),
        ]


async def test_group_mail_leaves_by_relay_route(database_url: str, smtp, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import aiosmtplib

    from bot.app import Runtime
    from bot.hr.importer import import_staff
    from tests.group_mail_kit import fanned_out
    from tests.lifecycle_kit import lifecycle_bot
    from tests.test_group_relay import STAFF, mail

    with SmtpServer() as internal:
        sections = {
            "relay": {"enabled": True, "host": "127.0.0.1", "port": free_port(), "route": "internal"},
            "smtp": {"routes": {"internal": route(internal.port)}},
        }
        async for bot in lifecycle_bot(database_url, smtp.port, tmp_path, **sections):
            runtime = Runtime(bot.app)
            await runtime.start_services()
            try:
                (tmp_path / "staff.csv").write_text(STAFF)
                await import_staff(bot.app.lifecycle, tmp_path / "staff.csv")
                port = runtime.mail_server.port  # type: ignore[union-attr]
                msg = mail("alice@corp.example", ["eng@corp.example"])
                errors, _reply = await aiosmtplib.send(msg, hostname="127.0.0.1", port=port)
                assert errors == {}
                await fanned_out(bot.app)
            finally:
                await runtime.stop_services()
        assert sorted(r for m in internal.messages for r in m.rcpt_tos) == [
            "alice@corp.example",
            "bob@corp.example",
        ]
        assert smtp.messages == [], "group mail did not go by [smtp]"


def test_a_routes_password_is_judged_and_masked_like_smtp_password() -> None:
    import secrets

    from bot.log_masking import settings_secrets
    from bot.secret_policy import serving_problem

    web = {"secret": secrets.token_urlsafe(32)}
    published = {"bulk": {"host": "smtp.bulk.example", "port": 587, "password": "app-secret"}}
    settings = load_settings(read_file=False, read_env=False, web=web, smtp={"routes": published})
    said = serving_problem(settings) or ""
    assert said.startswith("smtp.routes.bulk.password appears in Postroom's own source"), said
    assert "$POSTROOM_SMTP__ROUTES__BULK__PASSWORD" in said and "app-secret" not in said

    chosen = "pw-" + secrets.token_hex(8)
    fine = {"bulk": {**published["bulk"], "password": chosen}}
    settings = load_settings(read_file=False, read_env=False, web=web, smtp={"routes": fine})
    assert serving_problem(settings) is None
    assert chosen in settings_secrets(settings)  # masked in every log line, as smtp.password is
