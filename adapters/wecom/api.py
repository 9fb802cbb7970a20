"""WeCom's server API over httpx: the access token (cached, refreshed before it expires, fetched again
after an invalid-token error), app messages, template-card updates and the member directory."""

from __future__ import annotations

import logging
import time
from typing import Any

import httpx

from bot.tokens import StaleToken, TokenCache

log = logging.getLogger(__name__)

TOKEN_ERRORS = (40014, 42001, 40001)  # invalid token, expired token, invalid credential


class WeComError(Exception):
    def __init__(self, path: str, errcode: int, errmsg: str):
        super().__init__(f"WeCom {path} answered {errcode}: {errmsg}")
        self.errcode = errcode
        self.errmsg = errmsg


class WeComApi:
    def __init__(
        self,
        base_url: str,
        corp_id: str,
        secret: str,
        agent_id: int,
        *,
        timeout: float = 10.0,
        clock: Any = time.monotonic,
    ):
        self.base_url = base_url.rstrip("/")
        self.corp_id = corp_id
        self.secret = secret
        self.agent_id = agent_id
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=httpx.Timeout(timeout))
        self._tokens = TokenCache(self._fetch_token, clock=clock)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def token(self) -> str:
        return await self._tokens.get()

    @property
    def token_fetches(self) -> int:
        return self._tokens.fetches

    def forget_token(self, token: str) -> None:
        self._tokens.forget(token)

    async def _fetch_token(self) -> tuple[str, float]:
        data = await self._send(
            "GET", "/cgi-bin/gettoken", params={"corpid": self.corp_id, "corpsecret": self.secret}
        )
        if data.get("errcode", 0) != 0 or not data.get("access_token"):
            raise WeComError("/cgi-bin/gettoken", int(data.get("errcode", -1)), str(data.get("errmsg", "")))
        return str(data["access_token"]), float(data.get("expires_in", 7200))

    async def _send(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any],
        json: dict[str, Any] | None = None,
        files: dict[str, tuple[str, bytes, str]] | None = None,
    ) -> dict[str, Any]:
        """One HTTP exchange. Errors name the path and the status only: the URL's query carries the
        corp secret or the access token, and whatever is raised ends up in the logs."""
        try:
            response = await self._http.request(method, path, params=params, json=json, files=files)
        except httpx.HTTPError as exc:
            raise WeComError(path, -1, f"no answer ({type(exc).__name__})") from None
        if response.status_code >= 400:
            raise WeComError(path, response.status_code, f"HTTP {response.status_code}")
        try:
            data: dict[str, Any] = response.json()
        except ValueError:
            raise WeComError(path, response.status_code, "an answer that is not JSON") from None
        return data

    async def call(
        self,
        method: str,
        path: str,
        *,
        json: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
        files: dict[str, tuple[str, bytes, str]] | None = None,
    ) -> dict[str, Any]:
        """One API call; an invalid or expired token is fetched again and the call retried once."""

        async def attempt(token: str) -> dict[str, Any]:
            data = await self._send(
                method, path, params={**(params or {}), "access_token": token}, json=json, files=files
            )
            code = int(data.get("errcode", 0))
            if code != 0:
                error = WeComError(path, code, str(data.get("errmsg", "")))
                raise StaleToken(error) if code in TOKEN_ERRORS else error
            return data

        return await self._tokens.call(attempt)

    # -- the calls the adapter makes ---------------------------------------------------------------
    async def send(self, touser: str, msgtype: str, body: dict[str, Any]) -> dict[str, Any]:
        payload = {"touser": touser, "msgtype": msgtype, "agentid": self.agent_id, msgtype: body}
        return await self.call("POST", "/cgi-bin/message/send", json=payload)

    async def upload_image(self, filename: str, data: bytes) -> str:
        """The media id (valid three days) of a picture uploaded as temporary media: POST
        /cgi-bin/media/upload?type=image, multipart field `media` (PNG or JPG, at most 10 MB)."""
        got = await self.call(
            "POST",
            "/cgi-bin/media/upload",
            params={"type": "image"},
            files={"media": (filename, data, "image/png")},
        )
        media_id = str(got.get("media_id") or "")
        if not media_id:
            raise WeComError("/cgi-bin/media/upload", 0, "no media_id in the answer")
        return media_id

    async def update_template_card(
        self, userids: list[str], response_code: str, template_card: dict[str, Any]
    ) -> dict[str, Any]:
        payload = {
            "userids": userids,
            "agentid": self.agent_id,
            "response_code": response_code,
            "template_card": template_card,
        }
        return await self.call("POST", "/cgi-bin/message/update_template_card", json=payload)

    async def user(self, userid: str) -> dict[str, Any]:
        return await self.call("GET", "/cgi-bin/user/get", params={"userid": userid})

    async def userid_by_email(self, email: str, email_type: int = 1) -> str | None:
        """The UserID with this corporate (1) or personal (2) email, or None when nobody has it."""
        try:
            data = await self.call(
                "POST", "/cgi-bin/user/get_userid_by_email", json={"email": email, "email_type": email_type}
            )
        except WeComError as exc:
            if exc.errcode in (46004, 60103, 40010):  # no such member / invalid email
                return None
            raise
        return str(data.get("userid") or "") or None
