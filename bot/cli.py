"""The `postroom` command: demo, chat, serve, db, contacts, hr, groups, providers, dkim, doctor."""

from __future__ import annotations

import gc
import logging
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

# Nothing heavy at import: `postroom --help`, `postroom init` and a mistyped option must not pay for
# pydantic's settings models, SQLAlchemy or Alembic. Each command imports what it uses.
if TYPE_CHECKING:
    from bot.app import App, Runtime
    from bot.config import Settings


NO_CONFIGURATION = (
    "No configuration: there is no postroom.toml in this folder and neither --config nor POSTROOM_CONFIG "
    "names one, so Postroom would start a new, empty database (./postroom.db) here. Run it from the "
    "folder `postroom init` wrote its postroom.toml in, or pass --config <file>."
)


def _settings(config: str | None, *, needs_configuration: bool = True) -> Settings:
    from bot import log_masking
    from bot.config import ConfigError, config_path, load_settings

    if needs_configuration and config_path(config) is None and not os.environ.get("POSTROOM_DATABASE__URL"):
        raise click.ClickException(NO_CONFIGURATION)
    try:
        settings = load_settings(config)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    log_masking.remember_secrets(log_masking.settings_secrets(settings))
    return settings


def run_coroutine(coro):
    """Run the main coroutine on uvloop when it is installed (faster I/O: the send engine gains
    about a fifth), else on asyncio's own loop."""
    import asyncio

    if _gc_paused_for_startup:
        coro = _collecting_after_the_first_step(coro)
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


# A `postroom` process spends about a third of a short command's CPU in the cyclic garbage collector: the
# ~900 modules it imports and the app it wires are scanned again by each collection while they load, and
# all of them once more as the interpreter exits. None of it is garbage. So the process itself (not a
# command invoked in another program's process, as tests do with CliRunner) pauses the collector while
# it starts, freezes what the start made (gc.freeze: never scanned again) and resumes collecting once the
# command's first step, its imports and wiring up to its first wait, is done; at exit it freezes again.
_gc_paused_for_startup = False


class _Postroom(click.Group):
    def main(self, args: Any = None, *rest: Any, **options: Any) -> Any:
        global _gc_paused_for_startup
        if args is None and gc.isenabled():  # the command line of this process: the `postroom` script
            gc.disable()
            _gc_paused_for_startup = True
            import atexit

            atexit.register(gc.freeze)
        return super().main(args, *rest, **options)


def _resume_collecting() -> None:
    global _gc_paused_for_startup
    if _gc_paused_for_startup:
        _gc_paused_for_startup = False
        gc.freeze()
        gc.enable()


async def _collecting_after_the_first_step(coro: Any) -> Any:
    import asyncio

    # Runs once this task first waits, so after the imports and wiring the command does before that.
    asyncio.get_running_loop().call_soon(_resume_collecting)
    return await coro


def _count(n: int, noun: str) -> str:
    """ "1 contact", "2 contacts": CLI text is English."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _per_list(export: Any) -> str:
    return (
        f" ({_count(export.rows, 'row')}, one per contact and list)" if export.rows != export.contacts else ""
    )


def _write_private(output: str, text: str) -> None:
    """Write personal data readable by the owner only; a path that can't be written is a sentence."""
    try:
        fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
    except OSError as exc:
        raise click.ClickException(f"Can't write {output}: {exc.strerror or exc}.") from None


class _OutputThatMayClose:
    """Standard output whose reader may go away (`postroom chat … | head -1`). Once it has, the rest is
    dropped rather than stopping the command halfway: what the command changes, and the background work it
    starts (a campaign send), still finish, and it exits as it would have, without a traceback. The reader
    chose to stop reading; that is not the command's failure."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.gone = False

    def write(self, text: str) -> int:
        if not self.gone:
            try:
                self.stream.write(text)
            except BrokenPipeError:
                self._went_away()
        return len(text)

    def flush(self) -> None:
        if not self.gone:
            try:
                self.stream.flush()
            except BrokenPipeError:
                self._went_away()

    def _went_away(self) -> None:
        self.gone = True
        # Python flushes stdout once more on its way out: give that flush somewhere it cannot fail.
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, self.stream.fileno())
        finally:
            os.close(devnull)


def _run(coro, settings: Settings | None = None) -> None:
    from sqlalchemy.exc import InterfaceError, OperationalError

    from bot.config import ConfigError
    from bot.db.engine import DatabaseUnreachable, SchemaError
    from bot.errors import UserError

    try:
        run_coroutine(coro)
    except (ConfigError, SchemaError, UserError, DatabaseUnreachable) as exc:
        raise click.ClickException(getattr(exc, "sentence", None) or str(exc)) from None
    except BrokenPipeError:
        raise  # standard output's reader went away: not a start-up failure; click exits quietly
    except (OperationalError, InterfaceError, OSError) as exc:
        # A database that can't be opened or reached, a port already taken: a sentence, not a traceback.
        if settings is None:
            raise
        raise click.ClickException(_unreachable(settings, exc)) from None
    except KeyboardInterrupt:
        pass


def _unreachable(settings: Settings, exc: BaseException) -> str:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import DBAPIError

    from bot.db.engine import unreachable_sentence

    reason = " ".join(str(getattr(exc, "orig", None) or exc).split())[:200].rstrip(".")
    if isinstance(exc, DBAPIError) or "Connect call failed" in reason:  # asyncpg raises it raw
        return unreachable_sentence(make_url(settings.database.url), exc)
    return f"Postroom could not start: {reason}."


@click.group(cls=_Postroom, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config",
    envvar="POSTROOM_CONFIG",
    type=click.Path(dir_okay=False),
    help="TOML configuration file (default ./postroom.toml).",
)
@click.option("-v", "--verbose", is_flag=True, help="Log more.")
@click.pass_context
def main(ctx: click.Context, config: str | None, verbose: bool) -> None:
    """Postroom: email groups (internal) and approved campaigns (external), run from chat."""
    from bot import log_masking

    log_masking.install()  # before anything logs: no credential in a log line, -v or not
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    ctx.obj = {"config": config}


# -- init ---------------------------------------------------------------------------------------
@main.command()
@click.option("--org-name", default=None, help="The organisation's name: the From name of campaign mail.")
@click.option(
    "--domain", "domains", multiple=True, help="A mail domain of the organisation (repeat for more)."
)
@click.option("--base-url", default=None, help="The public https URL of Postroom's web app.")
@click.option("--postal-address", default=None, help="The postal address every campaign message shows.")
@click.option(
    "-o",
    "--output",
    default="postroom.toml",
    show_default=True,
    type=click.Path(dir_okay=False),
    help="The file to write.",
)
@click.option("--force", is_flag=True, help="Overwrite the file if it exists.")
def init(
    org_name: str | None,
    domains: tuple[str, ...],
    base_url: str | None,
    postal_address: str | None,
    output: str,
    force: bool,
) -> None:
    """Write a starter postroom.toml with generated secrets (mode 0600)."""
    from bot.config import ConfigError
    from bot.starter_config import Starter
    from bot.starter_config import init as write_starter

    if base_url is not None and not base_url.startswith(("http://", "https://")):
        raise click.BadParameter("must start with https:// (or http://).", param_hint="--base-url")
    org_name, postal_address, domains = _init_org_values(org_name, postal_address, domains)
    path = Path(output)
    starter = Starter(org_name, domains, base_url.rstrip("/") if base_url else None, postal_address)
    try:
        write_starter(path, starter, force=force)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"Wrote {path} (readable by you only) with a generated web.secret.")
    org_missing = [
        k
        for k, v in (("org.name", org_name), ("org.domains", domains), ("org.postal_address", postal_address))
        if not v
    ]
    missing = org_missing + ([] if base_url else ["web.base_url"])
    if org_missing:
        click.echo(
            f"Fill in {', '.join(missing)} (postroom serve and postroom chat refuse to start without "
            f"{', '.join(org_missing)}), then [smtp] (your mail server) and [roles] (who may do what)."
        )
    elif missing:
        click.echo(
            f"Fill in {', '.join(missing)}, then [smtp] (your mail server) and [roles] (who may do what)."
        )
    else:
        click.echo("Next: fill in [smtp] (your mail server) and [roles] (who may do what).")
    click.echo(f"Then run: postroom --config {path} serve")


def _init_org_values(
    org_name: str | None, postal_address: str | None, domains: tuple[str, ...]
) -> tuple[str | None, str | None, tuple[str, ...]]:
    """init's --org-name, --postal-address and --domain, checked as [org] checks them (nothing is written
    when one is refused)."""
    from bot.config import (
        MAX_ORG_NAME,
        MAX_POSTAL_ADDRESS,
        PLACEHOLDER_DOMAIN,
        PLACEHOLDER_ORG_NAME,
        PLACEHOLDER_POSTAL_ADDRESS,
        domain_problem,
        normalise_domain,
        org_text_problem,
    )

    checked: list[str | None] = []
    for value, hint, limit, placeholder in (
        (org_name, "--org-name", MAX_ORG_NAME, PLACEHOLDER_ORG_NAME),
        (postal_address, "--postal-address", MAX_POSTAL_ADDRESS, PLACEHOLDER_POSTAL_ADDRESS),
    ):
        if value is None:
            checked.append(None)
            continue
        value = value.strip()
        problem = org_text_problem(value, limit)
        if problem is None and value.casefold() == placeholder.casefold():
            problem = "must be your organisation's own, not the placeholder"
        if problem:
            raise click.BadParameter(problem + ".", param_hint=hint)
        checked.append(value)
    normalised = []
    for domain in domains:
        d = normalise_domain(domain)
        problem = domain_problem(d)
        if problem is None and d == PLACEHOLDER_DOMAIN:
            problem = "is the placeholder; give your organisation's own mail domain"
        if problem:
            raise click.BadParameter(f"{domain!r} {problem}.", param_hint="--domain")
        normalised.append(d)
    return checked[0], checked[1], tuple(normalised)


# -- demo ---------------------------------------------------------------------------------------
@main.command()
@click.option(
    "--dir", "folder", default=".postroom-demo", show_default=True, help="Where the demo keeps its data."
)
@click.option("--fresh", is_flag=True, help="Start clean even if a demo folder exists.")
@click.option("--as", "as_email", default=None, help="Start as this person (default: the HR person).")
def demo(folder: str, fresh: bool, as_email: str | None) -> None:
    """Run Postroom on embedded defaults with a seeded organisation, in a console chat."""
    _run(_demo(folder, fresh, as_email))


async def _demo(folder: str, fresh: bool, as_email: str | None) -> None:
    from bot import demo as d
    from bot.app import Runtime, build_app, load_adapter
    from bot.mail.server import Mailbox

    plan = d.prepare(folder, fresh=fresh)
    s = plan.settings
    app = await build_app(s)
    runtime = Runtime(app)
    try:
        await d.seed(app, plan.folder)
        mailbox = Mailbox(s.relay.mailbox_dir or plan.folder / "mailbox")
        await runtime.start_services(mailbox=mailbox)
        await runtime.start_web(s.web.host, s.web.port)
        console = load_adapter("console", s, as_email=as_email or d.HR)
        assert console is not None
        app.attach(console)
        await console.start(app.core)
        resumed = await _sending(app)
        state = (
            "a fresh start"
            if plan.fresh
            else "resuming the previous demo (postroom demo --fresh starts clean)"
        )
        click.echo(f"Postroom demo — {s.org.name}, {state}.")
        click.echo(
            f"Data: {plan.folder}   Web: {s.web.base_url}   SMTP (embedded): 127.0.0.1:{s.relay.port}   "
            f"Mailbox: {mailbox.dir}"
        )
        if resumed:
            click.echo(f"Resuming campaigns that were sending: {', '.join(resumed)}")
        click.echo(d.guide(s.web.base_url))
        await console.repl()  # type: ignore[attr-defined]
        if len(app.runs.background):
            click.echo("Waiting for background sends to finish…")
            await app.drain()
    finally:
        await runtime.stop()


# -- chat ---------------------------------------------------------------------------------------
@main.command()
@click.option("--as", "as_email", required=True, help="Run the command as this person (an email address).")
@click.argument("text", nargs=-1, required=True)
@click.pass_context
def chat(ctx: click.Context, as_email: str, text: tuple[str, ...]) -> None:
    """Run one chat command through the console adapter and print the bot's reply.

    Background work the command starts (a campaign send) finishes before it exits. Exits 1 when the
    command is refused or fails (nothing changed).
    """
    from bot.addresses import normalise
    from bot.config import org_problem, sender_problem
    from bot.errors import UserError

    try:
        as_email = normalise(as_email, existing=True)
    except UserError as exc:
        raise click.BadParameter(exc.sentence, param_hint="--as") from None
    settings = _settings(ctx.obj["config"])
    problem = org_problem(settings, "chat") or sender_problem(settings, "chat")
    if problem is not None:
        raise click.ClickException(problem)
    refused: list[int] = []
    _run(_chat(settings, as_email, " ".join(text), refused), settings)
    if refused and refused[0]:
        sys.exit(1)


async def _chat(settings: Settings, as_email: str, text: str, refused: list[int]) -> None:
    from bot.app import build_app, load_adapter

    app = await build_app(settings)
    try:
        out = _OutputThatMayClose(sys.stdout)
        console = load_adapter("console", settings, as_email=as_email, prompt=False, out=out)
        assert console is not None
        app.attach(console)
        await console.start(app.core)
        await console.say(text)  # type: ignore[attr-defined]
        refused.append(console.refused)  # type: ignore[attr-defined]
        await app.drain()
    finally:
        await app.close()


# -- serve --------------------------------------------------------------------------------------
@main.command()
@click.pass_context
def serve(ctx: click.Context) -> None:
    """Run the configured adapters, the web app, the mail server and the scheduler until stopped."""
    from bot.config import example_problem, org_problem, sender_problem
    from bot.secret_policy import serving_problem

    settings = _settings(ctx.obj["config"])
    # Before anything opens: a forgeable secret serves nothing, and placeholders in [org] mail nobody.
    problem = (
        serving_problem(settings)
        or org_problem(settings, "serve")
        or example_problem(settings, "serve")
        or sender_problem(settings, "serve")
    )
    if problem is not None:
        raise click.ClickException(problem)
    _run(_serve(settings), settings)


async def _sending(app: App) -> list[str]:
    """Names of campaigns left `sending` by a stop or a crash; CampaignWatcher carries them on."""
    from sqlalchemy import select

    from bot.db.models import Campaign

    async with app.ctx.sessions() as session:
        return list(
            (
                await session.execute(
                    select(Campaign.name).where(Campaign.state == "sending").order_by(Campaign.id)
                )
            )
            .scalars()
            .all()
        )


async def _serve(settings: Settings) -> None:
    import asyncio

    from bot.app import Runtime, build_app, configured_adapters

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    app = await build_app(settings)
    runtime = Runtime(app)
    try:
        runtime.bind_web(settings.web.host, settings.web.port)  # a taken port stops us before anything runs
        adapters = configured_adapters(settings)
        for adapter in adapters:
            app.attach(adapter)
        await runtime.start_services()
        # The adapters start before the web app answers: a callback (WeCom, Slack's HTTP mode) that /healthz
        # let through must find its adapter ready, and a refused bot token stops serve before it is reachable.
        for adapter in adapters:
            await adapter.start(app.core)
        await runtime.start_web(settings.web.host, settings.web.port)
        resumed = await _sending(app)  # the campaign watcher (started with the services) resumes them
        names = ", ".join(a.platform for a in adapters) or "no messenger (configure one; see README)"
        click.echo(
            f"Postroom serving: adapters: {names}; web {settings.web.base_url}"
            + (f"; resumed {', '.join(resumed)}" if resumed else ""),
            err=True,
        )
        for line in startup_lines(settings, runtime):
            click.echo(line, err=True)
        # A relay that is down, or a wrong host, port or password, is said now, not at the first send; serve
        # runs on regardless (the relay may come up later, and mail waits for it).
        relay_check = asyncio.create_task(_warn_about_relay(settings))
        await stop.wait()
        relay_check.cancel()
        click.echo("Stopping…", err=True)
    finally:
        await runtime.stop()


async def _warn_about_relay(settings: Settings) -> None:
    import asyncio

    from bot.mail.probe import relay_problem
    from bot.mail.transport import SmtpTarget

    smtp = settings.smtp
    targets = [SmtpTarget.from_settings(smtp.server(r), r) for r in smtp.route_names()]
    # Every route at once: one that is down is said without waiting out the others' timeouts.
    for problem in await asyncio.gather(*(relay_problem(target) for target in targets)):
        if problem is not None:
            click.echo(f"Warning: {problem}", err=True)


def route_lines(settings: Settings) -> list[str]:
    """Each outbound SMTP route, what takes it and its server: "bulk smtp.example:587 (8 connections, 20/s,
    login bulk@…): news.acme.example"."""
    smtp, c = settings.smtp, settings.campaigns
    out = []
    for name in smtp.route_names():
        server = smtp.server(name)
        assert server is not None
        rate = server.rate_per_s if server.rate_per_s is not None else c.rate_per_s
        details = [f"{server.connections} connections", f"{rate:g}/s" if rate else "no rate limit"]
        if server.username:
            details.append(f"login {server.username}")
        if server.starttls:
            details.append("STARTTLS")
        takes = sorted(d for d, r in smtp.domain_routes.items() if r == name)
        if settings.relay.route == name:
            takes.append("group mail")
        text = f"{name} {server.host}:{server.port} ({', '.join(details)})"
        out.append(text + (f" for {', '.join(takes)}" if takes else ""))
    return out


def startup_lines(settings: Settings, runtime: Runtime) -> list[str]:
    """What an operator checks first: who the mail says it is from, and where Postroom listens."""
    c = settings.campaigns
    lines = [
        f"Campaign mail: From: {c.from_name} <{c.from_address}>; Return-Path: bounces+…@{c.bounce_domain}; "
        f"List-Unsubscribe: {settings.web.base_url}/u/…, mailto:{c.unsubscribe_mailbox}"
    ]
    lines.append("Mail routes: " + "; ".join(route_lines(settings)))
    listening = []
    if runtime.web_socket is not None:
        host, port = runtime.web_socket.getsockname()[:2]
        listening.append(f"web {host}:{port}")
    if runtime.mail_server is not None:
        listening.append(f"SMTP relay {runtime.mail_server.host}:{runtime.mail_server.port}")
    else:
        listening.append("SMTP relay off (relay.enabled = false)")
    policy = runtime.app.group_mail.policy.listening()
    if policy is not None:
        listening.append(f"Postfix policy service {policy}")
    lines.append("Listening: " + "; ".join(listening))
    from bot.config import sender_warnings

    lines += [f"Warning: {w}" for w in sender_warnings(settings)]
    dkim = runtime.app.ctx.dkim
    if dkim:
        lines.append("DKIM signing: " + ", ".join(k.describe() for k in dkim.keys))
    sending = c.from_address.rsplit("@", 1)[-1].lower()
    if not (dkim and dkim.keys_for(sending)):
        lines.append(
            f"DKIM signing: no key for {sending}, so campaign mail leaves unsigned unless the relay signs it; "
            f"postroom dkim keygen {sending} <selector> makes one (README, DKIM)."
        )
    for k in dkim.keys if dkim else ():
        if k.algorithm == "rsa-sha256" and k.bits < 2048:
            lines.append(f"Warning: the DKIM key {k.describe()} is shorter than 2048 bits: make a new one.")
    events = settings.email_events
    services = [
        name
        for name, on in (
            ("ses", bool(events.ses.topic_arns)),
            ("sendgrid", bool(events.sendgrid.public_key)),
            ("mailgun", bool(events.mailgun.signing_key)),
            ("postmark", bool(events.postmark.password)),
        )
        if on
    ]
    if services:
        lines.append("Email service webhooks: " + ", ".join(f"/hooks/{name}" for name in services))
    if events.ses.unsafe_cert_url_pattern:
        lines.append(
            "Warning: email_events.ses.unsafe_cert_url_pattern is set, so SNS signing certificates are "
            f"fetched from any URL matching {events.ses.unsafe_cert_url_pattern!r} instead of only "
            "https://sns.<region>.amazonaws.com: anyone who can serve such a URL can forge SES bounces. "
            "It is for tests against a local fake; remove it."
        )
    return lines


# -- db -----------------------------------------------------------------------------------------
@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@click.pass_context
def db_upgrade(ctx: click.Context) -> None:
    """Apply every pending migration."""
    settings = _settings(ctx.parent.obj["config"] if ctx.parent and ctx.parent.obj else None)

    async def go() -> None:
        from bot.db.engine import make_engine, upgrade

        engine = make_engine(settings.database.url)
        try:
            before, after = await upgrade(engine)
        finally:
            await engine.dispose()
        if before == after:
            click.echo(f"The schema is up to date ({after}).")
        else:
            click.echo(f"Upgraded the schema from {before or 'empty'} to {after}.")

    _run(go(), settings)


# -- contacts -----------------------------------------------------------------------------------
@main.group()
def contacts() -> None:
    """External contacts and their consent."""


@contacts.command("import")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--list", "list_name", required=True, help="The contact list to add them to (created if new).")
@click.option("--dry-run", is_flag=True, help="Check every row and say what would happen; change nothing.")
@click.pass_context
def contacts_import(ctx: click.Context, file: str, list_name: str, dry_run: bool) -> None:
    """Import contacts from a CSV: email, name, consent_at, consent_source, and attribute columns."""
    root = ctx.find_root()
    settings = _settings(root.obj["config"])

    async def go() -> None:
        from bot.app import build_app
        from bot.contacts.importer import import_contacts

        app = await build_app(settings)
        try:
            report = await import_contacts(app.ctx, Path(file), list_name, actor="cli", dry_run=dry_run)
        finally:
            await app.close()
        click.echo(report.summary())
        if (report.bad or report.internal) and not (report.added or report.updated):
            sys.exit(1)

    _run(go(), settings)


@contacts.command("export")
@click.option("--list", "list_name", default=None, help="Only this contact list (default: every contact).")
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False),
    default="-",
    show_default=True,
    help="File to write (- for standard output).",
)
@click.pass_context
def contacts_export(ctx: click.Context, list_name: str | None, output: str) -> None:
    """Write contacts as CSV with their consent columns and attributes (readable by contacts import)."""
    settings = _settings(ctx.find_root().obj["config"])

    async def go() -> None:
        from bot.app import build_app
        from bot.contacts.directory import export_csv

        app = await build_app(settings)
        try:
            export = await export_csv(app.ctx, list_name)
        finally:
            await app.close()
        text = export.text
        if output == "-":
            click.echo(text, nl=False)
        else:
            _write_private(output, text)
            click.echo(
                f"Wrote {_count(export.contacts, 'contact')} to {output}{_per_list(export)}.", err=True
            )

    _run(go(), settings)


# -- hr -----------------------------------------------------------------------------------------
@main.group()
def hr() -> None:
    """HR events: staff snapshots from an HRIS export."""


@hr.command("import")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--dry-run", is_flag=True, help="Print the plan and change nothing.")
@click.pass_context
def hr_import(ctx: click.Context, file: str, dry_run: bool) -> None:
    """Import a full staff snapshot (CSV: employee_id, email, name, attribute columns).

    Everyone missing from the file leaves; a plan removing too much waits for an approver.
    """
    settings = _settings(ctx.find_root().obj["config"])

    async def go() -> None:
        from bot.app import build_app
        from bot.hr.importer import import_staff

        app = await build_app(settings)
        bar = None
        shown = 0
        try:

            def progress(done: int, total: int) -> None:  # events are applied in runs: `done` so far
                nonlocal bar, shown
                if bar is None:
                    bar = click.progressbar(length=total, label="Applying HR events", file=sys.stderr)
                    bar.__enter__()
                bar.update(done - shown)
                shown = done

            result = await import_staff(
                app.lifecycle, Path(file), dry_run=dry_run, actor="cli", progress=progress
            )
        finally:
            if bar is not None:
                bar.__exit__(None, None, None)
            await app.close()
        click.echo(result.summary())
        if result.held is not None:
            click.echo(
                f"Approvers get a card in chat (from `postroom serve`), or an approver types /plan approve "
                f"{result.held}."
            )
            sys.exit(2)
        if result.not_applied:  # the file is not what Postroom now holds: a script must notice
            sys.exit(1)

    _run(go())


# -- groups -------------------------------------------------------------------------------------
@main.group("groups")
def groups_cli() -> None:
    """Email groups."""


@groups_cli.command("export")
@click.option("--format", "fmt", type=click.Choice(["postfix"]), required=True, help="What to write.")
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False),
    default="-",
    show_default=True,
    help="File to write (- for standard output).",
)
@click.pass_context
def groups_export(ctx: click.Context, fmt: str, output: str) -> None:
    """Write a Postfix virtual alias map of every group (run `postmap` on it)."""
    settings = _settings(ctx.find_root().obj["config"])

    async def go() -> None:
        from bot.app import build_app
        from bot.groups.export import postfix_virtual

        app = await build_app(settings)
        try:
            text = await postfix_virtual(app.ctx)
        finally:
            await app.close()
        if output == "-":
            click.echo(text, nl=False)
        else:
            try:
                Path(output).write_text(text, encoding="utf-8")
            except OSError as exc:
                raise click.ClickException(f"Can't write {output}: {exc.strerror or exc}.") from None
            click.echo(f"Wrote {output}; now run: postmap {output}", err=True)

    _run(go())


@groups_cli.command("plan")
@click.argument("plan_id", type=int)
@click.pass_context
def groups_plan(ctx: click.Context, plan_id: int) -> None:
    """Print a held membership plan whole: every change it holds, one a line (chat shows the first few)."""
    settings = _settings(ctx.find_root().obj["config"])

    async def go() -> None:
        from bot.app import build_app
        from bot.groups.membership import whole_plan

        app = await build_app(settings)
        try:
            text = await whole_plan(app.ctx, plan_id)
        finally:
            await app.close()
        click.echo(text, nl=False)

    _run(go(), settings)


@groups_cli.command("import")
@click.option(
    "--from", "provider", required=True, help="The provider to read: google, microsoft, wecom, ldap, mailman."
)
@click.option("--dry-run", is_flag=True, help="Print what would be imported and change nothing.")
@click.pass_context
def groups_import(ctx: click.Context, provider: str, dry_run: bool) -> None:
    """Adopt a platform's existing groups and memberships as Postroom's starting state."""
    settings = _settings(ctx.find_root().obj["config"])

    async def go() -> None:
        from bot.app import build_app
        from bot.groups.importer import import_groups
        from bot.groups.providers.base import ProviderError
        from bot.groups.providers.registry import LOCAL, NAMES

        platforms = ", ".join(n for n in NAMES if n != LOCAL)
        configured = settings.providers.configured()
        here = (
            f" (configured here: {', '.join(configured)})" if configured else " (none is configured here yet)"
        )
        if provider == LOCAL:
            raise click.ClickException(
                f"local is Postroom's own database, so there is nothing to import from it: import from a "
                f"platform where groups live, one of {platforms}{here}."
            )
        if provider not in NAMES:
            raise click.ClickException(
                f"There is no provider called {provider}: the platforms to import from are {platforms}{here}."
            )
        if provider not in configured:
            raise click.ClickException(
                f"The provider {provider} is not configured: fill in [providers.{provider}] "
                f"(manifests/{provider}/README.md)."
            )
        app = await build_app(settings)
        try:
            result = await import_groups(app.ctx, app.memberships, provider, dry_run=dry_run)
            await app.drain(60)  # leavers found on the platform are removed there before we stop
        except ProviderError as exc:
            raise click.ClickException(f"{provider}: {exc.sentence}") from None
        finally:
            await app.close()
        click.echo(result.summary())

    _run(go(), settings)


@main.group("providers")
def providers_cli() -> None:
    """The platforms where groups live."""


@providers_cli.command("check")
@click.pass_context
def providers_check(ctx: click.Context) -> None:
    """Call each configured provider read-only and say in one sentence what works and what is missing."""
    settings = _settings(ctx.find_root().obj["config"])

    async def go() -> None:
        from bot.groups.providers.base import ProviderError
        from bot.groups.providers.registry import NAMES, Providers

        providers = Providers(settings)
        failed = False
        try:
            click.echo(
                f"local: works — Postroom's database is the truth (default provider: {settings.groups.provider})."
            )
            configured = providers.configured()
            for name in NAMES[1:]:
                if name not in configured:
                    click.echo(
                        f"{name}: not configured — fill in [providers.{name}] to use it (manifests/{name}/README.md)."
                    )
                    continue
                try:
                    click.echo(f"{name}: works — {await providers.get(name).check()}.")
                except ProviderError as exc:
                    failed = True
                    click.echo(f"{name}: does not work — {exc.sentence}")
        finally:
            await providers.aclose()
        if failed:
            sys.exit(1)

    _run(go(), settings)


# -- dkim ---------------------------------------------------------------------------------------
@main.group("dkim")
def dkim_cli() -> None:
    """DKIM keys for signing outgoing mail."""


@dkim_cli.command("keygen")
@click.argument("domain")
@click.argument("selector")
@click.option(
    "--algorithm",
    type=click.Choice(["rsa", "ed25519"]),
    default="rsa",
    show_default=True,
    help="RSA is what every receiver verifies; Ed25519 (RFC 8463) is signed beside an RSA key.",
)
@click.option("--bits", type=click.Choice(["2048", "3072", "4096"]), default="2048", show_default=True)
@click.option(
    "--out",
    "out",
    type=click.Path(dir_okay=False),
    default=None,
    help="Where to write the private key (default: dkim/<domain>.<selector>.pem).",
)
@click.option("--force", is_flag=True, help="Overwrite the key file if it exists.")
def dkim_keygen(domain: str, selector: str, algorithm: str, bits: str, out: str | None, force: bool) -> None:
    """Write a new private key (mode 0600) and print the DNS TXT record to publish for it."""
    from bot.mail.dkim import generate_key, parse_key, txt_strings, valid_domain, valid_selector

    domain = domain.strip().lower().rstrip(".")
    selector = selector.strip().lower()
    if not valid_domain(domain):
        raise click.ClickException(f"{domain!r} is not a mail domain like corp.example.")
    if not valid_selector(selector):
        raise click.ClickException(
            f"{selector!r} is not a DKIM selector: letters, digits, - and _ (for example pr2026)."
        )
    path = Path(out) if out else Path("dkim") / f"{domain}.{selector}.pem"
    if path.exists() and not force:
        raise click.ClickException(f"{path} exists; give --force to replace it (and publish the new record).")
    alg = "ed25519-sha256" if algorithm == "ed25519" else "rsa-sha256"
    pem = generate_key(alg, int(bits))  # type: ignore[arg-type]
    key = parse_key(pem, domain=domain, selector=selector, where=str(path))
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if force:
            path.unlink(missing_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise click.ClickException(f"Can't write {path}: {exc.strerror}.") from None
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    os.chmod(path, 0o600)  # whatever the umask
    record = key.dns_record()
    quoted = " ".join(f'"{part}"' for part in txt_strings(record))
    click.echo(f"Wrote the private key to {path} (mode 0600; keep it readable by Postroom's user only).")
    click.echo("")
    click.echo("Publish this DNS TXT record:")
    click.echo(f"{key.dns_name()}. IN TXT ( {quoted} )")
    click.echo("")
    click.echo("Then add to postroom.toml (and restart):")
    click.echo("[[dkim.keys]]")
    click.echo(f'domain = "{domain}"')
    click.echo(f'selector = "{selector}"')
    click.echo(f'key_file = "{path.resolve()}"')


# -- doctor -------------------------------------------------------------------------------------
@main.command()
@click.option(
    "--nameserver",
    "nameservers",
    multiple=True,
    help="A resolver to ask (an IP address; repeatable). Default: relay.dns_nameservers, else the system's.",
)
@click.option("--port", "dns_port", type=click.IntRange(1, 65535), default=None, help="The resolvers' port.")
@click.option("--timeout", "timeout_s", type=click.FloatRange(0.1, 30), default=3.0, show_default=True)
@click.pass_context
def doctor(ctx: click.Context, nameservers: tuple[str, ...], dns_port: int | None, timeout_s: float) -> None:
    """Check each sending domain's SPF, DKIM, DMARC, the bounce MX, https, and that the SMTP relay answers."""
    import ipaddress

    from bot.app import dkim_signer
    from bot.config import ConfigError
    from bot.doctor import Doctor, Lookup

    settings = _settings(ctx.obj["config"], needs_configuration=False)
    for server in nameservers:
        try:
            ipaddress.ip_address(server)
        except ValueError:
            raise click.ClickException(
                f"--nameserver {server!r} is not an IP address like 192.0.2.53."
            ) from None
    try:
        signer = dkim_signer(settings)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    lookup = Lookup(
        list(nameservers) or settings.relay.dns_nameservers,
        port=dns_port or settings.relay.dns_port,
        timeout_s=timeout_s,
    )
    findings = run_coroutine(Doctor(settings, signer, lookup).run())
    for finding in findings:
        click.echo(finding.line())
    fixes = sum(1 for f in findings if f.status == "fix")
    click.echo(f"{fixes} to fix." if fixes else "Nothing to fix.")
    if fixes:
        sys.exit(1)


# -- commands from installed packages (an adapter's own: `postroom slack manifest`) ------------
def _add_plugin_commands() -> None:
    from importlib.metadata import entry_points

    for ep in entry_points(group="postroom.cli"):
        try:
            main.add_command(ep.load(), ep.name)
        except Exception as exc:  # a broken plugin must not take the whole CLI down
            logging.getLogger(__name__).warning("postroom %s is unavailable: %s", ep.name, exc)


_add_plugin_commands()

if __name__ == "__main__":  # pragma: no cover
    main()
