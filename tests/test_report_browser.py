"""The signed report page in a real headless Chromium, as a sender opens it from the report card after
the demo's first campaign: it renders (a screenshot that is not blank), its chart image loads, the page
logs no console error; a forged or an expired link is refused.

CI installs Chromium (`.ci/run`) and sets POSTROOM_REQUIRE_BROWSER, so there the test runs or fails;
on a machine without Chromium it is skipped with one sentence.
"""

from __future__ import annotations

import asyncio
import io
import os
from pathlib import Path

import pytest

from adapters.console import ConsoleAdapter
from bot import demo
from bot.app import Runtime, build_app
from bot.mail.server import Mailbox
from tests.smtp import free_port
from tests.webdriver import Browser, browser_missing

MISSING = browser_missing()
if MISSING and not os.environ.get("POSTROOM_REQUIRE_BROWSER"):
    pytest.skip(MISSING, allow_module_level=True)


def drawn_share(png: bytes) -> float:
    """The share of the screenshot's pixels that are not (near) white."""
    from matplotlib import image

    pixels = image.imread(io.BytesIO(png), format="png")[..., :3]
    return float((pixels.min(axis=2) < 0.9).mean())


def blue_share(png: bytes) -> float:
    """The share of the screenshot's pixels that are clearly blue (the chart's "sent" line and marks)."""
    from matplotlib import image

    pixels = image.imread(io.BytesIO(png), format="png")[..., :3]
    return float(((pixels[..., 2] - pixels[..., 0]) > 0.3).mean())


async def test_the_report_page_renders_with_its_chart_and_refuses_forged_and_expired_links(
    tmp_path: Path,
) -> None:
    assert MISSING is None, MISSING
    # Ports of their own: demo.prepare prefers 8080 and 2525, which another test (or a demo) may take
    # between its check and our bind.
    plan = demo.prepare(tmp_path / "demo", fresh=True, web_port=free_port(), smtp_port=free_port())
    app = await build_app(plan.settings)
    runtime = Runtime(app)
    browser = Browser()
    try:
        await demo.seed(app, plan.folder)
        await runtime.start_services(mailbox=Mailbox(plan.folder / "mailbox", echo=None))
        await runtime.start_web(plan.settings.web.host, plan.settings.web.port)
        console = ConsoleAdapter(demo.SENDER, out=io.StringIO(), prompt=False)
        app.attach(console)
        await console.start(app.core)
        await console.say("/campaign new spring --to customers --template welcome")
        await console.say("/campaign submit spring")
        console.as_email = demo.APPROVERS[0]
        await console.say("/approve spring")
        await app.drain()
        reply = await console.say("/campaign report spring")
        assert reply is not None and reply.card is not None and reply.card.link is not None
        url = reply.card.link[1]
        assert url.startswith(plan.settings.web.base_url + "/report/")

        await browser.start()
        await browser.go(url)
        page = await browser.wait_for("pr-figures")
        assert "Report: “spring”" in page and "delivered 3 of 3 attempts" in page
        loaded = await browser.execute(
            "const img = document.getElementById('pr-chart');"
            "return img.complete && img.naturalWidth > 0 ? [img.naturalWidth, img.naturalHeight] : null;"
        )
        for _ in range(100):  # the chart is drawn on request: wait for it, bounded
            if loaded:
                break
            await asyncio.sleep(0.05)
            loaded = await browser.execute(
                "const img = document.getElementById('pr-chart');"
                "return img.complete && img.naturalWidth > 0 ? [img.naturalWidth, img.naturalHeight] : null;"
            )
        assert loaded == [800, 640], loaded
        shot = await browser.screenshot()
        (tmp_path / "report-page.png").write_bytes(shot)
        # Not a blank page: the title, the axes and their labels (about 5% of the window; a blank page
        # draws next to none), and the chart's blue "sent" series, which nothing else on the page is.
        assert drawn_share(shot) > 0.02, drawn_share(shot)
        assert blue_share(shot) > 0.001, blue_share(shot)
        assert await browser.console_errors() == []

        token = url.rsplit("/", 1)[1]
        forged = token[:-2] + ("AA" if token[-2:] != "AA" else "BB")
        await browser.go(f"{plan.settings.web.base_url}/report/{forged}")
        assert "not valid or has expired" in await browser.wait_for("not valid")
        campaign_id = app.ctx.signer.verify_expiring(token, "r")[0]  # type: ignore[index]
        expired = app.ctx.signer.sign_expiring("r", campaign_id, ttl_s=-1)
        await browser.go(f"{plan.settings.web.base_url}/report/{expired}")
        assert "not valid or has expired" in await browser.wait_for("not valid")
        # A refused page is a 403: Chromium logs that as a console error, and nothing else is logged.
        assert all("403" in e for e in await browser.console_errors())
    finally:
        await browser.stop()
        await runtime.stop()
