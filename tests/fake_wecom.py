"""A small fake of WeCom's server API (qyapi.weixin.qq.com) for tests, served on loopback."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


@dataclass
class FakeWeCom:
    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (path, body or query)
    valid_tokens: set[str] = field(default_factory=set)
    used_codes: set[str] = field(default_factory=set)
    token_requests: int = 0
    truncated: int = 0  # text messages cut at 2048 bytes, as WeCom does
    uploads: dict[str, dict[str, Any]] = field(default_factory=dict)  # media_id -> what was uploaded
    user_gate: asyncio.Event | None = None  # when set, user lookups wait for it (a slow directory)
    # path -> what its next calls answer, one entry a call: None (as usual) or (status, raw body), e.g.
    # a gateway's HTML page or an outage; an empty or missing list: as usual.
    faults: dict[str, list[tuple[int, str] | None]] = field(default_factory=dict)
    corp_secret: str = "app-secret"  # what gettoken accepts (a `postroom serve` test gives a generated one)
    _ids: Any = field(default_factory=lambda: itertools.count(1))

    def sent(self, msgtype: str | None = None, to: str | None = None) -> list[dict[str, Any]]:
        return [
            body
            for path, body in self.calls
            if path == "/cgi-bin/message/send"
            and (msgtype is None or body.get("msgtype") == msgtype)
            and (to is None or body.get("touser") == to)
        ]

    def media(self, media_id: str) -> dict[str, Any] | None:
        """An uploaded temporary medium: {type, filename, content_type, data}."""
        return self.uploads.get(media_id)

    def updates(self) -> list[dict[str, Any]]:
        return [body for path, body in self.calls if path == "/cgi-bin/message/update_template_card"]

    def _fault(self, path: str) -> Response | None:
        queued = self.faults.get(path)
        answer = queued.pop(0) if queued else None
        if answer is None:
            return None
        self.calls.append(("FAULT " + path, {"status": answer[0]}))
        return Response(answer[1], status_code=answer[0], media_type="text/html")

    def app(self) -> Starlette:
        def authorised(request: Request) -> bool:
            return request.query_params.get("access_token", "") in self.valid_tokens

        async def gettoken(request: Request) -> JSONResponse:
            self.token_requests += 1
            if request.query_params.get("corpsecret") != self.corp_secret:
                return JSONResponse({"errcode": 40001, "errmsg": "invalid credential"})
            token = f"token-{next(self._ids)}"
            self.valid_tokens.add(token)
            return JSONResponse({"errcode": 0, "errmsg": "ok", "access_token": token, "expires_in": 7200})

        async def send(request: Request) -> Response:
            if (fault := self._fault("/cgi-bin/message/send")) is not None:
                return fault
            if not authorised(request):
                return JSONResponse({"errcode": 42001, "errmsg": "access_token expired"})
            body = await request.json()
            if (
                body.get("msgtype") == "image"
                and (body.get("image") or {}).get("media_id") not in self.uploads
            ):
                return JSONResponse({"errcode": 40007, "errmsg": "invalid media_id"})
            if body.get("msgtype") == "text":  # WeCom cuts a text's content past 2048 bytes, silently
                content = str((body.get("text") or {}).get("content") or "").encode()
                if len(content) > 2048:
                    body = {**body, "text": {"content": content[:2048].decode("utf-8", "ignore")}}
                    self.truncated += 1
            self.calls.append(("/cgi-bin/message/send", body))
            answer: dict[str, Any] = {"errcode": 0, "errmsg": "ok", "msgid": f"msg-{next(self._ids)}"}
            if body.get("msgtype") == "template_card":
                answer["response_code"] = f"sent-code-{next(self._ids)}"
            return JSONResponse(answer)

        async def media_upload(request: Request) -> Response:
            """POST /cgi-bin/media/upload?type=image: multipart, the file in the field `media`; images
            are PNG or JPG, more than 5 bytes and at most 10 MB; the media id is valid three days."""
            if (fault := self._fault("/cgi-bin/media/upload")) is not None:
                return fault
            if not authorised(request):
                return JSONResponse({"errcode": 42001, "errmsg": "access_token expired"})
            kind = request.query_params.get("type", "")
            if kind not in ("image", "voice", "video", "file"):
                return JSONResponse({"errcode": 40004, "errmsg": "invalid media type"})
            form = await request.form()
            media = form.get("media")
            if media is None or isinstance(media, str):
                return JSONResponse({"errcode": 41005, "errmsg": "media data missing"})
            data = await media.read()
            if len(data) <= 5 or (kind == "image" and len(data) > 10 * 1024 * 1024):
                return JSONResponse({"errcode": 40006, "errmsg": "invalid file size"})
            if kind == "image" and not (data.startswith(b"\x89PNG") or data.startswith(b"\xff\xd8")):
                return JSONResponse({"errcode": 40005, "errmsg": "invalid file type"})
            media_id = f"media-{next(self._ids)}"
            self.uploads[media_id] = {
                "type": kind,
                "filename": media.filename,
                "content_type": media.content_type,
                "data": data,
            }
            self.calls.append(("/cgi-bin/media/upload", {"type": kind, "filename": media.filename}))
            return JSONResponse(
                {"errcode": 0, "errmsg": "", "type": kind, "media_id": media_id, "created_at": "1380000000"}
            )

        async def update_card(request: Request) -> JSONResponse:
            if not authorised(request):
                return JSONResponse({"errcode": 42001, "errmsg": "access_token expired"})
            body = await request.json()
            self.calls.append(("/cgi-bin/message/update_template_card", body))
            code = body.get("response_code", "")
            if code in self.used_codes:
                return JSONResponse({"errcode": 40029, "errmsg": "invalid response_code"})
            self.used_codes.add(code)
            return JSONResponse({"errcode": 0, "errmsg": "ok", "invaliduser": []})

        async def user_get(request: Request) -> JSONResponse:
            if not authorised(request):
                return JSONResponse({"errcode": 42001, "errmsg": "access_token expired"})
            userid = request.query_params.get("userid", "")
            self.calls.append(("/cgi-bin/user/get", {"userid": userid}))
            if self.user_gate is not None:
                await self.user_gate.wait()
            if userid not in self.users:
                return JSONResponse({"errcode": 60111, "errmsg": "userid not found"})
            return JSONResponse({"errcode": 0, "errmsg": "ok", "userid": userid, **self.users[userid]})

        async def userid_by_email(request: Request) -> JSONResponse:
            if not authorised(request):
                return JSONResponse({"errcode": 42001, "errmsg": "access_token expired"})
            body = await request.json()
            self.calls.append(("/cgi-bin/user/get_userid_by_email", body))
            for userid, user in self.users.items():
                if body.get("email") in (user.get("email"), user.get("biz_mail"), user.get("hidden_email")):
                    return JSONResponse({"errcode": 0, "errmsg": "ok", "userid": userid})
            return JSONResponse({"errcode": 46004, "errmsg": "user no exist"})

        return Starlette(
            routes=[
                Route("/cgi-bin/user/get_userid_by_email", userid_by_email, methods=["POST"]),
                Route("/cgi-bin/gettoken", gettoken),
                Route("/cgi-bin/message/send", send, methods=["POST"]),
                Route("/cgi-bin/media/upload", media_upload, methods=["POST"]),
                Route("/cgi-bin/message/update_template_card", update_card, methods=["POST"]),
                Route("/cgi-bin/user/get", user_get),
            ]
        )


def generated_callback_secrets() -> tuple[str, str, str]:
    """A callback Token, an EncodingAESKey and an app Secret as the WeCom console makes them, fresh each
    call: `postroom serve` refuses the public test vectors (they are in Postroom's source)."""
    import base64
    import secrets

    while True:
        aes_key = base64.b64encode(secrets.token_bytes(32)).decode().rstrip("=")
        if aes_key.isalnum():
            break
    return secrets.token_hex(12), aes_key, secrets.token_urlsafe(32)
