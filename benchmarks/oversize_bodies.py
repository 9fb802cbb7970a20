"""What a 250 MB chunked POST costs `postroom serve`: its RSS before and after one such request to each
endpoint that reads a body (/hooks/hr, /hooks/email-events, POST /u/<token>, /slack/events,
/wecom/callback), read from /proc/<pid>/status, and what the client got back.

`postroom serve` runs as its own process on loopback with SQLite, the HR and email-events webhooks
switched on, Slack in HTTP mode and WeCom in callback mode against the fakes the tests use (served by
this script). Baseline, same run: the server's RSS after one small request to each endpoint.

    .venv/bin/python benchmarks/oversize_bodies.py [--megabytes 250]

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from bot.links import Signer  # noqa: E402
from bot.secret_policy import generate_secret  # noqa: E402
from tests.fake_wecom import FakeWeCom, generated_callback_secrets  # noqa: E402
from tests.loopback import serve  # noqa: E402
from tests.slack_fake import FakeSlack  # noqa: E402
from tests.smtp import free_port  # noqa: E402
from tests.test_wecom import CORP_ID  # noqa: E402

# The platforms' credentials fresh each run too: serve refuses the fakes' published ones (they are in our
# source). The fakes don't check the Slack bot token; the WeCom fake is given its app secret.
SLACK_SIGNING = secrets.token_hex(16)  # as Slack issues it: 32 hex digits
SLACK_BOT = (
    "xoxb-"
    + "-".join(str(secrets.randbelow(10**12)).zfill(12) for _ in range(3))
    + "-"
    + secrets.token_hex(12)
)
WECOM_TOKEN, WECOM_AES_KEY, WECOM_APP = generated_callback_secrets()

POSTROOM = str(Path(sys.executable).parent / "postroom")
CHUNK = 1024 * 1024


def status(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (peak) of a process, in MB."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = round(int(value.split()[0]) / 1024, 1)
    return found


def config(folder: Path, port: int, slack_url: str, wecom_url: str, web_secret: str | None = None) -> Path:
    """serve's configuration; every Postroom secret fresh for this run (serve refuses a fixed one)."""
    web_secret = web_secret or generate_secret()
    path = folder / "postroom.toml"
    path.write_text(f"""
[database]
url = "sqlite+aiosqlite:///{folder / "bench.db"}"
[smtp]
host = "127.0.0.1"
port = {free_port()}
[org]
name = "Example Corp"
domains = ["corp.example"]
postal_address = "1 Example Street, Berlin"
[web]
host = "127.0.0.1"
port = {port}
base_url = "http://127.0.0.1:{port}"
secret = "{web_secret}"
[hr]
webhook_secret = "{generate_secret()}"
[campaigns]
templates_dir = "{ROOT / "bot" / "demo_data" / "templates"}"
webhook_secret = "{generate_secret()}"
[slack]
bot_token = "{SLACK_BOT}"
signing_secret = "{SLACK_SIGNING}"
mode = "http"
api_url = "{slack_url}"
[wecom]
corp_id = "{CORP_ID}"
agent_id = 1000002
secret = "{WECOM_APP}"
token = "{WECOM_TOKEN}"
encoding_aes_key = "{WECOM_AES_KEY}"
api_url = "{wecom_url}"
""")
    return path


async def main(megabytes: int) -> dict[str, object]:
    slack = await FakeSlack().start()
    wecom = FakeWeCom(corp_secret=WECOM_APP)
    proc = None
    try:
        async with serve(wecom.app()) as wecom_url:
            with tempfile.TemporaryDirectory() as tmp:
                folder = Path(tmp)
                port = free_port()
                web_secret = generate_secret()
                cfg = config(folder, port, slack.api_url, wecom_url, web_secret)
                env = {k: v for k, v in os.environ.items() if not k.startswith("POSTROOM_")}
                proc = subprocess.Popen(
                    [POSTROOM, "--config", str(cfg), "serve"],
                    cwd=folder,
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                )
                base = f"http://127.0.0.1:{port}"
                async with httpx.AsyncClient(base_url=base, timeout=600) as http:
                    deadline = time.monotonic() + 30
                    while True:
                        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
                        try:
                            if (await http.get("/healthz")).status_code == 200:
                                break
                        except httpx.TransportError:
                            pass
                        assert time.monotonic() < deadline, "postroom serve did not start"
                        await asyncio.sleep(0.1)
                    token = Signer(web_secret).sign("u", "1", "lena@example.com")
                    now = str(int(time.time()))
                    endpoints = {
                        "/hooks/hr": "/hooks/hr",
                        "/hooks/email-events": "/hooks/email-events",
                        "/u/<token>": f"/u/{token}",
                        "/slack/events": "/slack/events",
                        "/wecom/callback": f"/wecom/callback?msg_signature=ab&timestamp={now}&nonce=n",
                    }
                    for path in endpoints.values():  # warm every path once with a small body
                        await http.post(path, content=b"x" * 100)
                    baseline = status(proc.pid)
                    results = {}
                    for name, path in endpoints.items():

                        async def body() -> object:
                            block = b"x" * CHUNK
                            for _ in range(megabytes):
                                yield block

                        started = time.perf_counter()
                        resp = await http.post(path, content=body())  # chunked: no Content-Length
                        elapsed = time.perf_counter() - started
                        after = status(proc.pid)
                        results[name] = {
                            "status": resp.status_code,
                            "seconds": round(elapsed, 2),
                            "rss_mb": after["VmRSS"],
                            "rss_growth_mb": round(after["VmRSS"] - baseline["VmRSS"], 1),
                        }
                        print(
                            f"{name}: {megabytes} MB chunked → {resp.status_code} in {elapsed:.1f} s, RSS {after['VmRSS']} MB"
                        )
                    peak = status(proc.pid)["VmHWM"]
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(10)
        await slack.stop()
    print(f"baseline RSS after small requests: {baseline['VmRSS']} MB; peak over the run: {peak} MB")
    return {
        "benchmark": "oversize_bodies",
        "megabytes_per_request": megabytes,
        "baseline_rss_mb": baseline["VmRSS"],
        "peak_rss_mb": peak,
        "peak_growth_mb": round(peak - baseline["VmHWM"], 1),
        "endpoints": results,
    }


if __name__ == "__main__":
    from common import count

    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--megabytes", type=count, default=250, help="size of each chunked body")
    print(json.dumps(asyncio.run(main(parser.parse_args().megabytes))))
