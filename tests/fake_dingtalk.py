"""A small fake of DingTalk for tests, on loopback: the Stream gateway (the open-connection call and a
WebSocket that pushes frames and collects ACKs) and the OpenAPI endpoints the adapter calls."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

BOT_TOPIC = "/v1.0/im/bot/messages/get"
CARD_TOPIC = "/v1.0/card/instances/callback"


@dataclass
class FakeDingTalk:
    client_id: str = "ding-app"
    client_secret: str = "ding-secret"
    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    calls: list[tuple[str, str, Any]] = field(default_factory=list)  # (method, path, body)
    opens: list[dict[str, Any]] = field(default_factory=list)
    acks: list[dict[str, Any]] = field(default_factory=list)
    connections: int = 0
    closed: int = 0
    uploads: dict[str, dict[str, Any]] = field(default_factory=dict)  # media_id -> what was uploaded
    user_gate: asyncio.Event | None = None  # when set, user lookups wait for it (a slow directory)
    # path -> what its next calls answer, one entry a call: None (as usual) or (status, raw body), e.g.
    # a gateway's HTML page or an outage; an empty or missing list: as usual.
    faults: dict[str, list[tuple[int, str] | None]] = field(default_factory=dict)
    _socket: WebSocket | None = None
    _tickets: set[str] = field(default_factory=set)
    _ids: Any = field(default_factory=lambda: itertools.count(1))

    # -- what tests look at -----------------------------------------------------------------------
    def ack_for(self, message_id: str) -> dict[str, Any] | None:
        return next((a for a in self.acks if a.get("headers", {}).get("messageId") == message_id), None)

    def _fault(self, path: str) -> Response | None:
        queued = self.faults.get(path)
        answer = queued.pop(0) if queued else None
        if answer is None:
            return None
        self.calls.append(("FAULT", path, answer))
        return Response(answer[1], status_code=answer[0], media_type="text/html")

    def made(self, path: str, method: str = "POST") -> list[Any]:
        return [body for m, p, body in self.calls if p == path and m == method]

    @property
    def online(self) -> bool:
        return self._socket is not None

    # -- what tests push ----------------------------------------------------------------------------
    async def push(self, frame: dict[str, Any]) -> str:
        assert self._socket is not None, "no client is connected"
        await self._socket.send_text(json.dumps(frame))
        return str(frame.get("headers", {}).get("messageId", ""))

    async def push_raw(self, text: str) -> None:
        assert self._socket is not None, "no client is connected"
        await self._socket.send_text(text)

    def frame(self, kind: str, headers: dict[str, Any], data: Any) -> dict[str, Any]:
        message_id = f"frame-{next(self._ids)}"
        return {
            "specVersion": "1.0",
            "type": kind,
            "headers": {
                "messageId": message_id,
                "contentType": "application/json",
                "time": str(int(time.time() * 1000)),
                "appId": "app-1",
                **headers,
            },
            "data": data if isinstance(data, str) else json.dumps(data, ensure_ascii=False),
        }

    def bot_message(self, **data: Any) -> dict[str, Any]:
        return self.frame("CALLBACK", {"topic": BOT_TOPIC}, data)

    def card_click(self, data: Any) -> dict[str, Any]:
        return self.frame("CALLBACK", {"topic": CARD_TOPIC}, data)

    def event(self, event_type: str, event_id: str, data: Any, born_ms: int | None = None) -> dict[str, Any]:
        return self.frame(
            "EVENT",
            {
                "topic": "*",
                "eventType": event_type,
                "eventId": event_id,
                "eventBornTime": str(born_ms or int(time.time() * 1000)),
                "eventCorpId": "ding-corp",
                "eventUnifiedAppId": "app-1",
            },
            data,
        )

    def system(self, topic: str) -> dict[str, Any]:
        return self.frame("SYSTEM", {"topic": topic}, {})

    # -- the fake itself ------------------------------------------------------------------------------
    def app(self) -> Starlette:
        async def open_connection(request: Request) -> Response:
            body = await request.json()
            self.opens.append(body)
            if body.get("clientId") != self.client_id or body.get("clientSecret") != self.client_secret:
                return JSONResponse({"code": "invalidClient", "message": "bad credentials"}, status_code=401)
            ticket = f"ticket-{next(self._ids)}"
            self._tickets.add(ticket)
            return JSONResponse({"endpoint": f"ws://{request.url.netloc}/connect", "ticket": ticket})

        async def connect(ws: WebSocket) -> None:
            ticket = ws.query_params.get("ticket", "")
            if ticket not in self._tickets:
                await ws.close(code=4001)
                return
            self._tickets.discard(ticket)  # a ticket opens one connection
            await ws.accept()
            self._socket = ws
            self.connections += 1
            try:
                while True:
                    self.acks.append(json.loads(await ws.receive_text()))
            except WebSocketDisconnect:
                pass
            finally:
                self.closed += 1
                if self._socket is ws:
                    self._socket = None

        async def access_token(request: Request) -> Response:
            body = await request.json()
            if body.get("appKey") != self.client_id or body.get("appSecret") != self.client_secret:
                return JSONResponse({"code": "invalidClient"}, status_code=400)
            return JSONResponse({"accessToken": f"tok-{next(self._ids)}", "expireIn": 7200})

        def recorder(path: str, answer: dict[str, Any]) -> Any:
            async def record(request: Request) -> Response:
                if (fault := self._fault(path)) is not None:
                    return fault
                if not request.headers.get("x-acs-dingtalk-access-token", "").startswith("tok-"):
                    return JSONResponse({"code": "InvalidAuthentication"}, status_code=401)
                self.calls.append((request.method, path, await request.json()))
                return JSONResponse(answer)

            return record

        async def webhook(request: Request) -> Response:
            self.calls.append(("POST", request.url.path, await request.json()))
            return JSONResponse({"errcode": 0, "errmsg": "ok"})

        async def user_get(request: Request) -> Response:
            if not request.query_params.get("access_token", "").startswith("tok-"):
                return JSONResponse({"errcode": 40014, "errmsg": "invalid token"})
            body = await request.json()
            self.calls.append(("POST", "/topapi/v2/user/get", body))
            if self.user_gate is not None:
                await self.user_gate.wait()
            user = self.users.get(body.get("userid", ""))
            if user is None:
                return JSONResponse({"errcode": 60121, "errmsg": "user not found"})
            return JSONResponse({"errcode": 0, "errmsg": "ok", "result": {"userid": body["userid"], **user}})

        async def media_upload(request: Request) -> Response:
            """oapi POST /media/upload?access_token=…&type=image: multipart, the file in `media`
            (images: jpg, gif, png, bmp, at most 20 MB) → {errcode, media_id, type, created_at}."""
            if (fault := self._fault("/media/upload")) is not None:
                return fault
            if not request.query_params.get("access_token", "").startswith("tok-"):
                return JSONResponse({"errcode": 40014, "errmsg": "invalid token"})
            kind = request.query_params.get("type", "")
            if kind not in ("image", "voice", "video", "file"):
                return JSONResponse({"errcode": 40004, "errmsg": "invalid media type"})
            form = await request.form()
            media = form.get("media")
            if media is None or isinstance(media, str):
                return JSONResponse({"errcode": 41005, "errmsg": "media data missing"})
            data = await media.read()
            if kind == "image" and not data.startswith((b"\x89PNG", b"\xff\xd8", b"GIF8", b"BM")):
                return JSONResponse({"errcode": 40005, "errmsg": "invalid file type"})
            media_id = f"@lA{next(self._ids):06d}"
            self.uploads[media_id] = {"type": kind, "filename": media.filename, "data": data}
            self.calls.append(("POST", "/media/upload", {"type": kind, "filename": media.filename}))
            return JSONResponse(
                {
                    "errcode": 0,
                    "errmsg": "ok",
                    "media_id": media_id,
                    "type": kind,
                    "created_at": 1700000000000,
                }
            )

        return Starlette(
            routes=[
                Route("/media/upload", media_upload, methods=["POST"]),
                Route("/v1.0/gateway/connections/open", open_connection, methods=["POST"]),
                WebSocketRoute("/connect", connect),
                Route("/v1.0/oauth2/accessToken", access_token, methods=["POST"]),
                Route(
                    "/v1.0/robot/oToMessages/batchSend",
                    recorder("/v1.0/robot/oToMessages/batchSend", {"processQueryKey": "q1"}),
                    methods=["POST"],
                ),
                Route(
                    "/v1.0/robot/groupMessages/send",
                    recorder("/v1.0/robot/groupMessages/send", {"processQueryKey": "q2"}),
                    methods=["POST"],
                ),
                Route(
                    "/v1.0/card/instances/createAndDeliver",
                    recorder("/v1.0/card/instances/createAndDeliver", {"success": True}),
                    methods=["POST"],
                ),
                Route(
                    "/v1.0/card/instances",
                    recorder("/v1.0/card/instances", {"success": True}),
                    methods=["PUT"],
                ),
                Route("/webhook/{sid}", webhook, methods=["POST"]),
                Route("/topapi/v2/user/get", user_get, methods=["POST"]),
            ]
        )
