"""A fake Slack on loopback for tests: the Web API (the calls Postroom makes), response URLs,
and a Socket Mode WebSocket server. The way slack-bolt tests itself: the real SDK, a local server.

Every call is recorded as (method, params). Replies can be scripted per method (`fail(...)`)
and delayed (`delay[...]`).
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from aiohttp import WSMsgType, web
from slack_sdk.signature import SignatureVerifier

SIGNING_SECRET = "test-signing-secret-3f9a1c"
BOT_TOKEN = "xoxb-test-bot-token-771"
APP_TOKEN = "xapp-test-app-token-552"
TEAM = "T0POSTROOM"


def user(uid: str, email: str | None, name: str, **extra: Any) -> dict[str, Any]:
    profile: dict[str, Any] = {"real_name": name, "display_name": name.split()[0]}
    if email:
        profile["email"] = email
    profile.update(extra.pop("profile", {}))
    return {
        "id": uid,
        "team_id": TEAM,
        "name": name.split()[0].lower(),
        "real_name": name,
        "deleted": False,
        "is_bot": False,
        "is_restricted": False,
        "is_ultra_restricted": False,
        "tz": "Europe/Berlin",
        "updated": int(time.time()),
        "profile": profile,
        **extra,
    }


@dataclass
class Call:
    method: str
    params: dict[str, Any]
    at: float


@dataclass
class FakeSlack:
    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    responses: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (response_url key, body)
    scripted: dict[str, list[tuple[int, dict[str, str], dict[str, Any]]]] = field(default_factory=dict)
    delay: dict[str, float] = field(default_factory=dict)
    response_status: int = 200  # what response URLs answer
    port: int = 0
    _ts: itertools.count = field(default_factory=lambda: itertools.count(1))
    _runner: web.AppRunner | None = None
    _changed: asyncio.Condition | None = None
    sockets: list[web.WebSocketResponse] = field(default_factory=list)
    acks: dict[str, dict[str, Any]] = field(default_factory=dict)
    # files upload v2: what files.getUploadURLExternal handed out, and the bytes POSTed to each URL
    uploads: dict[str, dict[str, Any]] = field(default_factory=dict)  # file id -> {filename, length, data}

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> FakeSlack:
        self._changed = asyncio.Condition()
        app = web.Application()
        app.router.add_post("/api/{method}", self._api)
        app.router.add_get("/api/{method}", self._api)
        app.router.add_post("/response/{key}", self._response)
        app.router.add_post("/upload/{file_id}", self._upload)
        app.router.add_get("/ws", self._ws)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        for ws in list(self.sockets):
            await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/"

    def response_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/response/{uuid.uuid4().hex[:12]}"

    # -- scripting and reading -------------------------------------------------------------------
    def fail(
        self,
        method: str,
        status: int = 200,
        body: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        """The next call of `method` gets this answer instead of the normal one."""
        self.scripted.setdefault(method, []).append(
            (status, headers or {}, body or {"ok": False, "error": "fatal"})
        )

    def of(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method == method]

    async def wait_for(self, predicate: Any, timeout: float = 10.0) -> Any:
        """Wait (bounded) until predicate() is truthy; return its value."""
        assert self._changed is not None
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(predicate), timeout)
            except TimeoutError:
                raise AssertionError(
                    f"condition not met within {timeout}s; calls: {[c.method for c in self.calls]}"
                ) from None
        return predicate()

    async def _notify(self) -> None:
        assert self._changed is not None
        async with self._changed:
            self._changed.notify_all()

    # -- the Web API -----------------------------------------------------------------------------
    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        params: dict[str, Any] = dict(request.query)
        if request.content_type == "application/json":
            params.update(await request.json())
        elif request.method == "POST":
            params.update(await request.post())
        for key in ("blocks", "view", "attachments", "files"):
            if isinstance(params.get(key), str):
                params[key] = json.loads(params[key])
        params["_auth"] = hashlib.sha256(request.headers.get("Authorization", "").encode()).hexdigest()[:8]
        self.calls.append(Call(method, params, time.monotonic()))
        await self._notify()
        if self.delay.get(method):
            await asyncio.sleep(self.delay[method])
        script = self.scripted.get(method)
        if script:
            status, headers, body = script.pop(0)
            return web.json_response(body, status=status, headers=headers)
        return web.json_response(self._answer(method, params))

    def _answer(self, method: str, p: dict[str, Any]) -> dict[str, Any]:
        if method == "auth.test":
            return {
                "ok": True,
                "url": "https://postroom-test.slack.com/",
                "team": "Test",
                "user": "postroom",
                "team_id": TEAM,
                "user_id": "UBOT",
                "bot_id": "BBOT",
            }
        if method == "users.info":
            found = self.users.get(str(p.get("user")))
            return {"ok": True, "user": found} if found else {"ok": False, "error": "user_not_found"}
        if method == "chat.postMessage":
            p["_ts"] = f"1700000000.{next(self._ts):06d}"
            return {
                "ok": True,
                "channel": p.get("channel"),
                "ts": p["_ts"],
                "message": {"text": p.get("text"), "blocks": p.get("blocks")},
            }
        if method == "chat.update":
            return {"ok": True, "channel": p.get("channel"), "ts": p.get("ts"), "text": p.get("text")}
        if method == "chat.postEphemeral":
            return {"ok": True, "message_ts": f"1700000001.{next(self._ts):06d}"}
        if method == "views.open":
            return {"ok": True, "view": {"id": "V" + uuid.uuid4().hex[:8].upper()}}
        if method == "files.getUploadURLExternal":
            # Slack refuses a call without filename and length (the file's size in bytes).
            if not p.get("filename") or not str(p.get("length", "")).isdigit():
                return {"ok": False, "error": "invalid_arguments"}
            file_id = "F" + uuid.uuid4().hex[:10].upper()
            self.uploads[file_id] = {"filename": p["filename"], "length": int(p["length"]), "data": None}
            return {
                "ok": True,
                "upload_url": f"http://127.0.0.1:{self.port}/upload/{file_id}",
                "file_id": file_id,
            }
        if method == "files.completeUploadExternal":
            files = p.get("files") or []
            if not files or any(self.uploads.get(f.get("id"), {}).get("data") is None for f in files):
                return {"ok": False, "error": "file_not_found"}  # never uploaded to its URL
            return {
                "ok": True,
                "files": [
                    {"id": f["id"], "title": f.get("title"), "name": self.uploads[f["id"]]["filename"]}
                    for f in files
                ],
            }
        if method == "apps.connections.open":
            return {"ok": True, "url": f"ws://127.0.0.1:{self.port}/ws"}
        return {"ok": True}

    async def _upload(self, request: web.Request) -> web.Response:
        """Step 2 of files upload v2: the file's bytes POSTed to the URL Slack handed out."""
        entry = self.uploads.get(request.match_info["file_id"])
        if entry is None:
            return web.Response(status=404, text="unknown upload")
        data = await request.read()
        if len(data) != entry["length"]:
            return web.Response(status=400, text="length mismatch")
        entry["data"] = data
        self.calls.append(
            Call("upload", {"file_id": request.match_info["file_id"], "bytes": len(data)}, time.monotonic())
        )
        await self._notify()
        return web.Response(text=f"OK - {len(data)}")

    def shared_files(self) -> list[tuple[dict[str, Any], bytes]]:
        """Files completed into a channel: (completeUploadExternal's params, the uploaded bytes) per file."""
        out = []
        for call in self.of("files.completeUploadExternal"):
            for f in call.params.get("files") or []:
                data = self.uploads.get(f.get("id"), {}).get("data")
                if data is not None:
                    out.append(({**call.params, "file": f}, data))
        return out

    async def _response(self, request: web.Request) -> web.Response:
        self.responses.append((request.match_info["key"], await request.json()))
        await self._notify()
        if self.response_status != 200:
            return web.Response(status=self.response_status, text="expired_url")
        return web.Response(text="ok")

    # -- Socket Mode -------------------------------------------------------------------------------
    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        self.sockets.append(ws)
        await ws.send_str(
            json.dumps(
                {
                    "type": "hello",
                    "num_connections": 1,
                    "connection_info": {"app_id": "A0POSTROOM"},
                    "debug_info": {"host": "fake", "approximate_connection_time": 3600},
                }
            )
        )
        await self._notify()
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                data = json.loads(msg.data)
                if "envelope_id" in data:
                    self.acks[data["envelope_id"]] = data
                    await self._notify()
        if ws in self.sockets:
            self.sockets.remove(ws)
        return ws

    async def envelope(self, kind: str, payload: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
        """Send one Socket Mode envelope; return the client's acknowledgement."""
        await self.wait_for(lambda: self.sockets, timeout)
        envelope_id = str(uuid.uuid4())
        await self.sockets[-1].send_str(
            json.dumps(
                {
                    "envelope_id": envelope_id,
                    "type": kind,
                    "payload": payload,
                    "accepts_response_payload": kind != "events_api",
                    "retry_attempt": 0,
                    "retry_reason": "",
                }
            )
        )
        return await self.wait_for(lambda: self.acks.get(envelope_id), timeout)


# -- what Slack sends --------------------------------------------------------------------------------
def signed_headers(
    body: bytes,
    *,
    secret: str = SIGNING_SECRET,
    timestamp: int | None = None,
    content_type: str = "application/x-www-form-urlencoded",
) -> dict[str, str]:
    ts = str(int(time.time()) if timestamp is None else timestamp)
    signature = SignatureVerifier(secret).generate_signature(timestamp=ts, body=body)
    return {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": signature, "Content-Type": content_type}


def command_body(
    fake: FakeSlack, user_id: str, command: str, text: str, channel: str = "C0GENERAL"
) -> dict[str, str]:
    return {
        "token": "legacy-verification",
        "team_id": TEAM,
        "team_domain": "test",
        "channel_id": channel,
        "channel_name": "general",
        "user_id": user_id,
        "user_name": user_id.lower(),
        "command": command,
        "text": text,
        "api_app_id": "A0POSTROOM",
        "is_enterprise_install": "false",
        "response_url": fake.response_url(),
        "trigger_id": f"trig.{uuid.uuid4().hex}",
    }


def form(fields: dict[str, str]) -> bytes:
    return urlencode(fields).encode()


def click_payload(fake: FakeSlack, user_id: str, posted: Call, action_id: str) -> dict[str, Any]:
    """A block_actions payload for a click on the button `action_id` of a message we posted."""
    ts = posted.params["_ts"]
    button = next(
        e
        for b in posted.params["blocks"]
        if b["type"] == "actions"
        for e in b["elements"]
        if e["action_id"] == action_id
    )
    channel = posted.params["channel"]
    return {
        "type": "block_actions",
        "team": {"id": TEAM, "domain": "test"},
        "user": {"id": user_id, "username": user_id.lower(), "name": user_id.lower(), "team_id": TEAM},
        "api_app_id": "A0POSTROOM",
        "token": "legacy-verification",
        "container": {"type": "message", "message_ts": ts, "channel_id": channel, "is_ephemeral": False},
        "trigger_id": f"trig.{uuid.uuid4().hex}",
        "channel": {"id": channel, "name": "approvals"},
        "message": {
            "type": "message",
            "ts": ts,
            "text": posted.params.get("text"),
            "blocks": posted.params["blocks"],
        },
        "response_url": fake.response_url(),
        "actions": [
            {
                "action_id": action_id,
                "block_id": "b",
                "text": button["text"],
                "value": button["value"],
                "type": "button",
                "action_ts": f"{time.time():.6f}",
            }
        ],
    }


def event_envelope(
    event: dict[str, Any], event_id: str | None = None, at: float | None = None
) -> dict[str, Any]:
    return {
        "token": "legacy-verification",
        "team_id": TEAM,
        "api_app_id": "A0POSTROOM",
        "event": event,
        "type": "event_callback",
        "event_id": event_id or f"Ev{uuid.uuid4().hex[:10].upper()}",
        "event_time": int(time.time() if at is None else at),
        "authorizations": [
            {"team_id": TEAM, "user_id": "UBOT", "is_bot": True, "is_enterprise_install": False}
        ],
    }
