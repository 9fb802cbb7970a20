"""DingTalk's OpenAPI over httpx, with a timeout on every call and nothing blocking the event loop.

The SDK's own helpers (`get_access_token`, the reply and card helpers) call `requests` without a
timeout from async code, so Postroom makes these calls itself: the app access token (cached,
refreshed before it expires, refetched after a 401), the Stream gateway's open-connection call, robot
messages, interactive cards, and the user lookup on the older `oapi` host.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import httpx

from bot.tokens import StaleToken, TokenCache

log = logging.getLogger(__name__)
OAPI_TOKEN_ERRORS = (40014, 42001, 88)


class DingTalkError(Exception):
    def __init__(self, path: str, status: int, detail: str):
        super().__init__(f"DingTalk {path} answered {status}: {detail[:300]}")
        self.status = status


class DingTalkApi:
    def __init__(
        self,
        openapi: str,
        oapi: str,
        client_id: str,
        client_secret: str,
        *,
        timeout: float = 10.0,
        clock: Any = time.monotonic,
    ):
        self.openapi = openapi.rstrip("/")
        self.oapi = oapi.rstrip("/")
        self.client_id = client_id
        self.client_secret = client_secret
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(timeout))
        self._tokens = TokenCache(self._fetch_token, clock=clock)

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- token ---------------------------------------------------------------------------------------
    async def token(self) -> str:
        return await self._tokens.get()

    def forget_token(self, token: str) -> None:
        self._tokens.forget(token)

    async def _fetch_token(self) -> tuple[str, float]:
        data = await self._post_plain(
            "/v1.0/oauth2/accessToken", {"appKey": self.client_id, "appSecret": self.client_secret}
        )
        if not data.get("accessToken"):
            raise DingTalkError("/v1.0/oauth2/accessToken", 200, self._clean(json.dumps(data)))
        return str(data["accessToken"]), float(data.get("expireIn", 7200))

    async def _post_plain(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = await self._send("POST", self.openapi + path, path, json=body)
        if response.status_code >= 400:
            raise DingTalkError(path, response.status_code, self._clean(response.text))
        result: dict[str, Any] = response.json()
        return result

    async def _send(self, method: str, url: str, path: str, **kwargs: Any) -> httpx.Response:
        """One HTTP exchange. Errors name the path, never the URL (the oapi host and session webhooks
        carry tokens in the query) and whatever is raised ends up in the logs."""
        try:
            return await self._http.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            raise DingTalkError(path, -1, f"no answer ({type(exc).__name__})") from None

    def _clean(self, text: str) -> str:
        """An error body with the app secret and the token blanked out, in case a server echoes them."""
        for secret in (self.client_secret, self._tokens.current):
            if secret:
                text = text.replace(secret, "***")
        return text

    async def call(self, method: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """An OpenAPI (api.dingtalk.com) call with the app token; a 401 refetches the token once."""

        async def attempt(token: str) -> dict[str, Any]:
            response = await self._send(
                method, self.openapi + path, path, json=body, headers={"x-acs-dingtalk-access-token": token}
            )
            if response.status_code >= 400:
                error = DingTalkError(path, response.status_code, self._clean(response.text))
                raise StaleToken(error) if response.status_code == 401 else error
            return response.json() if response.content else {}

        return await self._tokens.call(attempt)

    async def oapi_call(
        self,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        params: dict[str, str] | None = None,
        files: dict[str, tuple[str, bytes, str]] | None = None,
    ) -> dict[str, Any]:
        """A call on the older oapi host (token in the query, errors in `errcode`): a JSON body, or a
        multipart upload (`files`)."""

        async def attempt(token: str) -> dict[str, Any]:
            sent: dict[str, Any] = {"files": files} if files is not None else {"json": body}
            response = await self._send(
                "POST", self.oapi + path, path, params={**(params or {}), "access_token": token}, **sent
            )
            if response.status_code >= 400:
                raise DingTalkError(path, response.status_code, self._clean(response.text))
            data: dict[str, Any] = response.json()
            code = int(data.get("errcode", 0))
            if code != 0:
                error = DingTalkError(path, code, str(data.get("errmsg", "")))
                raise StaleToken(error) if code in OAPI_TOKEN_ERRORS else error
            return data

        return await self._tokens.call(attempt)

    # -- the calls the adapter makes ---------------------------------------------------------------------
    async def open_connection(
        self, subscriptions: list[dict[str, str]], local_ip: str, ua: str
    ) -> dict[str, Any]:
        data = await self._post_plain(
            "/v1.0/gateway/connections/open",
            {
                "clientId": self.client_id,
                "clientSecret": self.client_secret,
                "subscriptions": subscriptions,
                "ua": ua,
                "localIp": local_ip,
            },
        )
        if not data.get("endpoint") or not data.get("ticket"):
            raise DingTalkError("/v1.0/gateway/connections/open", 200, json.dumps(data))
        return data

    async def session_webhook(self, url: str, body: dict[str, Any]) -> None:
        response = await self._send("POST", url, "sessionWebhook", json=body)
        if response.status_code >= 400:
            raise DingTalkError("sessionWebhook", response.status_code, self._clean(response.text))
        data = response.json() if response.content else {}
        if int(data.get("errcode", 0)) != 0:
            raise DingTalkError("sessionWebhook", int(data["errcode"]), str(data.get("errmsg", "")))

    async def send_to_users(
        self, robot_code: str, user_ids: list[str], msg_key: str, msg_param: dict[str, Any]
    ) -> dict[str, Any]:
        return await self.call(
            "POST",
            "/v1.0/robot/oToMessages/batchSend",
            {
                "robotCode": robot_code,
                "userIds": user_ids,
                "msgKey": msg_key,
                "msgParam": json.dumps(msg_param, ensure_ascii=False),
            },
        )

    async def send_to_group(
        self, robot_code: str, conversation_id: str, msg_key: str, msg_param: dict[str, Any]
    ) -> dict[str, Any]:
        return await self.call(
            "POST",
            "/v1.0/robot/groupMessages/send",
            {
                "robotCode": robot_code,
                "openConversationId": conversation_id,
                "msgKey": msg_key,
                "msgParam": json.dumps(msg_param, ensure_ascii=False),
            },
        )

    async def create_and_deliver_card(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self.call("POST", "/v1.0/card/instances/createAndDeliver", body)

    async def update_card(self, out_track_id: str, params: dict[str, str]) -> dict[str, Any]:
        return await self.call(
            "PUT",
            "/v1.0/card/instances",
            {
                "outTrackId": out_track_id,
                "cardData": {"cardParamMap": params},
                "cardUpdateOptions": {"updateCardDataByKey": True},
            },
        )

    async def upload_image(self, filename: str, data: bytes) -> str:
        """The media id of a picture uploaded with oapi's media/upload (`type=image`, multipart field
        `media`); robot image messages (`sampleImageMsg`) take it as their `photoURL`."""
        got = await self.oapi_call(
            "/media/upload", params={"type": "image"}, files={"media": (filename, data, "image/png")}
        )
        media_id = str(got.get("media_id") or "")
        if not media_id:
            raise DingTalkError("/media/upload", 200, "no media_id in the answer")
        return media_id

    async def user(self, user_id: str) -> dict[str, Any]:
        data = await self.oapi_call("/topapi/v2/user/get", {"userid": user_id, "language": "zh_CN"})
        result: dict[str, Any] = data.get("result") or {}
        return result
