"""The composition root: the one place that builds Postroom from settings — the engine, every
capability with the collaborators it needs, the commands, the core — and wires them.

Nothing else builds an engine, a client or a capability, and nothing is looked up by name at run
time: each part gets what it uses, typed, here. Adapters are found through the `postroom.adapters`
entry points (see pyproject.toml), so the core never imports one: `postroom serve` starts every
adapter whose section is configured.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

from starlette.types import ASGIApp

from bot.adapter import Adapter
from bot.campaigns import render_pool
from bot.campaigns.approval import Approvals
from bot.campaigns.automations import Automations
from bot.campaigns.bounces import BounceMailbox
from bot.campaigns.cards import CampaignCards
from bot.campaigns.drafts import Drafts
from bot.campaigns.email_services import email_service_routes
from bot.campaigns.runs import CampaignRuns
from bot.campaigns.sunset import Sunsets
from bot.campaigns.unsubscribe_mail import UnsubscribeMailbox
from bot.campaigns.watcher import CampaignWatcher
from bot.campaigns.web_routes import campaign_routes
from bot.commands.automations import AutomationCommands
from bot.commands.campaigns import CampaignCommands
from bot.commands.contacts import ContactCommands
from bot.commands.drift import DriftCommands
from bot.commands.general import GeneralCommands
from bot.commands.groups import GroupCommands
from bot.commands.lifecycle import LifecycleCommands
from bot.commands.posts import PostCommands
from bot.commands.privacy import PrivacyCommands
from bot.commands.reports import ReportCommands
from bot.commands.segments import SegmentCommands
from bot.commands.suppressions import SuppressionCommands
from bot.config import ConfigError, Settings
from bot.contacts.signup import EXPIRE_JOB, Signups
from bot.contacts.web_routes import signup_routes
from bot.context import Context
from bot.core import CommandTable, Core
from bot.db.engine import ensure_schema, make_engine, make_sessionmaker
from bot.groups import planner
from bot.groups.adoption import DriftChoices
from bot.groups.dmarc import DmarcPolicies
from bot.groups.fanout import BounceReports, GroupBounceMailbox, GroupFanout
from bot.groups.membership import Memberships
from bot.groups.moderation import JOB_ID as MODERATION_JOB
from bot.groups.moderation import PRUNE_JOB, Moderation, PostfixQueue
from bot.groups.outbox import JOB as PUSH_JOB
from bot.groups.outbox import Outbox
from bot.groups.postfix_policy import PolicyService
from bot.groups.providers.registry import Providers
from bot.groups.relay import GroupRelay
from bot.groups.report import JOB_ID as AUDIT_JOB
from bot.groups.report import AuditReport
from bot.groups.rules import RuleBook
from bot.hr.lifecycle import Lifecycle
from bot.hr.webhook import webhook_routes
from bot.identities import Identities
from bot.links import Signer
from bot.mail.dkim import DkimSigner, KeyProblem, SigningPool, load_key
from bot.mail.server import EmbeddedSmtpServer, Mailbox, Route
from bot.messengers import Messengers
from bot.scheduler import Scheduler
from bot.usage.digest import JOB_ID as DIGEST_JOB
from bot.usage.digest import UsageDigest
from bot.web import build_web

log = logging.getLogger(__name__)
ANNOUNCE_JOB = "groups.announce-plans"


@dataclass
class GroupMail:
    """Group mail delivered like a list server: the relay's route, the fan-out from the post store,
    moderation, bounce reports, and the Postfix policy service."""

    fanout: GroupFanout
    moderation: Moderation
    relay: GroupRelay
    bounces: GroupBounceMailbox
    policy: PolicyService


@dataclass
class App:
    """Postroom, assembled: what `serve`, the demo, the CLI commands and the tests run."""

    ctx: Context
    messengers: Messengers
    scheduler: Scheduler
    rules: RuleBook
    memberships: Memberships
    lifecycle: Lifecycle
    identities: Identities
    cards: CampaignCards
    runs: CampaignRuns
    approvals: Approvals
    drafts: Drafts
    audit_report: AuditReport
    core: Core
    group_mail: GroupMail
    signups: Signups
    automations: Automations
    providers: Providers
    outbox: Outbox
    drift: DriftChoices
    usage_digest: UsageDigest

    @property
    def settings(self) -> Settings:
        return self.ctx.settings

    def attach(self, adapter: Adapter) -> None:
        self.messengers.attach(adapter)

    def web(self) -> ASGIApp:
        """The web app: Postroom's own pages, the HR and email-events webhooks, the adapters' callbacks."""
        routes: list[Any] = [
            *webhook_routes(self.settings.hr, self.lifecycle),
            *campaign_routes(self.ctx),
            *email_service_routes(self.ctx),
            *signup_routes(self.ctx, self.signups),
        ]
        for adapter in self.messengers.adapters.values():
            routes.extend(adapter.web_routes())
        return build_web(self.ctx, routes)

    def mail_routes(self, mailbox: Mailbox | None = None) -> list[Route]:
        """The embedded SMTP server's routes, specific claims first: VERP return paths (bounces,
        complaints), List-Unsubscribe's mailto:, group addresses, then the demo's catch-all mailbox."""
        routes = [
            self.group_mail.bounces.route(),
            BounceMailbox(self.ctx).route(),
            UnsubscribeMailbox(self.ctx).route(),
            self.group_mail.relay.route(),
        ]
        if mailbox is not None:
            routes.append(mailbox.route())
        return routes

    def schedule_group_jobs(self) -> None:
        """The audit report to HR on `groups.audit_cron`; held plans announced every minute."""
        self.scheduler.cron(AUDIT_JOB, self.settings.groups.audit_cron, AUDIT_JOB)
        self.scheduler.cron(ANNOUNCE_JOB, "* * * * *", ANNOUNCE_JOB)
        self.scheduler.cron(MODERATION_JOB, "* * * * *", MODERATION_JOB)  # held posts expire
        self.scheduler.cron(PRUNE_JOB, "17 3 * * *", PRUNE_JOB)  # the post log's retention
        self.automations.schedule()
        self.scheduler.cron(EXPIRE_JOB, "7 * * * *", EXPIRE_JOB)
        # Changes a platform has not confirmed yet are pushed again every minute (and sooner when due).
        self.scheduler.cron(PUSH_JOB, "* * * * *", PUSH_JOB)
        # The usage review to HR (reports.usage_digest); turned off, a job scheduled before goes.
        if self.usage_digest.cron is None:
            self.scheduler.cancel(DIGEST_JOB)
        else:
            self.scheduler.cron(DIGEST_JOB, self.usage_digest.cron, DIGEST_JOB)

    async def drain(self, timeout: float | None = None) -> None:
        """Wait for background work (a send, a push to a platform) to finish; `postroom chat` and tests."""
        await self.signups.background.settle(timeout)
        await self.runs.background.settle(timeout)
        await self.outbox.settle(timeout)

    async def close(self) -> None:
        await self.group_mail.fanout.stop()
        await self.group_mail.policy.stop()
        await self.group_mail.relay.stop()
        await self.runs.stop()  # sending campaigns stay `sending`; the next start resumes them
        await self.outbox.background.cancel()  # what was not pushed stays in the outbox for the next start
        await self.scheduler.stop()
        await self.providers.aclose()
        for adapter in list(self.messengers.adapters.values()):
            try:
                await asyncio.wait_for(adapter.stop(), 5)
            except Exception:
                log.exception("stopping %s failed", adapter.platform)
        if self.ctx.dkim is not None and self.ctx.dkim.pool is not None:
            self.ctx.dkim.pool.close()
        renders = render_pool.of(self.ctx)
        if renders is not None:
            await renders.close()
        await self.ctx.engine.dispose()


def dkim_signer(settings: Settings) -> DkimSigner:
    """The DKIM keys of `[dkim]`, each read and checked now: a problem with one is a ConfigError sentence
    at start, never a failure at send time."""
    keys = []
    for k in settings.dkim.keys:
        try:
            keys.append(
                load_key(
                    domain=k.domain,
                    selector=k.selector,
                    key_file=k.key_file,
                    key_env=k.key_env,
                    algorithm=k.algorithm,
                )
            )
        except KeyProblem as exc:
            raise ConfigError(str(exc)) from None
    signer = DkimSigner(keys)
    if settings.dkim.signing_processes and signer.uses_rsa:
        signer.pool = SigningPool(signer.keys, settings.dkim.signing_processes)
    return signer


async def build_app(settings: Settings, **context_options: Any) -> App:
    """Engine, schema check (a new empty database is created), and every part wired."""
    dkim = context_options.pop("dkim", None) or dkim_signer(
        settings
    )  # a bad key stops us before anything opens
    engine = make_engine(settings.database.url)
    try:
        await ensure_schema(engine)
    except BaseException:
        await engine.dispose()
        raise
    sessions = make_sessionmaker(engine)
    ctx = Context(
        settings=settings,
        engine=engine,
        sessions=sessions,
        signer=Signer(settings.web.secret),
        dkim=dkim,
        **context_options,
    )
    renders = render_pool.from_settings(settings.campaigns)  # no process until the first preview
    if renders is not None:
        ctx.extras["render_pool"] = renders
    messengers = Messengers(sessions)
    scheduler = Scheduler(engine, settings.database.url)
    rules = RuleBook(settings)
    identities = Identities(sessions)
    providers = Providers(settings)
    outbox = Outbox(ctx, providers, messengers, scheduler)
    memberships = Memberships(ctx, rules, messengers, outbox)
    drift = DriftChoices(ctx, memberships)
    lifecycle = Lifecycle(ctx, rules, memberships, messengers, scheduler)
    memberships.replay_events = lifecycle.replay
    cards = CampaignCards(ctx, messengers)
    runs = CampaignRuns(ctx, cards, scheduler, worker_id=f"{settings.org.name[:10]}-{secrets.token_hex(3)}")
    approvals = Approvals(ctx, cards, runs)
    drafts = Drafts(ctx, cards, runs)
    audit_report = AuditReport(ctx, messengers, drift)
    usage_digest = UsageDigest(ctx, messengers)
    relay = settings.relay
    dmarc = DmarcPolicies(
        relay.dns_nameservers, port=relay.dns_port, timeout_s=relay.dns_timeout_s, cache_s=relay.dns_cache_s
    )
    reports = BounceReports(ctx, messengers)
    fanout = GroupFanout(ctx, dmarc, reports, worker_id=f"{settings.org.name[:10]}-g{secrets.token_hex(3)}")
    moderation = Moderation(ctx, messengers, fanout, PostfixQueue(settings.postfix))
    group_mail = GroupMail(
        fanout,
        moderation,
        GroupRelay(ctx, fanout, moderation),
        GroupBounceMailbox(ctx, reports),
        PolicyService(ctx, moderation),
    )
    automations = Automations(ctx, approvals, runs, cards)
    lifecycle.listen_for_joiners(automations.on_joined)
    signups = Signups(ctx, on_confirmed=automations.on_list_joined)
    for name, handler in {
        **lifecycle.jobs(),
        **runs.jobs(),
        **moderation.jobs(),
        **automations.jobs(),
        **signups.jobs(),
        ANNOUNCE_JOB: memberships.announce_pending,
        AUDIT_JOB: audit_report.send,
        DIGEST_JOB: usage_digest.send,
        PUSH_JOB: outbox.run_job,
    }.items():
        scheduler.handle(name, handler)
    table = CommandTable()
    for commands in (
        GeneralCommands(ctx, table),
        GroupCommands(ctx, memberships),
        DriftCommands(ctx, drift),
        CampaignCommands(ctx, drafts, approvals, runs, cards),
        LifecycleCommands(ctx, rules, memberships, drift),
        PrivacyCommands(ctx),
        SuppressionCommands(ctx),
        PostCommands(ctx, moderation),
        AutomationCommands(ctx, automations),
        SegmentCommands(ctx),
        ContactCommands(ctx, signups, Sunsets(ctx, messengers)),
        ReportCommands(ctx),
    ):
        commands.register(table)
    core = Core(ctx, table=table, messengers=messengers, identities=identities, lifecycle=lifecycle)
    return App(
        ctx,
        messengers,
        scheduler,
        rules,
        memberships,
        lifecycle,
        identities,
        cards,
        runs,
        approvals,
        drafts,
        audit_report,
        core,
        group_mail,
        signups,
        automations,
        providers,
        outbox,
        drift,
        usage_digest,
    )


def adapter_factories() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group="postroom.adapters")}


def load_adapter(name: str, settings: Settings, **options: Any) -> Adapter | None:
    """The adapter `name` built from settings, or None when its section is not configured."""
    ep = adapter_factories().get(name)
    if ep is None:
        raise LookupError(f"No adapter named {name} is installed.")
    adapter: Adapter | None = ep.load()(settings, **options)
    return adapter


def configured_adapters(settings: Settings) -> list[Adapter]:
    found: list[Adapter] = []
    for name in sorted(adapter_factories()):
        if name == "console":
            continue
        adapter = load_adapter(name, settings)
        if adapter is not None:
            found.append(adapter)
    return found


def listening_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket for `host:port`, created with proto=IPPROTO_TCP.

    `socket.create_server` leaves proto at 0, and asyncio switches Nagle off (TCP_NODELAY) only on
    accepted sockets whose proto is IPPROTO_TCP: every response then waited ~40 ms for the client's
    delayed ACK before its last segment went out.
    """
    family, kind, proto, _name, address = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        if os.name == "posix":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


@dataclass
class Runtime:
    """What `postroom serve` and the demo run beside the core: web app, mail server, scheduler, watcher."""

    app: App
    mail_server: EmbeddedSmtpServer | None = None
    web_task: asyncio.Task[Any] | None = None
    web_server: Any = None
    watcher: CampaignWatcher | None = None
    web_socket: socket.socket | None = None
    extra_stops: list[Any] = field(default_factory=list)

    def bind_web(self, host: str, port: int) -> socket.socket:
        """Take the web port now (before anything else starts), or say in one sentence why not."""
        if self.web_socket is None:
            try:
                self.web_socket = listening_socket(host, port)
            except OSError as exc:
                reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
                raise ConfigError(
                    f"The web app can't listen on {host}:{port} ({reason}): set web.port to a free port."
                ) from None
        return self.web_socket

    async def start_services(self, *, mailbox: Mailbox | None = None) -> None:
        """The mail server with its routes, the scheduler (leading if it can), the campaign watcher, the
        rule groups and the scheduled reports."""
        app = self.app
        settings = app.settings
        app.rules.check_at_start()  # before anything starts: a broken rules file is a sentence
        if settings.relay.enabled:
            if mailbox is None and settings.relay.mailbox_dir:
                mailbox = Mailbox(settings.relay.mailbox_dir)
            await self.start_mail(settings.relay.host, settings.relay.port, app.mail_routes(mailbox))
            app.group_mail.fanout.start()
        if settings.postfix.policy_enabled:
            await app.group_mail.policy.start()
        await app.scheduler.start(run_jobs=True)
        self.watcher = CampaignWatcher(app.ctx, app.runs, app.scheduler)
        await self.watcher.start()
        async with app.ctx.sessions() as session, session.begin():
            await planner.sync_group_definitions(
                session, app.rules.current(), settings, actor="system", via="rules"
            )
        app.schedule_group_jobs()

    async def start_web(self, host: str, port: int) -> None:
        import uvicorn

        # Bound here (or earlier by bind_web): uvicorn answers a taken port with sys.exit() inside its task,
        # which no caller can catch.
        sock = self.bind_web(host, port)
        trusted = self.app.settings.web.trusted_proxies
        config = uvicorn.Config(
            self.app.web(),
            host=host,
            port=port,
            log_level="warning",
            lifespan="off",
            access_log=False,
            # uvicorn believes X-Forwarded-For from 127.0.0.1 unless told otherwise: only from the
            # proxies named in web.trusted_proxies (none by default).
            proxy_headers=bool(trusted),
            forwarded_allow_ips=",".join(trusted) if trusted else "",
        )
        server = uvicorn.Server(config)
        server.install_signal_handlers = lambda: None  # type: ignore[attr-defined]  # we own SIGTERM
        self.web_server = server
        self.web_task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
        for _ in range(200):
            if server.started or self.web_task.done():
                break
            await asyncio.sleep(0.02)
        if self.web_task.done():
            self.web_task.result()  # re-raise the bind error

    async def start_mail(self, host: str, port: int, routes: list[Route]) -> EmbeddedSmtpServer:
        self.mail_server = EmbeddedSmtpServer(
            host, port, routes, data_size_limit=self.app.settings.relay.max_message_bytes
        )
        try:
            await self.mail_server.start()
        except OSError as exc:
            self.mail_server = None
            reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
            raise ConfigError(
                f"The SMTP relay can't listen on {host}:{port} ({reason}): set relay.port to a free port."
            ) from None
        return self.mail_server

    async def stop(self) -> None:
        await self.stop_services()
        await self.app.close()

    async def stop_services(self) -> None:
        """Stop what `start_services`, `start_web` and `start_mail` started; the app stays open."""
        if self.watcher is not None:
            await self.watcher.stop()
            self.watcher = None
        await self.app.scheduler.stop()
        await self.app.group_mail.fanout.stop()
        await self.app.group_mail.policy.stop()
        await self.app.group_mail.relay.stop()
        for stop in self.extra_stops:
            try:
                await stop()
            except Exception:
                log.exception("stopping a service failed")
        if self.web_server is not None:
            self.web_server.should_exit = True
            if self.web_task is not None:
                try:
                    await asyncio.wait_for(self.web_task, 5)
                except (TimeoutError, asyncio.CancelledError):
                    self.web_task.cancel()
        if self.mail_server is not None:
            await self.mail_server.stop()
            self.mail_server = None
