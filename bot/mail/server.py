"""The embedded SMTP server (aiosmtpd), run inside Postroom's event loop.

It answers for addresses that something in Postroom claims — a recipient route decides at
RCPT time, so mail nobody claims is refused during the SMTP conversation, not bounced later.
In the demo it is also the outbound server: a `Mailbox` route keeps every message as a file
and prints one line per message.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from pathlib import Path

from aiosmtpd.smtp import SMTP, Envelope, Session

log = logging.getLogger(__name__)


def no_such_address(rcpt: str) -> str:
    """The answer for an address nobody here has: the fallback, and a route's own "it is not mine and
    nobody's" (the group relay's for a company address that is no group), whatever the client."""
    return f"550 5.1.1 <{rcpt}>: no such address here"


@dataclass
class Route:
    """Claims recipients at RCPT time and takes the message at DATA time.

    `accepts(rcpt, mail_from)` returns None to pass, "250 OK" (or any 2xx) to claim, or a
    4xx/5xx reply to refuse; a route with `peer_allowed` refuses an address it answers for when the
    client's IP address is not allowed. `deliver(mail_from, rcpts, data)` returns an SMTP reply.
    """

    name: str
    accepts: Callable[[str, str], Awaitable[str | None]]
    deliver: Callable[[str, list[str], bytes], Awaitable[str]]
    # When set, only SMTP clients this says yes to (their IP address) may send to the route's addresses;
    # others get "550 relaying denied" (group addresses: `relay.trusted_networks`). None: anyone.
    peer_allowed: Callable[[str | None], bool] | None = None


class Mailbox:
    """Keeps every message as an .eml file, and prints a line for each (the demo's 'internet')."""

    def __init__(self, directory: str | Path, echo: Callable[[str], None] | None = print):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        existing = [int(m.group(1)) for p in self.dir.glob("*.eml") if (m := re.match(r"(\d+)-", p.name))]
        self._counter = itertools.count(max(existing, default=0) + 1)
        self.echo = echo

    async def accepts(self, rcpt: str, mail_from: str) -> str | None:
        return "250 OK"

    async def deliver(self, mail_from: str, rcpts: list[str], data: bytes) -> str:
        msg = message_from_bytes(data, policy=policy.default)
        subject = str(msg.get("Subject", "(no subject)"))
        for rcpt in rcpts:
            n = next(self._counter)
            safe = re.sub(r"[^A-Za-z0-9@._-]", "_", rcpt)[:80]
            (self.dir / f"{n:06d}-{safe}.eml").write_bytes(data)
            if self.echo:
                self.echo(f"  ✉ mailbox: to {rcpt} — “{subject}” ({len(data)} bytes)")
        return "250 Message accepted"

    def route(self) -> Route:
        return Route("mailbox", self.accepts, self.deliver)

    def messages(self) -> list[Path]:
        return sorted(self.dir.glob("*.eml"))


@dataclass
class _Handler:
    routes: list[Route] = field(default_factory=list)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        rcpt = address.lower()
        for route in self.routes:
            reply = await route.accepts(rcpt, (envelope.mail_from or "").lower())
            if reply is None:
                continue
            if route.peer_allowed is not None and reply != no_such_address(rcpt):
                peer = session.peer[0] if isinstance(session.peer, tuple) and session.peer else None
                if not route.peer_allowed(peer):
                    log.warning("relaying to %s denied for %s", rcpt, peer)
                    return (
                        f"550 5.7.1 <{rcpt}>: relaying denied: this server takes mail for this address only "
                        "from the company's own mail servers"
                    )
            if reply.startswith("2"):
                envelope.rcpt_tos.append(rcpt)
                tags = getattr(envelope, "postroom_routes", None)
                if tags is None:
                    tags = {}
                    envelope.postroom_routes = tags  # type: ignore[attr-defined]
                tags[rcpt] = route
            return reply
        return no_such_address(rcpt)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        tags: dict[str, Route] = getattr(envelope, "postroom_routes", {})
        by_route: dict[str, tuple[Route, list[str]]] = {}
        for rcpt in envelope.rcpt_tos:
            route = tags.get(rcpt)
            if route is not None:
                by_route.setdefault(route.name, (route, []))[1].append(rcpt)
        data = envelope.original_content or b""
        replies = []
        for route, rcpts in by_route.values():
            try:
                replies.append(await route.deliver((envelope.mail_from or "").lower(), rcpts, data))
            except Exception:
                log.exception("route %s failed", route.name)
                replies.append("451 4.3.0 Temporary failure, try again later")
        failed = [r for r in replies if not r.startswith("2")]
        return failed[0] if failed else "250 Message accepted for delivery"


class EmbeddedSmtpServer:
    def __init__(
        self, host: str, port: int, routes: list[Route] | None = None, data_size_limit: int = 25 * 1024 * 1024
    ):
        self.host = host
        self.port = port
        self.handler = _Handler(list(routes or []))
        self.data_size_limit = data_size_limit
        self._server: asyncio.base_events.Server | None = None

    def add_route(self, route: Route, first: bool = False) -> None:
        if first:
            self.handler.routes.insert(0, route)
        else:
            self.handler.routes.append(route)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: SMTP(
                self.handler,
                hostname="postroom",
                data_size_limit=self.data_size_limit,
                decode_data=False,
                ident="Postroom ESMTP",
            ),
            host=self.host,
            port=self.port,
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            try:
                await asyncio.wait_for(self._server.wait_closed(), 2)
            except TimeoutError:
                pass
            self._server = None
