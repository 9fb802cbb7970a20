"""`postroom serve`'s wiring with Slack, DingTalk and WeCom configured against local fakes: the adapters are
found through their entry points, run beside the console, share the web app, and stop in time."""

from __future__ import annotations

import asyncio
import io
import secrets
import time
from pathlib import Path

import httpx
import pytest

from adapters.console import ConsoleAdapter
from adapters.wecom.crypto import WeComCrypto
from bot.app import Runtime, build_app, configured_adapters
from bot.config import ConfigError
from tests.conftest import HR, make_settings
from tests.fake_dingtalk import FakeDingTalk
from tests.fake_wecom import FakeWeCom, generated_callback_secrets
from tests.loopback import serve, wait_until
from tests.slack_fake import FakeSlack, command_body, form, signed_headers
from tests.slack_rig import U_HR, directory, slack_section
from tests.smtp import free_port
from tests.test_wecom import AES_KEY, CORP_ID, TOKEN


async def test_serve_runs_slack_dingtalk_and_wecom_side_by_side(
    database_url: str, smtp, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    ding, wecom = FakeDingTalk(), FakeWeCom()
    slack = await FakeSlack(users=directory()).start()
    async with serve(ding.app()) as ding_url, serve(wecom.app()) as wecom_url:
        port = free_port()
        settings = make_settings(
            database_url,
            smtp.port,
            tmp_path,
            web={"port": port},
            slack=slack_section(slack),
            dingtalk={
                "client_id": "ding-app",
                "client_secret": "ding-secret",
                "corp_id": "ding-corp",
                "openapi_endpoint": ding_url,
                "oapi_endpoint": ding_url,
            },
            wecom={
                "corp_id": CORP_ID,
                "agent_id": 1000002,
                "secret": "app-secret",
                "token": TOKEN,
                "encoding_aes_key": AES_KEY,
                "api_url": wecom_url,
            },
        )
        adapters = configured_adapters(settings)
        assert [a.platform for a in adapters] == ["dingtalk", "slack", "wecom"]
        app = await build_app(settings)
        core = app.core
        runtime = Runtime(app)
        console = ConsoleAdapter(HR, out=io.StringIO(), prompt=False)
        for adapter in (*adapters, console):
            app.attach(adapter)
        await runtime.start_web("127.0.0.1", port)
        for adapter in (*adapters, console):
            await adapter.start(core)
        try:
            await wait_until(lambda: ding.online)
            crypto = WeComCrypto(TOKEN, AES_KEY, CORP_ID)
            ts = str(int(time.time()))
            echostr, signature = crypto.encrypt_envelope("echo-42", ts, "n")
            async with httpx.AsyncClient() as http:
                answer = await http.get(
                    f"http://127.0.0.1:{port}/wecom/callback",
                    params={"msg_signature": signature, "timestamp": ts, "nonce": "n", "echostr": echostr},
                )
                body = form(command_body(slack, U_HR, "/newgroup", "eng"))
                slash = await http.post(
                    f"http://127.0.0.1:{port}/slack/events", content=body, headers=signed_headers(body)
                )
            assert (answer.status_code, answer.text) == (200, "echo-42")
            assert slash.status_code == 200 and "eng@corp.example" in slash.json()["text"]
            console_reply = await console.say("/members eng")
            assert console_reply is not None and "no members yet" in console_reply.text
        finally:
            loop = asyncio.get_running_loop()
            started = loop.time()
            await asyncio.wait_for(runtime.stop(), 15)
            stopped_in = loop.time() - started
            await slack.stop()
        assert stopped_in < 10
        await wait_until(lambda: not ding.online)


def test_a_half_configured_messenger_is_a_clear_configuration_error(tmp_path: Path) -> None:
    settings = make_settings(
        f"sqlite+aiosqlite:///{tmp_path / 'x.db'}",
        2525,
        tmp_path,
        wecom={"corp_id": CORP_ID},
        dingtalk={"client_id": "ding-app"},
    )
    with pytest.raises(ConfigError, match="dingtalk.client_secret"):
        configured_adapters(settings)
    with pytest.raises(ConfigError, match="encoding_aes_key"):
        make_settings(
            f"sqlite+aiosqlite:///{tmp_path / 'x.db'}",
            2525,
            tmp_path,
            wecom={"corp_id": CORP_ID, "encoding_aes_key": "too-short"},
        )


async def test_postroom_serve_process_runs_both_and_stops_on_sigterm(tmp_path: Path) -> None:
    """The real `postroom serve` command, configured against the fakes, in its own process."""
    import os
    import signal
    import sys

    token, aes_key, corp_secret = generated_callback_secrets()  # serve refuses the public test vectors
    ding = FakeDingTalk(client_secret=secrets.token_urlsafe(48))
    wecom = FakeWeCom(corp_secret=corp_secret)
    async with serve(ding.app()) as ding_url, serve(wecom.app()) as wecom_url:
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
[dingtalk]
client_id = "ding-app"
client_secret = "{ding.client_secret}"
corp_id = "ding-corp"
openapi_endpoint = "{ding_url}"
oapi_endpoint = "{ding_url}"
[wecom]
corp_id = "{CORP_ID}"
agent_id = 1000002
secret = "{corp_secret}"
token = "{token}"
encoding_aes_key = "{aes_key}"
api_url = "{wecom_url}"
""")
        postroom = Path(sys.executable).with_name("postroom")
        proc = await asyncio.create_subprocess_exec(
            str(postroom),
            "--config",
            str(config),
            "serve",
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "POSTROOM_CONFIG": str(config)},
        )
        try:
            await wait_until(lambda: ding.online, 30, 0.05)
            crypto = WeComCrypto(token, aes_key, CORP_ID)
            ts = str(int(time.time()))
            echostr, signature = crypto.encrypt_envelope("echo-7", ts, "n")
            async with httpx.AsyncClient() as http:
                # serve starts the web app before the adapters, so it is up once DingTalk is connected
                answer = await http.get(
                    f"http://127.0.0.1:{port}/wecom/callback",
                    params={"msg_signature": signature, "timestamp": ts, "nonce": "n", "echostr": echostr},
                )
            assert (answer.status_code, answer.text) == (200, "echo-7")
            proc.send_signal(signal.SIGTERM)
            started = asyncio.get_running_loop().time()
            await asyncio.wait_for(proc.wait(), 10)
            stopped_in = asyncio.get_running_loop().time() - started
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        err = (await proc.stderr.read()).decode() if proc.stderr else ""
        assert "adapters: dingtalk, wecom" in err and "Stopping" in err
        assert proc.returncode == 0 and stopped_in < 5
        await wait_until(lambda: not ding.online)
