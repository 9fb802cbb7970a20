"""No credential in a log line: `postroom -v serve` against the WeCom fake logs httpx's request lines with
`corpsecret=***` and `access_token=***`; the mask also covers arguments, tracebacks and Slack tokens."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import sys
import time
from pathlib import Path

import httpx
import pytest

from adapters.wecom.api import WeComApi
from adapters.wecom.crypto import WeComCrypto
from tests.fake_wecom import FakeWeCom, generated_callback_secrets
from tests.loopback import serve, wait_until
from tests.smtp import free_port
from tests.test_wecom import CORP_ID, USERS


async def test_postroom_v_serve_never_logs_the_wecom_secret_or_access_token(tmp_path: Path) -> None:
    token, aes_key, corp_secret = generated_callback_secrets()  # serve refuses the public test vectors
    fake = FakeWeCom(users={k: dict(v) for k, v in USERS.items()}, corp_secret=corp_secret)
    async with serve(fake.app()) as wecom_url:
        port = free_port()
        config = tmp_path / "postroom.toml"
        config.write_text(f"""
[database]
url = "sqlite+aiosqlite:///{tmp_path / "serve.db"}"
[org]
name = "Example Corp"
domains = ["corp.example"]
postal_address = "1 Example Street, Berlin"
[web]
port = {port}
base_url = "http://127.0.0.1:{port}"
secret = "{secrets.token_urlsafe(32)}"
[wecom]
corp_id = "{CORP_ID}"
agent_id = 1000002
secret = "{corp_secret}"
token = "{token}"
encoding_aes_key = "{aes_key}"
api_url = "{wecom_url}"
""")
        env = {k: v for k, v in os.environ.items() if not k.startswith("POSTROOM_")}
        proc = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).with_name("postroom")),
            "-v",
            "--config",
            str(config),
            "serve",
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        # serve's log is read while it runs: with -v, a pipe left unread fills (64 KB) and blocks serve's
        # next log line, and with it the reply this test waits for.
        assert proc.stderr is not None
        logged = asyncio.ensure_future(proc.stderr.read())
        try:
            async with httpx.AsyncClient() as http:
                deadline = time.monotonic() + 30
                while True:
                    try:
                        if (await http.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    assert time.monotonic() < deadline, "serve did not come up"
                    await asyncio.sleep(0.05)
                crypto = WeComCrypto(token, aes_key, CORP_ID)
                ts = str(int(time.time()))
                inner = (
                    f"<xml><ToUserName><![CDATA[{CORP_ID}]]></ToUserName><FromUserName><![CDATA[hannah]]>"
                    f"</FromUserName><CreateTime>{ts}</CreateTime><MsgType><![CDATA[text]]></MsgType>"
                    "<Content><![CDATA[/help]]></Content><MsgId>m-1</MsgId><AgentID>1000002</AgentID></xml>"
                )
                encrypted, sig = crypto.encrypt_envelope(inner, ts, "n-1")
                body = (
                    f"<xml><ToUserName><![CDATA[{CORP_ID}]]></ToUserName><Encrypt><![CDATA[{encrypted}]]>"
                    "</Encrypt><AgentID><![CDATA[1000002]]></AgentID></xml>"
                )
                answer = await http.post(
                    f"http://127.0.0.1:{port}/wecom/callback",
                    params={"msg_signature": sig, "timestamp": ts, "nonce": "n-1"},
                    content=body,
                )
                assert answer.status_code == 200
            try:  # the reply went out: tokens used (a bound for a loaded machine, not a timing check)
                await wait_until(lambda: fake.sent(to="hannah"), 60, 0.05)
            except AssertionError:
                proc.send_signal(signal.SIGTERM)
                await asyncio.wait_for(proc.wait(), 10)
                raise AssertionError(
                    "no reply to hannah; serve logged:\n" + (await logged).decode()[-4000:]
                ) from None
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                await asyncio.wait_for(proc.wait(), 10)
        err = (await logged).decode()
    assert fake.token_requests >= 1 and fake.valid_tokens
    assert "HTTP Request: GET" in err and "/cgi-bin/gettoken?corpid=" in err  # httpx did log the URL…
    assert "corpsecret=***" in err and "access_token=***" in err  # …masked
    assert corp_secret not in err
    for token in fake.valid_tokens:
        assert token not in err
    assert aes_key not in err


@pytest.fixture
def masked_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    from bot import log_masking

    log_masking.install()
    log_masking.remember_secrets(["configured-db-password-42", None, "abc"])
    caplog.set_level(logging.INFO)
    return caplog


async def test_httpx_request_lines_from_a_real_client_are_masked(
    masked_logs: pytest.LogCaptureFixture,
) -> None:
    fake = FakeWeCom(users={"hannah": dict(USERS["hannah"])})
    async with serve(fake.app()) as url:
        api = WeComApi(url, CORP_ID, "app-secret", 1000002, timeout=5)
        try:
            assert (await api.user("hannah"))["email"] == "hannah@corp.example"
        finally:
            await api.aclose()
    lines = [r.getMessage() for r in masked_logs.records if r.name == "httpx"]
    assert any("gettoken?corpid=" in line and "corpsecret=***" in line for line in lines), lines
    assert any("access_token=***" in line for line in lines), lines
    assert "app-secret" not in masked_logs.text
    assert not any(token in masked_logs.text for token in fake.valid_tokens)


def test_arguments_json_slack_tokens_configured_values_and_tracebacks_are_masked(
    masked_logs: pytest.LogCaptureFixture,
) -> None:
    log = logging.getLogger("postroom.test")
    log.info("calling %s", "https://oapi.dingtalk.com/topapi/v2/user/get?access_token=dt-abc123456")
    log.info("body %s", {"appKey": "ding-app", "appSecret": "ding-app-secret-value"})
    log.info('sent {"clientSecret": "cs-0987654321", "clientId": "x"}')
    log.warning("slack said no for xoxb-1234-5678-abcdefghijkl and xapp-1-A0-12345-abcdef")
    log.info("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.payload.sig")
    log.info("the database refused configured-db-password-42")
    log.info("websocket wss://wss-open-connection.dingtalk.com/connect?ticket=tk-55aa66bb")
    try:
        raise RuntimeError(
            "GET https://qyapi.example/cgi-bin/gettoken?corpid=ww&corpsecret=hunter2-secret failed"
        )
    except RuntimeError:
        log.exception("call failed")
    text = masked_logs.text
    for secret in (
        "dt-abc123456",
        "ding-app-secret-value",
        "cs-0987654321",
        "xoxb-1234-5678-abcdefghijkl",
        "xapp-1-A0-12345-abcdef",
        "eyJhbGciOiJIUzI1NiJ9",
        "configured-db-password-42",
        "tk-55aa66bb",
        "hunter2-secret",
    ):
        assert secret not in text, secret
    assert "access_token=***" in text and "'appSecret': '***'" in text and "ticket=***" in text
    assert "ding-app" in text and "clientId" in text  # what is not a credential stays readable
    formatted = logging.Formatter().format(masked_logs.records[-1])
    assert "corpsecret=***" in formatted and "hunter2-secret" not in formatted
