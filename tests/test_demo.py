"""`postroom demo` (what `make demo` runs): no configuration, nothing but loopback, commands piped in."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bot import demo

POSTROOM = str(Path(sys.executable).parent / "postroom")

# The demos these tests start prefer web 8080 and SMTP 2525 (free ones when taken): two of them at once,
# one per xdist worker, could both find a port free and one then fail to bind it. One worker runs them.
pytestmark = pytest.mark.xdist_group("demo-ports")

SESSION = """\
/groups
/addgroup eng someone@gmail.com
/as sam@corp.example
/campaign new spring --to customers --template welcome --subject "Spring news for {{ first_name }}"
/campaign submit spring
/approve spring
/as maria@corp.example
/approve spring
"""


def run_demo(folder: Path, cwd: Path, commands: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [POSTROOM, "demo", "--dir", str(folder)],
        input=commands,
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=120,
    )


def test_demo_runs_the_whole_job_and_resumes(tmp_path: Path) -> None:
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    # Neither a broken postroom.toml in the folder nor POSTROOM_* variables reach the demo.
    (cwd / "postroom.toml").write_text("[smtp\nthis is not TOML")
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTROOM_")}
    env.update(
        POSTROOM_DATABASE__URL=f"sqlite+aiosqlite:///{tmp_path / 'production.db'}",
        POSTROOM_SMTP__HOST="192.0.2.1",
        POSTROOM_WEB__PORT="not-a-port",
    )
    folder = tmp_path / "demo"

    first = run_demo(folder, cwd, SESSION, env)
    assert first.returncode == 0, first.stderr
    assert "Traceback" not in first.stderr + first.stdout
    out = first.stdout
    assert "Postroom demo — Example Corp, a fresh start." in out
    assert "all-staff@corp.example “Everyone at Example Corp” — 8 members" in out
    assert "eng@corp.example “Engineering” — 2 members" in out
    assert "someone@gmail.com is outside corp.example" in out
    assert "┌─ Approval needed: campaign “spring”" in out
    assert (
        "[ Approve ]  → type: /approve spring" in out and "[ Reject ]  → type: /reject spring <reason>" in out
    )
    assert "/approve is for approvers" in out  # the sender can't approve
    mailbox_lines = [line for line in out.splitlines() if "✉ mailbox: to" in line]
    assert sorted(line.split(" to ")[1].split(" —")[0] for line in mailbox_lines) == [
        "lena@example.com",
        "raj@example.net",
        "yuki@example.org",
    ]
    assert "“Spring news for Lena”" in out
    assert len(list((folder / "mailbox").glob("*.eml"))) == 3
    assert not (tmp_path / "production.db").exists()

    again = run_demo(folder, cwd, "/as sam@corp.example\n/campaign list\n", env)
    assert again.returncode == 0, again.stderr
    assert "resuming the previous demo (postroom demo --fresh starts clean)" in again.stdout
    assert "spring — completed" in again.stdout
    assert len(list((folder / "mailbox").glob("*.eml"))) == 3  # nothing sent twice


def test_demo_settings_stay_on_loopback_and_in_its_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POSTROOM_DATABASE__URL", "postgresql://prod.example/postroom")
    monkeypatch.setenv("POSTROOM_SMTP__HOST", "smtp.prod.example")
    plan = demo.prepare(tmp_path / "d")
    s = plan.settings
    assert plan.fresh
    assert s.database.url == f"sqlite+aiosqlite:///{tmp_path / 'd' / 'postroom.db'}"
    assert {s.smtp.host, s.relay.host, s.web.host} == {"127.0.0.1"}
    assert s.web.base_url.startswith("http://127.0.0.1:")
    (tmp_path / "d" / "postroom.db").write_text("")
    assert not demo.prepare(tmp_path / "d").fresh
    assert demo.prepare(tmp_path / "d", fresh=True).fresh


def test_demo_in_a_terminal_prompts_and_ctrl_c_leaves_at_once(tmp_path: Path) -> None:
    """As `make demo` runs it: a prompt per person, and Ctrl-C ends it (not after the next Enter)."""
    import pty
    import select
    import signal
    import time

    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTROOM_")}
    pid, fd = pty.fork()
    if pid == 0:  # the child: the demo on a terminal
        os.chdir(tmp_path)
        os.execve(POSTROOM, [POSTROOM, "demo", "--dir", str(tmp_path / "d")], env)
    seen = b""

    def read_until(marker: bytes, seconds: float) -> None:
        nonlocal seen
        deadline = time.monotonic() + seconds
        while marker not in seen:
            assert time.monotonic() < deadline, f"no {marker!r} in {seen[-500:]!r}"
            if select.select([fd], [], [], 0.1)[0]:
                try:
                    seen += os.read(fd, 65536)
                except OSError:  # the terminal closed: the demo ended before saying it
                    raise AssertionError(f"the demo ended before {marker!r}: {seen[-1500:]!r}") from None

    try:
        read_until(b"hannah@corp.example> ", 30)
        os.write(fd, b"/members eng\n")
        read_until(b"eng@corp.example has 2 members", 10)
        read_until(b"hannah@corp.example> ", 10)
        os.kill(pid, signal.SIGINT)
        deadline = time.monotonic() + 5
        while (done := os.waitpid(pid, os.WNOHANG))[0] == 0:
            assert time.monotonic() < deadline, "the demo did not stop within 5 s of Ctrl-C"
            if select.select([fd], [], [], 0.1)[0]:
                try:
                    seen += os.read(fd, 65536)
                except OSError:
                    pass
        assert os.waitstatus_to_exitcode(done[1]) == 0
        assert b"Traceback" not in seen
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        os.close(fd)


async def test_every_demo_template_can_be_sent_to_the_demos_contacts(tmp_path: Path) -> None:
    """Each template the demo ships renders for every contact it seeds and passes submit's checks."""
    from bot.app import build_app
    from bot.campaigns import service
    from bot.campaigns.drafts import Drafts
    from bot.db.models import Campaign

    plan = demo.prepare(tmp_path / "d")
    app = await build_app(plan.settings)
    try:
        await demo.seed(app, plan.folder)
        templates = sorted(p.stem for p in (demo.DATA / "templates").glob("*.html"))
        assert "webinar" in templates and "welcome" in templates
        drafts: Drafts = app.drafts
        for name in templates:
            campaign = await drafts.create(
                f"try-{name}",
                to="customers",
                template=name,
                subject=None,
                tracking=True,
                actor=demo.SENDER,
                via="test",
            )
            async with app.ctx.sessions() as session:
                loaded = await session.get(Campaign, campaign.id)
                assert loaded is not None
                review = await service.review(app.ctx, session, loaded)
            assert review.problems == [], (name, review.problems)
            assert review.audience.total == 3
    finally:
        await app.close()
