"""The sample's SpamAssassin score at /campaign preview, on the web preview and the approval card, and the
threshold that stops a submit (bot/campaigns/spam_score.py).

The tests that score for real need SpamAssassin: CI installs it (`.ci/run`) and sets
POSTROOM_REQUIRE_SPAMASSASSIN, so there they run or fail; on a machine without it they are skipped with
one sentence. The tests of a missing, hanging or failing SpamAssassin put a PATH of their own in front.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from bot import demo
from bot.contacts.importer import import_contacts
from bot.db.models import Campaign
from tests.conftest import APPROVER, SENDER, make_settings
from tests.test_campaign_flow import load_customers

MISSING = (
    None
    if shutil.which("spamassassin")
    else "SpamAssassin is not installed (Debian package spamassassin), so the scoring tests can't run."
)
needs_spamassassin = pytest.mark.skipif(
    MISSING is not None and not os.environ.get("POSTROOM_REQUIRE_SPAMASSASSIN"), reason=str(MISSING)
)
SCORE = re.compile(r"Spam score: (-?\d+\.\d) \(SpamAssassin; below 5\.0\): (.+)")

# What a spammer writes: an all-caps subject, money and urgency, a link to a bare IP address.
SPAMMY_HTML = """<!doctype html>
<html><head><meta charset="utf-8"><title>FREE MONEY!!! ACT NOW $$$ 100% GUARANTEED</title></head>
<body>
<p><font size="7" color="red">FREE!!! $$$ CASH BONUS $$$ NO CREDIT CHECK!!!</font></p>
<p>DEAR FRIEND, YOU HAVE BEEN SELECTED TO RECEIVE $1,000,000 US DOLLARS. THIS IS NOT A SCAM.
100% RISK FREE, ACT NOW WHILE SUPPLIES LAST!!! LIMITED TIME OFFER!!!</p>
<p><a href="http://203.0.113.7/claim.php?id=777">CLICK HERE TO CLAIM YOUR PRIZE</a></p>
<p><a href="http://203.0.113.7/viagra">CHEAP VIAGRA, CIALIS, NO PRESCRIPTION</a></p>
<p><small><a href="{{ unsubscribe_url }}">Unsubscribe</a> {{ org.name }}, {{ org.postal_address }}</small></p>
</body></html>
"""
SPAMMY_TEXT = """FREE!!! $$$ CASH BONUS $$$ NO CREDIT CHECK!!!
YOU HAVE BEEN SELECTED TO RECEIVE $1,000,000 US DOLLARS. CLICK HERE: http://203.0.113.7/claim.php?id=777
Unsubscribe: {{ unsubscribe_url }}
{{ org.name }}, {{ org.postal_address }}
"""


@pytest.fixture
def campaigns() -> dict[str, Any]:
    return {}


@pytest.fixture
async def settings(database_url: str, smtp: Any, tmp_path: Path, campaigns: dict[str, Any]) -> Any:
    """The tests' settings (tests/conftest.py turns the score off for the rest of the suite) with the
    default spam_check, "auto", and what a test asks for."""
    return make_settings(database_url, smtp.port, tmp_path, campaigns={"spam_check": "auto", **campaigns})


async def state_of(bot: Any, name: str) -> str:
    async with bot.app.ctx.sessions() as session:
        return str((await session.execute(select(Campaign.state).where(Campaign.name == name))).scalar_one())


def path_with(tmp_path: Path, script: str | None) -> str:
    """A folder for PATH holding a `spamassassin` that runs `script`, or none at all."""
    folder = tmp_path / "bin"
    folder.mkdir(exist_ok=True)
    if script is not None:
        fake = folder / "spamassassin"
        fake.write_text("#!/bin/sh\n" + script)
        fake.chmod(0o755)
    return str(folder)


def without_urls(text: str) -> str:
    return re.sub(r"https?://\S+", "<url>", text)


@needs_spamassassin
async def test_demo_templates_score_below_2_at_preview_and_on_the_card(bot) -> None:  # type: ignore[no-untyped-def]
    await import_contacts(bot.core.ctx, demo.DATA / "contacts.csv", "customers")  # the demo's own
    await bot.say(
        SENDER, '/campaign new spring --to customers --template welcome --subject "Hi {{ first_name }}"'
    )
    await bot.say(SENDER, "/campaign new seats --to customers --template webinar")
    for name in ("spring", "seats"):
        preview = await bot.say(SENDER, f"/campaign preview {name}")
        found = SCORE.search(preview)
        assert found is not None, preview
        assert float(found.group(1)) < 2, preview
        assert "HTML_MESSAGE 0.0" in found.group(2)
    checker = bot.app.ctx.extras["spam_checker"]
    runs = checker.runs
    assert "Submitted “spring”" in await bot.say(SENDER, "/campaign submit spring")
    assert checker.runs == runs  # the same sample, scored once: the submit's review found it kept
    card = bot.cards()[-1].card
    spam = dict(card.fields)["Spam score"]
    assert re.match(r"-?\d+\.\d \(SpamAssassin; below 5\.0\): ", spam), spam

    url = re.search(r"HTML preview: (\S+)", await bot.say(APPROVER, "/campaign preview spring"))
    assert url is not None
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=bot.app.web()), base_url="http://t"
    ) as web:
        page = await web.get(url.group(1).removeprefix("http://127.0.0.1:8080"))
    assert page.status_code == 200
    assert SCORE.search(page.text) is not None


@needs_spamassassin
@pytest.mark.parametrize("campaigns", [{"spam_threshold": 4.0}])
async def test_a_spammy_template_is_refused_at_submit_and_stays_draft(bot, tmp_path) -> None:  # type: ignore[no-untyped-def]
    await load_customers(bot, tmp_path)
    templates = Path(bot.app.ctx.settings.campaigns.templates_dir)
    (templates / "spammy.html").write_text(SPAMMY_HTML)
    (templates / "spammy.txt").write_text(SPAMMY_TEXT)
    await bot.say(SENDER, "/campaign new loot --to customers --template spammy")

    preview = await bot.say(SENDER, "/campaign preview loot")
    assert "✗ The sample message scores" in preview and "Spam score:" not in preview  # said once
    reply = await bot.say(SENDER, "/campaign submit loot")
    refused = re.search(
        r"The sample message scores (\d+\.\d) in SpamAssassin, at or above the limit of 4\.0 "
        r"\(campaigns\.spam_threshold\); the rules that weigh most: ((?:[A-Z0-9_]+ -?\d+\.\d(?:, )?){3})\.",
        reply,
    )
    assert refused is not None, reply
    assert float(refused.group(1)) >= 4.0
    assert await state_of(bot, "loot") == "draft"
    assert bot.cards() == []  # nobody was asked to approve it


async def test_a_missing_spamassassin_under_auto_changes_nothing(bot, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    await load_customers(bot, tmp_path)
    monkeypatch.setenv("PATH", path_with(tmp_path, None))
    await bot.say(SENDER, "/campaign new spring --to customers --template welcome")
    preview = await bot.say(SENDER, "/campaign preview spring")
    bot.app.ctx.settings.campaigns.spam_check = "off"
    assert without_urls(await bot.say(SENDER, "/campaign preview spring")) == without_urls(preview)
    bot.app.ctx.settings.campaigns.spam_check = "auto"
    assert "Spam" not in preview and "Checks: all passed." in preview
    assert "Submitted “spring”" in await bot.say(SENDER, "/campaign submit spring")
    assert "Spam score" not in dict(bot.cards()[-1].card.fields)
    assert bot.app.ctx.extras["spam_checker"].runs == 0


@pytest.mark.parametrize("campaigns", [{"spam_check": "required"}])
async def test_required_without_spamassassin_refuses_submit_naming_the_package(
    bot, tmp_path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    await load_customers(bot, tmp_path)
    monkeypatch.setenv("PATH", path_with(tmp_path, None))
    await bot.say(SENDER, "/campaign new spring --to customers --template welcome")
    preview = await bot.say(SENDER, "/campaign preview spring")
    assert "Spam score: none — SpamAssassin is not installed (Debian package spamassassin)." in preview
    reply = await bot.say(SENDER, "/campaign submit spring")
    assert (
        "SpamAssassin is not installed and campaigns.spam_check is “required”: install the Debian package "
        "spamassassin on the server" in reply
    )
    assert await state_of(bot, "spring") == "draft"


@pytest.mark.parametrize("campaigns", [{"spam_timeout_s": 0.5}])
async def test_a_spamassassin_that_hangs_is_killed_and_blocks_nothing_under_auto(
    bot, tmp_path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    await load_customers(bot, tmp_path)
    pid_file = tmp_path / "pid"
    monkeypatch.setenv("PATH", path_with(tmp_path, f"echo $$ > {pid_file}\nexec /bin/sleep 60\n"))
    await bot.say(SENDER, "/campaign new spring --to customers --template welcome")
    preview = await bot.say(SENDER, "/campaign preview spring")
    assert (
        "Spam score: none — SpamAssassin did not answer within 0.5 seconds. That is the server's trouble, "
        "not the message's." in preview
    )
    assert "Checks: all passed." in preview
    pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):  # killed and reaped, not left sleeping
        os.kill(pid, 0)
    assert "Submitted “spring”" in await bot.say(SENDER, "/campaign submit spring")
    assert dict(bot.cards()[-1].card.fields)["Spam score"].startswith("none — SpamAssassin did not answer")
    assert bot.app.ctx.extras["spam_checker"].runs == 2  # a failure is not kept: the submit tried again


@pytest.mark.parametrize("campaigns", [{"spam_check": "required"}])
async def test_a_failing_spamassassin_under_required_refuses_saying_it_is_not_the_message(
    bot, tmp_path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    await load_customers(bot, tmp_path)
    monkeypatch.setenv("PATH", path_with(tmp_path, "/bin/cat > /dev/null\necho 'Perl crashed' >&2\nexit 2\n"))
    await bot.say(SENDER, "/campaign new spring --to customers --template welcome")
    preview = await bot.say(SENDER, "/campaign preview spring")
    assert "Spam score: none — SpamAssassin failed (exit status 2)." in preview
    reply = await bot.say(SENDER, "/campaign submit spring")
    assert "SpamAssassin could not score the sample message" in reply and "not the message's" in reply
    assert await state_of(bot, "spring") == "draft"


async def test_a_spamassassin_that_writes_without_end_is_stopped_at_the_bound(
    bot, tmp_path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    await load_customers(bot, tmp_path)
    monkeypatch.setenv("PATH", path_with(tmp_path, "exec /usr/bin/yes 'X-Spam-Status: Yes, score=99.0'\n"))
    await bot.say(SENDER, "/campaign new spring --to customers --template welcome")
    preview = await bot.say(SENDER, "/campaign preview spring")
    assert "Spam score: none — SpamAssassin failed (it wrote more than it may)." in preview
    assert "Submitted “spring”" in await bot.say(SENDER, "/campaign submit spring")


@needs_spamassassin
async def test_a_template_cannot_write_its_own_score(bot, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The score is read from SpamAssassin's header and its report at the end, not from the message."""
    await load_customers(bot, tmp_path)
    templates = Path(bot.app.ctx.settings.campaigns.templates_dir)
    forged = (
        "X-Spam-Status: No, score=-99.0 required=5.0 tests=FORGED\n\n"
        "Content analysis details:   (-99.0 points, 5.0 required)\n\n"
        " pts rule name              description\n"
        "---- ---------------------- --------------------------------------------------\n"
        "-99.0 FORGED                 made up by the template\n"
    )
    (templates / "forged.txt").write_text(SPAMMY_TEXT.replace("Unsubscribe:", f"{forged}\nUnsubscribe:"))
    (templates / "forged.html").write_text(SPAMMY_HTML.replace("<body>", f"<body><pre>{forged}</pre>"))
    await bot.say(SENDER, "/campaign new loot --to customers --template forged")
    reply = await bot.say(SENDER, "/campaign submit loot")
    assert "The sample message scores" in reply and "FORGED" not in reply, reply
    assert await state_of(bot, "loot") == "draft"


@pytest.mark.parametrize("campaigns", [{"spam_timeout_s": 0.5}])
async def test_a_spamassassin_whose_child_holds_its_output_does_not_hold_the_next_preview(
    bot, tmp_path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """Verification tryout: a `spamassassin` that ignored TERM and left a `sleep 300` child holding its
    stdout made every later preview and submit review wait behind the one-at-a-time lock for the child
    (curl gave up at 60 s). The whole process group is killed now, and the pipe is waited for briefly."""
    await load_customers(bot, tmp_path)
    pid_file = tmp_path / "child"
    script = f"trap '' TERM\n/bin/sleep 300 &\necho $! > {pid_file}\nwait\n"
    monkeypatch.setenv("PATH", path_with(tmp_path, script))
    for name in ("spring", "autumn"):
        await bot.say(SENDER, f"/campaign new {name} --to customers --template welcome")
        started = asyncio.get_running_loop().time()
        preview = await asyncio.wait_for(bot.say(SENDER, f"/campaign preview {name}"), 30)
        assert "SpamAssassin did not answer within 0.5 seconds" in preview, preview
        assert asyncio.get_running_loop().time() - started < 30  # a bound, not a speed check
    child = Path(f"/proc/{int(pid_file.read_text())}/status")
    # The child went with its group: gone, or a zombie waiting for init to reap it (it was orphaned).
    assert not child.exists() or "State:\tZ" in child.read_text()
