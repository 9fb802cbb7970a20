"""The dingtalk-stream client (pinned 0.24.3) with the flaws Postroom works around.

Kept from the SDK: `DingTalkStreamClient`'s frame routing (`route_message`), its frame and ACK types,
handler registration and the subscriptions it derives from them.
Replaced, because in 0.24.3 they:
- `open_connection()` — call `requests.post` without a timeout on the event loop: ours is async (httpx),
  with a timeout, and `get_host_ip()` no longer UDP-connects to 8.8.8.8 (it asks the gateway's host);
- `start()` — swallows `CancelledError` (one `cancel()` does not stop it) and reconnects with no delay
  after a normal close: ours lets cancellation through, stops on `stop()`, and backs off with full
  jitter (`backoff_base` × 2ⁿ, capped) before every reconnect;
- `background_task()` — drops a frame it can't parse without an ACK, so the platform redelivers it
  forever: ours answers it with a 400 ACK and logs it; its tasks are kept referenced;
- the event ACK echoes the payload back instead of `{"status": "SUCCESS"}`: see `adapter._Events`;
- every gateway ping is logged as a WARNING: filtered out.
"""

from __future__ import annotations

import asyncio
import json
import logging
import platform as platform_module
import random
import socket
from typing import Any
from urllib.parse import quote_plus, urlsplit

import websockets
from dingtalk_stream import AckMessage, Credential, DingTalkStreamClient
from dingtalk_stream.version import VERSION_STRING

from adapters.dingtalk.openapi import DingTalkApi

log = logging.getLogger(__name__)


class _QuietPings(logging.Filter):
    """0.24.3 logs every gateway ping as a WARNING ("unknown message topic"); they are routine."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.getMessage().startswith("unknown message topic, topic=ping"))


def _sdk_logger() -> logging.Logger:
    logger = logging.getLogger("adapters.dingtalk.sdk")
    if not any(isinstance(f, _QuietPings) for f in logger.filters):
        logger.addFilter(_QuietPings())
    return logger


class PostroomStreamClient(DingTalkStreamClient):
    websocket: Any  # the open connection while connected, else None (the SDK's attribute)

    def __init__(
        self,
        credential: Credential,
        api: DingTalkApi,
        *,
        backoff_base: float = 1.0,
        backoff_cap: float = 30.0,
    ):
        super().__init__(credential, logger=_sdk_logger())
        self.api = api
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.connections = 0  # connections opened so far
        self.failures = 0  # failed attempts since the last good connection
        self.connected = asyncio.Event()
        self._stopping = False
        self._frames: set[asyncio.Task[Any]] = set()
        self._local_ip = ""

    # -- connection ------------------------------------------------------------------------------
    def open_connection(self) -> Any:  # the SDK's blocking version must never run
        raise RuntimeError("PostroomStreamClient opens connections with open_connection_async()")

    def get_host_ip(self) -> str:
        return self._local_ip

    async def _discover_local_ip(self) -> str:
        """The local address a connection to the gateway host would use (UDP connect sends nothing)."""
        parts = urlsplit(self.api.openapi)
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                parts.hostname, parts.port or 443, type=socket.SOCK_DGRAM
            )
            family, _, _, _, address = infos[0]
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                s.connect(address)
                return str(s.getsockname()[0])
        except OSError:
            return ""

    async def open_connection_async(self) -> dict[str, Any]:
        if not self._local_ip:
            self._local_ip = await self._discover_local_ip()
        topics = []
        if self._is_event_required:
            topics.append({"type": "EVENT", "topic": "*"})
        topics += [{"type": "CALLBACK", "topic": topic} for topic in self.callback_handler_map]
        ua = f"dingtalk-sdk-python/v{VERSION_STRING}-union postroom Python/{platform_module.python_version()}"
        return await self.api.open_connection(topics, self.get_host_ip(), ua)

    def backoff(self, failures: int) -> float:
        """Full jitter: a random wait up to base × 2^failures (capped), so replicas don't reconnect in step."""
        return random.uniform(0, min(self.backoff_cap, self.backoff_base * (2 ** min(failures, 16))))

    async def start(self) -> None:
        self.pre_start()
        while not self._stopping:
            try:
                connection = await self.open_connection_async()
                uri = f"{connection['endpoint']}?ticket={quote_plus(connection['ticket'])}"
                async with websockets.connect(
                    uri,
                    open_timeout=10,
                    close_timeout=2,
                    ping_interval=30,
                    ping_timeout=20,
                    max_size=4 * 1024 * 1024,
                ) as ws:
                    self.websocket = ws
                    self.connections += 1
                    self.connected.set()
                    self.failures = 0
                    async for raw in ws:
                        task = asyncio.get_running_loop().create_task(self.background_task(raw))
                        self._frames.add(task)
                        task.add_done_callback(self._frames.discard)
                log.info("DingTalk stream closed by the gateway; reconnecting")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # network, gateway or TLS trouble: back off and try again
                self.failures += 1
                log.warning(
                    "DingTalk stream connection failed (%s: %s); retry %d",
                    type(exc).__name__,
                    exc,
                    self.failures,
                )
            finally:
                self.connected.clear()
                self.websocket = None
            if not self._stopping:
                await asyncio.sleep(self.backoff(self.failures))

    async def stop(self) -> None:
        self._stopping = True
        ws = self.websocket
        if ws is not None:
            await ws.close()

    async def background_task(self, raw: Any) -> None:
        ws = self.websocket
        try:
            frame = json.loads(raw)
            if not isinstance(frame, dict):
                raise ValueError("a frame must be a JSON object")
        except (ValueError, RecursionError) as exc:
            log.warning("DingTalk frame is not JSON (%s); ignored", exc)
            return
        try:
            result = await self.route_message(frame)
            if result == DingTalkStreamClient.TAG_DISCONNECT and ws is not None:
                await ws.close()
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            message_id = (
                (frame.get("headers") or {}).get("messageId")
                if isinstance(frame.get("headers"), dict)
                else None
            )
            log.warning("DingTalk frame %s refused: %s: %s", message_id, type(exc).__name__, exc)
            if message_id and ws is not None:
                ack = AckMessage()
                ack.code = AckMessage.STATUS_BAD_REQUEST
                ack.headers.message_id = message_id
                ack.headers.content_type = "application/json"
                ack.message = f"bad frame: {type(exc).__name__}"
                try:
                    await ws.send(json.dumps(ack.to_dict()))
                except websockets.ConnectionClosed:
                    pass
        except websockets.ConnectionClosed:
            log.info("DingTalk stream closed before an ACK went out; the gateway will redeliver")
        except Exception:
            log.exception("DingTalk frame handling failed")
