"""What runs beside the core in `postroom serve` and the demo: the embedded mail server with its
routes (each capability that claims addresses adds one), and the scheduler."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bot.mail.server import Mailbox, Route

if TYPE_CHECKING:
    from bot.app import Runtime
    from bot.core import Core


def mail_routes(core: Core, mailbox: Mailbox | None = None) -> list[Route]:
    """Routes in order: specific claims first, the catch-all mailbox (demo only) last."""
    from bot.campaigns.bounces import BounceMailbox
    from bot.campaigns.unsubscribe_mail import UnsubscribeMailbox
    from bot.groups.relay import group_route

    # VERP return paths (bounces, complaints), List-Unsubscribe's mailto:, then group addresses.
    routes: list[Route] = [
        BounceMailbox(core.ctx).route(),
        UnsubscribeMailbox(core.ctx).route(),
        group_route(core),
    ]
    if mailbox is not None:
        routes.append(mailbox.route())
    return routes


async def start_services(runtime: Runtime, *, mailbox: Mailbox | None = None) -> None:
    from bot.groups.planner import check_rules_at_start
    from bot.scheduler import ensure_scheduler

    check_rules_at_start(runtime.core)  # before anything starts: a broken rules file is a sentence

    core = runtime.core
    settings = core.ctx.settings
    if settings.relay.enabled:
        if mailbox is None and settings.relay.mailbox_dir:
            mailbox = Mailbox(settings.relay.mailbox_dir)
        await runtime.start_mail(settings.relay.host, settings.relay.port, mail_routes(core, mailbox))
    scheduler = await ensure_scheduler(core, run_jobs=True)
    runtime.extra_stops.append(scheduler.stop)
    from bot.campaigns.watcher import CampaignWatcher

    watcher = CampaignWatcher(core)
    await watcher.start()
    runtime.extra_stops.insert(0, watcher.stop)
    await start_group_services(core, scheduler)


async def start_group_services(core: Core, scheduler: Any) -> None:
    """Rule groups from the rules file exist, and the audit report is on the calendar."""
    from bot.groups import planner, report

    rules = planner.rules_in_force(core)
    async with core.ctx.sessions() as session, session.begin():
        await planner.sync_group_definitions(session, rules, core.ctx.settings, actor="system", via="rules")
    scheduler.cron(report.JOB_ID, core.ctx.settings.groups.audit_cron, "bot.groups.report:scheduled_report")
    scheduler.cron("groups.announce-plans", "* * * * *", "bot.groups.planner:announce_pending_job")
