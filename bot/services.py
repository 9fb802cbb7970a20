"""What runs beside the core in `postroom serve` and the demo: the embedded mail server's
routes (mailbox, and the capabilities that claim addresses), and later the scheduler."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bot.mail.server import Mailbox, Route

if TYPE_CHECKING:
    from bot.app import Runtime
    from bot.core import Core


def mail_routes(core: Core, mailbox: Mailbox | None = None) -> list[Route]:
    """Routes in order: specific claims first, the catch-all mailbox (demo only) last."""
    routes: list[Route] = []
    if mailbox is not None:
        routes.append(mailbox.route())
    return routes


async def start_services(runtime: Runtime) -> None:
    settings = runtime.core.ctx.settings
    if settings.relay.enabled:
        mailbox = Mailbox(settings.relay.mailbox_dir) if settings.relay.mailbox_dir else None
        await runtime.start_mail(settings.relay.host, settings.relay.port, mail_routes(runtime.core, mailbox))
