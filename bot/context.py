"""What the core's services share: settings, the session factory, the link signer, the clock.

Built once by `bot.app.build` (the composition root) and passed in; never a module global.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from bot.config import DEFAULT_ROUTE, Settings
from bot.links import Signer
from bot.mail.dkim import DkimSigner, SignedTransport
from bot.mail.transport import SmtpTarget, SmtpTransport


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class Context:
    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker
    signer: Signer
    clock: Callable[[], datetime] = _utcnow
    transport_factory: Callable[[], SmtpTransport] | None = None
    extras: dict[str, object] = field(default_factory=dict)
    # DKIM keys loaded at start (bot.app): every transport made here signs with them.
    dkim: DkimSigner | None = None

    def new_transport(self, connections: int | None = None, route: str = DEFAULT_ROUTE) -> SmtpTransport:
        """The outgoing SMTP transport of `route` (its own server, login and pool; "default" is [smtp]);
        with DKIM keys, one that signs every message it sends. A route that is not configured is a
        `LookupError` (callers check `settings.smtp.server(route)` first and say so in a sentence)."""
        if self.transport_factory is not None:
            return self.transport_factory()
        server = self.settings.smtp.server(route)
        if server is None:
            raise LookupError(f"no SMTP route {route!r}")
        target = SmtpTarget.from_settings(server, route)
        if self.dkim:
            return SignedTransport(target, connections, self.dkim)
        return SmtpTransport(target, connections)

    def now(self) -> datetime:
        return self.clock()

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name
