"""Finding 12: the WeCom and DingTalk API clients never put a secret or a token into an error (errors end
up in the logs through Core._done). Real clients against a loopback server that answers 500, and against
a port nobody listens on."""

from __future__ import annotations

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from adapters.dingtalk.openapi import DingTalkApi, DingTalkError
from adapters.wecom.api import WeComApi, WeComError
from tests.loopback import serve
from tests.smtp import free_port

SECRET = "s3cr3t-app-secret"
TOKEN = "tok-very-private"


def broken_api() -> Starlette:
    """Every path answers 500 with a body that echoes the query (as some proxies do)."""

    async def anything(request: Request) -> PlainTextResponse | JSONResponse:
        if request.url.path == "/cgi-bin/gettoken" and request.query_params.get("corpsecret") == SECRET:
            if "ok" in request.query_params.get("corpid", ""):
                return JSONResponse({"errcode": 0, "access_token": TOKEN, "expires_in": 7200})
        if request.url.path == "/v1.0/oauth2/accessToken":
            return JSONResponse({"accessToken": TOKEN, "expireIn": 7200})
        return PlainTextResponse(f"upstream failed for {request.url}", status_code=500)

    return Starlette(routes=[Route("/{path:path}", anything, methods=["GET", "POST", "PUT"])])


def assert_clean(exc: BaseException) -> None:
    text = f"{exc!s} {exc!r}"
    assert SECRET not in text and TOKEN not in text, text
    assert exc.__cause__ is None and (exc.__context__ is None or exc.__suppress_context__), (
        "the httpx error (with the URL) must not be chained"
    )


async def test_wecom_errors_carry_no_secret_or_token() -> None:
    async with serve(broken_api()) as url:
        for corp_id in ("corp", "corp-ok"):  # the token call fails; the token works and the call fails
            api = WeComApi(url, corp_id, SECRET, 1000002, timeout=5)
            try:
                with pytest.raises(WeComError) as caught:
                    await api.send("alice", "text", {"content": "hi"})
            finally:
                await api.aclose()
            assert "500" in str(caught.value)
            assert_clean(caught.value)
    api = WeComApi(f"http://127.0.0.1:{free_port()}", "corp", SECRET, 1000002, timeout=5)
    try:
        with pytest.raises(WeComError) as caught:
            await api.token()
    finally:
        await api.aclose()
    assert "no answer" in str(caught.value)
    assert_clean(caught.value)


async def test_dingtalk_errors_carry_no_secret_or_token() -> None:
    async with serve(broken_api()) as url:
        api = DingTalkApi(url, url, "client", SECRET, timeout=5)
        try:
            for call in (api.user("u1"), api.send_to_users("robot", ["u1"], "sampleText", {"content": "hi"})):
                with pytest.raises(DingTalkError) as caught:
                    await call
                assert "500" in str(caught.value)
                assert_clean(caught.value)
        finally:
            await api.aclose()
    api = DingTalkApi(
        f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}", "client", SECRET, timeout=5
    )
    try:
        with pytest.raises(DingTalkError) as caught:
            await api.token()
    finally:
        await api.aclose()
    assert "no answer" in str(caught.value)
    assert_clean(caught.value)
