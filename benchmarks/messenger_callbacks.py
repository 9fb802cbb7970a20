"""How fast the DingTalk and WeCom adapters answer the platform (ACK / HTTP answer), beside a baseline
measured in the same run.

- WeCom: a signed, encrypted callback through the real web app (verify, decrypt, parse, dispatch),
  against the baseline of a callback refused before any crypto (missing parameters).
- DingTalk: time from a frame pushed by a loopback gateway to its ACK, for a robot message (parse,
  dedupe, schedule the command) against the baseline of a SYSTEM ping the SDK echoes.

Run: .venv/bin/python benchmarks/messenger_callbacks.py   (last line: one JSON object)
"""

from __future__ import annotations

import asyncio
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402

from adapters.console import ConsoleAdapter  # noqa: E402
from adapters.wecom.crypto import WeComCrypto  # noqa: E402
from bot.app import build_app, load_adapter  # noqa: E402
from tests.conftest import HR, make_settings  # noqa: E402
from tests.fake_dingtalk import FakeDingTalk  # noqa: E402
from tests.fake_wecom import FakeWeCom  # noqa: E402
from tests.loopback import serve, wait_until  # noqa: E402
from tests.test_wecom import AES_KEY, CORP_ID, TOKEN  # noqa: E402

N = 1000


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 3),
        "p99_ms": round(ordered[int(len(ordered) * 0.99) - 1] * 1000, 3),
    }


async def wecom(tmp: Path) -> dict[str, dict[str, float]]:
    fake = FakeWeCom()
    async with serve(fake.app()) as url:
        settings = make_settings(
            f"sqlite+aiosqlite:///{tmp / 'w.db'}",
            2525,
            tmp,
            wecom={
                "corp_id": CORP_ID,
                "agent_id": 1,
                "secret": "app-secret",
                "token": TOKEN,
                "encoding_aes_key": AES_KEY,
                "api_url": url,
            },
        )
        app = await build_app(settings)
        core = app.core
        adapter = load_adapter("wecom", settings)
        assert adapter is not None
        app.attach(adapter)
        await adapter.start(core)
        crypto = WeComCrypto(TOKEN, AES_KEY, CORP_ID)
        full, base = [], []
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app.web()), base_url="http://b"
        ) as web:
            for i in range(N):
                ts = str(int(time.time()))
                inner = (
                    f"<xml><FromUserName>u{i}</FromUserName><CreateTime>{ts}</CreateTime><MsgType>event</MsgType>"
                    f"<Event>enter_agent</Event><AgentID>1</AgentID></xml>"
                )
                encrypted, sig = crypto.encrypt_envelope(inner, ts, f"n{i}")
                body = f"<xml><ToUserName>{CORP_ID}</ToUserName><Encrypt>{encrypted}</Encrypt></xml>".encode()
                t0 = time.perf_counter()
                r = await web.post(
                    "/wecom/callback",
                    params={"msg_signature": sig, "timestamp": ts, "nonce": f"n{i}"},
                    content=body,
                )
                full.append(time.perf_counter() - t0)
                assert r.status_code == 200
                t0 = time.perf_counter()
                r = await web.post("/wecom/callback", content=body)
                base.append(time.perf_counter() - t0)
                assert r.status_code == 400
        await app.close()
    return {"wecom_callback": summary(full), "wecom_baseline_refused_early": summary(base)}


async def dingtalk(tmp: Path) -> dict[str, dict[str, float]]:
    fake = FakeDingTalk(users={"hannah01": {"name": "H", "org_email": HR}})
    async with serve(fake.app()) as url:
        settings = make_settings(
            f"sqlite+aiosqlite:///{tmp / 'd.db'}",
            2525,
            tmp,
            dingtalk={
                "client_id": "ding-app",
                "client_secret": "ding-secret",
                "corp_id": "ding-corp",
                "openapi_endpoint": url,
                "oapi_endpoint": url,
                "hr_conversation": "cidHR",
            },
        )
        app = await build_app(settings)
        core = app.core
        adapter = load_adapter("dingtalk", settings, backoff_base=0.05)
        assert adapter is not None
        console = ConsoleAdapter(HR, out=io.StringIO(), prompt=False)
        for a in (adapter, console):
            app.attach(a)
            await a.start(core)
        await wait_until(lambda: fake.online)

        async def ack_latency(frame: dict) -> float:  # type: ignore[type-arg]
            t0 = time.perf_counter()
            message_id = await fake.push(frame)
            await wait_until(lambda: fake.ack_for(message_id) is not None, 10, 0.0005)
            return time.perf_counter() - t0

        msgs, pings = [], []
        for i in range(N // 4):
            pings.append(await ack_latency(fake.system("ping")))
            msgs.append(
                await ack_latency(
                    fake.bot_message(
                        msgtype="text",
                        text={"content": "/help"},
                        msgId=f"m{i}",
                        senderStaffId="hannah01",
                        conversationType="2",
                        conversationId="cidHR",
                        sessionWebhook=f"{url}/webhook/x",
                        sessionWebhookExpiredTime=int(time.time() * 1000) + 3_600_000,
                    )
                )
            )
        await adapter.settle(60)  # type: ignore[attr-defined]
        await app.close()
    return {"dingtalk_ack_robot_message": summary(msgs), "dingtalk_baseline_ack_ping": summary(pings)}


async def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        (tmp / "w").mkdir()
        (tmp / "d").mkdir()
        figures = {**await wecom(tmp / "w"), **await dingtalk(tmp / "d")}
    for name, values in figures.items():
        print(f"{name:34s} p50 {values['p50_ms']:8.3f} ms   p99 {values['p99_ms']:8.3f} ms")
    print(json.dumps({"benchmark": "messenger_callbacks", "n_wecom": N, "n_dingtalk": N // 4, **figures}))


if __name__ == "__main__":
    asyncio.run(main())
