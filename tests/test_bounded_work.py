"""Issue "Safe to run for real": every endpoint that takes a body caps it while reading it, chunked or
not, and an ordinary client gets the 413 (not a broken pipe). On a real uvicorn server on loopback,
with the app wrapped to count the body bytes it is handed: an oversize body is refused after at most
the cap (plus what uvicorn buffers in one go), never read whole. benchmarks/oversize_bodies.py shows
the same with 250 MB bodies against `postroom serve`, measuring the process's RSS."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from adapters.console import ConsoleAdapter
from bot.app import build_app, load_adapter
from bot.campaigns.web_routes import MAX_WEBHOOK_BYTES
from bot.core import Core
from bot.web import MAX_FORM_BYTES
from tests.conftest import HR, make_settings
from tests.fake_wecom import FakeWeCom
from tests.lifecycle_kit import SECRET, signed
from tests.loopback import serve
from tests.slack_fake import FakeSlack
from tests.slack_rig import slack_section
from tests.test_wecom import AES_KEY, CORP_ID, TOKEN

HR_CAP = 65536
SLACK_CAP = 1_000_000
WECOM_CAP = 64 * 1024
# What uvicorn may hand the app in one receive() beyond the cap: its 64 KiB high-water mark plus one
# socket read (256 KiB on asyncio).
SLACK_SLOP = 512 * 1024
BODY = 8 * 1024 * 1024


class CountingApp:
    """The web app, counting the request body bytes it is handed (what it read)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.read = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async def counted() -> Any:
            message = await receive()
            if message["type"] == "http.request":
                self.read += len(message.get("body", b""))
            return message

        await self.app(scope, counted, send)


@dataclass
class Served:
    core: Core
    app: CountingApp
    url: str


@pytest.fixture
async def served(database_url: str, smtp, tmp_path: Path) -> AsyncIterator[Served]:  # type: ignore[no-untyped-def]
    slack = await FakeSlack().start()
    wecom = FakeWeCom()
    try:
        async with serve(wecom.app()) as wecom_url:
            settings = make_settings(
                database_url,
                smtp.port,
                tmp_path,
                hr={"webhook_secret": SECRET},
                campaigns={"webhook_secret": "email-events-secret-0123"},
                slack=slack_section(slack),
                wecom={
                    "corp_id": CORP_ID,
                    "agent_id": 1000002,
                    "secret": "app-secret",
                    "token": TOKEN,
                    "encoding_aes_key": AES_KEY,
                    "api_url": wecom_url,
                },
            )
            postroom = await build_app(settings)
            core = postroom.core
            adapters = [load_adapter("slack", settings), load_adapter("wecom", settings)]
            for adapter in (*adapters, ConsoleAdapter(HR, prompt=False)):
                assert adapter is not None
                postroom.attach(adapter)
                await adapter.start(core)
            app = CountingApp(postroom.web())
            try:
                async with serve(app) as url:
                    yield Served(core, app, url)
            finally:
                await postroom.close()
    finally:
        await slack.stop()


def endpoints(core: Core) -> list[tuple[str, str, int, dict[str, str]]]:
    """(name, path with query, cap, headers) of every endpoint that reads a body."""
    token = core.ctx.signer.sign("u", "1", "lena@example.com")
    now = str(int(time.time()))
    return [
        ("HR webhook", "/hooks/hr", HR_CAP, {"Content-Type": "application/json"}),
        ("email events", "/hooks/email-events", MAX_WEBHOOK_BYTES, {"Content-Type": "application/json"}),
        (
            "one-click unsubscribe",
            f"/u/{token}",
            MAX_FORM_BYTES,
            {"Content-Type": "application/x-www-form-urlencoded"},
        ),
        ("Slack events", "/slack/events", SLACK_CAP, {"Content-Type": "application/x-www-form-urlencoded"}),
        ("WeCom callback", f"/wecom/callback?msg_signature=ab&timestamp={now}&nonce=n", WECOM_CAP, {}),
    ]


async def chunks(total: int, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    block = b"x" * size
    for _ in range(total // size):
        yield block


async def test_a_chunked_oversize_body_is_refused_after_at_most_the_cap_at_every_endpoint(
    served: Served,
) -> None:
    async with httpx.AsyncClient(base_url=served.url, timeout=60) as client:
        for name, path, cap, headers in endpoints(served.core):
            served.app.read = 0
            resp = await client.post(path, content=chunks(BODY), headers=headers)  # no Content-Length
            assert resp.status_code == 413, (name, resp.status_code, resp.text)
            assert served.app.read <= cap + SLACK_SLOP, (name, served.app.read)
            # The connection is still good for the next request: nothing was reset.
            assert (await client.get("/healthz")).status_code == 200, name


async def test_a_declared_oversize_body_is_answered_413_before_any_of_it_is_read(served: Served) -> None:
    async with httpx.AsyncClient(base_url=served.url, timeout=60) as client:
        for name, path, _cap, headers in endpoints(served.core):
            served.app.read = 0
            resp = await client.post(path, content=b"x" * 3_000_000, headers=headers)
            assert resp.status_code == 413, (name, resp.status_code, resp.text)
            assert served.app.read == 0, name


async def test_a_3_mb_hr_post_gets_its_413_sentence_with_httpx_and_curl(
    served: Served, tmp_path: Path
) -> None:
    body = b'{"event_id": "big", "pad": "' + b"x" * 3_000_000 + b'"}'
    async with httpx.AsyncClient(base_url=served.url, timeout=60) as client:
        resp = await client.post("/hooks/hr", content=body, headers=signed(body))
    assert resp.status_code == 413
    assert resp.json()["error"] == "The body is larger than the 65536 bytes this endpoint accepts."
    curl = shutil.which("curl")
    if curl is None:
        return
    (tmp_path / "big.json").write_bytes(body)
    headers = [arg for k, v in signed(body).items() for arg in ("-H", f"{k}: {v}")]
    for extra in ([], ["-H", "Transfer-Encoding: chunked"], ["-H", "Expect:"]):
        proc = await asyncio.create_subprocess_exec(
            curl,
            "-sS",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            f"{served.url}/hooks/hr",
            "--data-binary",
            f"@{tmp_path / 'big.json'}",
            *headers,
            *extra,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, (extra, err)
        assert out.decode().rsplit("\n", 1)[1] == "413", (extra, out[-200:])
        assert b"larger than the 65536 bytes" in out, extra
