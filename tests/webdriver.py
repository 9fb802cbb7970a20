"""A small W3C WebDriver client (over httpx, asynchronous) for the browser test: Chromium driven by
Debian's chromedriver. Async, because the web app under test runs in the same event loop."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from typing import Any

import httpx

from tests.smtp import free_port

ELEMENT = "element-6066-11e4-a52e-4f735466cecf"


def browser_missing() -> str | None:
    """Why the browser test can't run here, in one sentence; None when it can."""
    for name in ("chromedriver",):
        if shutil.which(name) is None:
            return "Chromium's driver (Debian package chromium-driver) is not installed, so the browser test is skipped."
    if chromium() is None:
        return "Chromium (Debian package chromium) is not installed, so the browser test is skipped."
    return None


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


class Browser:
    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.port}", timeout=30)
        self.session = ""

    async def start(self) -> Browser:
        self.proc = subprocess.Popen(
            ["chromedriver", f"--port={self.port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        for _ in range(200):
            try:
                if (await self.http.get("/status")).json()["value"]["ready"]:
                    break
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            await asyncio.sleep(0.05)
        args = ["--headless=new", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"]
        if os.geteuid() == 0:
            args.append("--no-sandbox")  # Chromium refuses to run as root with its sandbox
        made = await self._call(
            "POST",
            "/session",
            {
                "capabilities": {
                    "alwaysMatch": {
                        "goog:chromeOptions": {"binary": chromium(), "args": args},
                        "goog:loggingPrefs": {"browser": "ALL"},  # the page's console, for console_errors()
                    }
                }
            },
        )
        self.session = made["sessionId"]
        return self

    async def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        response = await self.http.request(method, path, json=body)
        data = response.json()
        if response.status_code >= 400:
            raise AssertionError(f"WebDriver {method} {path}: {data}")
        return data["value"]

    async def go(self, url: str) -> None:
        await self._call("POST", f"/session/{self.session}/url", {"url": url})

    async def find(self, using: str, value: str) -> str:
        found = await self._call("POST", f"/session/{self.session}/element", {"using": using, "value": value})
        return found[ELEMENT]

    async def type(self, css: str, text: str) -> None:
        element = await self.find("css selector", css)
        await self._call("POST", f"/session/{self.session}/element/{element}/value", {"text": text})

    async def click(self, xpath: str) -> None:
        element = await self.find("xpath", xpath)
        await self._call("POST", f"/session/{self.session}/element/{element}/click", {})

    async def source(self) -> str:
        return await self._call("GET", f"/session/{self.session}/source")

    async def execute(self, script: str, *args: Any) -> Any:
        """Run `script` (a function body; `return` gives the value) in the page."""
        return await self._call(
            "POST", f"/session/{self.session}/execute/sync", {"script": script, "args": list(args)}
        )

    async def screenshot(self) -> bytes:
        import base64

        return base64.b64decode(await self._call("GET", f"/session/{self.session}/screenshot"))

    async def console_errors(self) -> list[str]:
        """The page's console messages of level SEVERE since the last call (chromedriver's log)."""
        entries = await self._call("POST", f"/session/{self.session}/se/log", {"type": "browser"})
        return [e["message"] for e in entries if e.get("level") == "SEVERE"]

    async def wait_for(self, text: str, timeout: float = 15.0) -> str:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            page = await self.source()
            if text in page:
                return page
            assert loop.time() < deadline, f"the page never showed {text!r}: {page[:500]}"
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        try:
            if self.session:
                await self._call("DELETE", f"/session/{self.session}")
        finally:
            await self.http.aclose()
            if self.proc is not None:
                self.proc.terminate()
                self.proc.wait(10)
