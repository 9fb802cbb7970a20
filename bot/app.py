"""The composition root: the one place that builds engines, the core and its adapters from settings.

Adapters are found through the `postroom.adapters` entry points (see pyproject.toml), so the
core never imports one: `postroom serve` starts every adapter whose section is configured.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

from bot.adapter import Adapter
from bot.config import ConfigError, Settings
from bot.context import Context
from bot.core import Core
from bot.db.engine import ensure_schema, make_engine, make_sessionmaker
from bot.links import Signer
from bot.mail.server import EmbeddedSmtpServer, Route

log = logging.getLogger(__name__)


async def build_core(settings: Settings, **context_options: Any) -> Core:
    """Engine, schema check (a new empty database is created), context and core."""
    engine = make_engine(settings.database.url)
    try:
        await ensure_schema(engine)
    except BaseException:
        await engine.dispose()
        raise
    ctx = Context(
        settings=settings,
        engine=engine,
        sessions=make_sessionmaker(engine),
        signer=Signer(settings.web.secret),
        **context_options,
    )
    return Core(ctx)


async def close_core(core: Core) -> None:
    for engine in list(core.services.get("engines", {}).values()):
        engine.stop()  # sending campaigns stay `sending`; the next start resumes them
    runs = [t for t in core.services.get("campaign_runs", {}).values() if not t.done()]
    if (
        runs
    ):  # let the batch in flight be recorded (unsent rows go back to pending) rather than wait for a lease
        await asyncio.wait(runs, timeout=10)
    scheduler = core.services.get("scheduler")
    if scheduler is not None:
        await scheduler.stop()
    await core.shutdown()
    scheduler = core.services.get("scheduler")
    if scheduler is not None:  # opened (paused) by whatever scheduled a job: a leaver's grace period
        await scheduler.stop()
    for adapter in list(core.adapters.values()):
        try:
            await asyncio.wait_for(adapter.stop(), 5)
        except Exception:
            log.exception("stopping %s failed", adapter.platform)
    await core.ctx.engine.dispose()


def adapter_factories() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group="postroom.adapters")}


def load_adapter(name: str, settings: Settings, **options: Any) -> Adapter | None:
    """The adapter `name` built from settings, or None when its section is not configured."""
    ep = adapter_factories().get(name)
    if ep is None:
        raise LookupError(f"No adapter named {name} is installed.")
    return ep.load()(settings, **options)


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
    """What `postroom serve` and the demo run beside the core."""

    core: Core
    mail_server: EmbeddedSmtpServer | None = None
    web_task: asyncio.Task[Any] | None = None
    web_server: Any = None
    extra_stops: list[Any] = field(default_factory=list)

    web_socket: socket.socket | None = None

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

    async def start_web(self, host: str, port: int) -> None:
        import uvicorn

        from bot.web import build_web

        # Bound here (or earlier by bind_web): uvicorn answers a taken port with sys.exit() inside its task,
        # which no caller can catch.
        sock = self.bind_web(host, port)
        config = uvicorn.Config(
            build_web(self.core), host=host, port=port, log_level="warning", lifespan="off", access_log=False
        )
        server = uvicorn.Server(config)
        server.install_signal_handlers = lambda: None  # type: ignore[method-assign]  # we own SIGTERM
        self.web_server = server
        self.web_task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
        for _ in range(200):
            if server.started or self.web_task.done():
                break
            await asyncio.sleep(0.02)
        if self.web_task.done():
            self.web_task.result()  # re-raise the bind error

    async def start_mail(self, host: str, port: int, routes: list[Route]) -> EmbeddedSmtpServer:
        self.mail_server = EmbeddedSmtpServer(host, port, routes)
        await self.mail_server.start()
        return self.mail_server

    async def stop(self) -> None:
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
        await close_core(self.core)
