"""The attacker tryout of the reports (issue 15): settings and arguments that broke or stretched them."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.config import ConfigError
from tests.conftest import HR, make_settings


@pytest.mark.parametrize("hours", [float("inf"), float("nan"), 1e12, 0.0001, 0.5, 721, -1])
def test_report_link_hours_outside_one_hour_to_thirty_days_is_refused_naming_the_range(
    tmp_path: Path, hours: float
) -> None:
    with pytest.raises(ConfigError, match=r"report_link_hours.*from 1 to 720 hours \(1 hour to 30 days\)"):
        make_settings(
            f"sqlite+aiosqlite:///{tmp_path / 'x.db'}", 2525, tmp_path, campaigns={"report_link_hours": hours}
        )


@pytest.mark.parametrize("hours", [1, 1.5, 72, 720])
def test_report_link_hours_from_one_hour_to_thirty_days_is_taken(tmp_path: Path, hours: float) -> None:
    settings = make_settings(
        f"sqlite+aiosqlite:///{tmp_path / 'x.db'}", 2525, tmp_path, campaigns={"report_link_hours": hours}
    )
    assert settings.campaigns.report_link_hours == hours


@pytest.mark.parametrize("months", ["³", "①", "²", "３", "٣", "١٢", "0003", "1_2"])
async def test_report_usage_months_takes_ascii_digits_only(bot, months: str) -> None:  # type: ignore[no-untyped-def]
    reply = await bot.say(HR, f"/report usage --months {months}")
    assert f"“{months}”" in reply and "months" in reply and "from 1 to 24" in reply, reply
    assert "internal error" not in reply.lower() and "Usage review" not in reply


async def test_report_usage_months_in_ascii_digits_is_taken(bot) -> None:  # type: ignore[no-untyped-def]
    reply = await bot.say(HR, "/report usage --months 12")
    assert "is not a number of months" not in reply and "internal error" not in reply.lower(), reply


def test_a_clicked_link_is_shown_without_bidi_or_control_characters_and_cut() -> None:
    from tests.test_campaign_report import demo_like

    evil = "https://corp.example/\u202egnp.exe\u200b?\x07a=1"
    long = "https://corp.example/" + "a" * 1500
    text = demo_like(links=[(evil, 1, 1), (long, 1, 2)]).text()
    assert "https://corp.example/\\u202egnp.exe\\u200b?\\u0007a=1 — 1 person, 1 click" in text
    assert "\u202e" not in text and "\x07" not in text and "\u200b" not in text
    cut = next(line.strip() for line in text.splitlines() if line.strip().startswith(long[:40]))
    assert cut == long[:119] + "… — 1 person, 2 clicks"


async def test_the_report_page_shows_clicked_links_escaped_and_cut(bot) -> None:  # type: ignore[no-untyped-def]
    from tests.audience_kit import web
    from tests.test_report_render_cost import make_campaign

    path = await make_campaign(bot, 3)
    cid = int(bot.core.ctx.signer.verify_expiring(path.rsplit("/", 1)[1], "r")[0])
    async with bot.core.ctx.sessions() as session, session.begin():
        from sqlalchemy import select

        from bot.db.models import CampaignEvent, Delivery

        did = (
            (await session.execute(select(Delivery.id).where(Delivery.campaign_id == cid))).scalars().first()
        )
        session.add(
            CampaignEvent(
                campaign_id=cid,
                delivery_id=did,
                email_hash="h",
                kind="click",
                detail="https://corp.example/\u202exe.pdf" + "b" * 1500,
                at=bot.core.ctx.now(),
            )
        )
    async with web(bot) as client:
        page = (await client.get(path)).text
    assert "\u202e" not in page and "https://corp.example/\\u202exe.pdf" + "b" * 20 in page
    assert "b" * 200 not in page and "…" in page


KILLED_WRITER = """
import asyncio, sys
from datetime import timedelta
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from bot.app import build_app
from bot.campaigns.report import render_chart
from bot.db.models import Campaign
from tests.conftest import make_settings
from tests.test_campaign_report import demo_like

async def main():
    folder = Path(sys.argv[2])
    app = await build_app(make_settings(f"sqlite+aiosqlite:///{folder / 'x.db'}", 2525, folder))
    start = app.ctx.now()
    n = 0
    while True:
        app.ctx.clock = lambda n=n: start + timedelta(seconds=n)
        await render_chart(app.ctx, Campaign(name="spring"), demo_like())
        (folder / "started").touch()
        n += 1

asyncio.run(main())
"""


def test_a_chart_writer_killed_mid_draw_leaves_no_truncated_png(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    root = Path(__file__).resolve().parents[1]
    writer = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(root), str(tmp_path)])
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "started").exists():
            assert time.monotonic() < deadline and writer.poll() is None, "the writer did not start"
            time.sleep(0.05)
        time.sleep(1.3)  # some charts later, mid-draw most likely
    finally:
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait()
    pngs = sorted((tmp_path / "reports").glob("*.png"))
    assert pngs
    for png in pngs:
        data = png.read_bytes()
        assert data.startswith(b"\x89PNG") and data.endswith(b"IEND\xaeB`\x82"), f"{png.name} is truncated"


def test_old_report_pngs_are_pruned_and_nothing_else(tmp_path: Path) -> None:
    import asyncio
    from datetime import UTC, datetime

    from bot.campaigns.report import render_chart
    from bot.db.models import Campaign
    from tests.test_campaign_report import demo_like

    async def run() -> Path | None:
        from bot.app import build_app

        settings = make_settings(
            f"sqlite+aiosqlite:///{tmp_path / 'x.db'}", 2525, tmp_path, campaigns={"report_files_days": 30}
        )
        app = await build_app(settings)
        try:
            app.ctx.clock = lambda: datetime(2026, 12, 3, 8, 0, tzinfo=UTC)
            return await render_chart(app.ctx, Campaign(name="spring"), demo_like())
        finally:
            await app.close()

    folder = tmp_path / "reports"
    folder.mkdir()
    old = folder / "autumn-20261001-090000.png"
    recent = folder / "winter-20261120-090000.png"
    stale_temp = folder / ".autumn-20261001-090000.png.0a1b2c3d.tmp"
    export = folder / "privacy-export-20260101-090000-abcdefghijklmnop.json"
    mine = folder / "holiday-photo.png"  # not a name the report writer makes
    for f in (old, recent, stale_temp, export, mine):
        f.write_bytes(b"x")
    made = asyncio.run(run())
    assert made is not None and made.exists() and made.name == "spring-20261203-080000.png"
    assert not old.exists() and not stale_temp.exists()
    assert recent.exists() and export.exists() and mine.exists()
    assert not list(folder.glob(".*.tmp"))


def test_concurrent_chart_draws_leave_matplotlib_settings_as_they_were(tmp_path: Path) -> None:
    """rc_context changes process-wide rcParams: overlapping draws restored each other's values."""
    from concurrent.futures import ThreadPoolExecutor

    import matplotlib

    from bot.campaigns.report import chart_data, draw
    from tests.test_campaign_report import demo_like

    data = chart_data(demo_like())
    before = (list(matplotlib.rcParams["font.family"]), matplotlib.rcParams["axes.unicode_minus"])
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda n: draw(data, tmp_path / f"c{n}.png"), range(16)))
    after = (list(matplotlib.rcParams["font.family"]), matplotlib.rcParams["axes.unicode_minus"])
    assert after == before
    assert len({(tmp_path / f"c{n}.png").read_bytes() for n in range(16)}) == 1
