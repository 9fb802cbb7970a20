"""The wrong-password case end to end: a real `postroom serve` process starts a scheduled campaign against
a relay that refuses its login. Nobody is suppressed, the campaign pauses with a sentence that names the
reply and the settings to check; after the password is corrected (and serve restarted), `/campaign resume`
delivers to every recipient exactly once. Each `postroom` call is its own process (tests/test_cli.py)."""

from __future__ import annotations

import secrets
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bot.scheduler import sync_url
from tests.smtp import free_port
from tests.smtp_faults import PASSWORD, USERNAME, FaultyServer
from tests.test_cli import CONTACTS, MARIA, SAM, Setup, served, write_config
from tests.test_cli import setup as setup  # noqa: F401  (the fixture)

pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
ADMIN = "admin@corp.example"
RECIPIENTS = ["lena@example.com", "raj@example.net", "yuki@example.org"]


def configure(setup: Setup, database_url: str, password: str) -> None:
    write_config(setup.folder, setup.smtp.port, setup.web_port, database_url)
    text = setup.config.read_text()
    text = text.replace(
        "timeout_s = 5\n", f'timeout_s = 5\nusername = "{USERNAME}"\npassword = "{password}"\n'
    )
    text = text.replace("[web]", f'admins = ["{ADMIN}"]\n\n[web]')
    text += "poll_s = 0.5\n"  # [campaigns] is the last section
    setup.config.write_text(text)


def campaign_state(database_url: str, name: str) -> str | None:
    """The campaign's state, read from the database the served process writes (no `postroom` start a poll)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(sync_url(database_url))
    try:
        with engine.connect() as conn:
            return conn.execute(text("SELECT state FROM campaigns WHERE name = :n"), {"n": name}).scalar()
    finally:
        engine.dispose()


def wait_for(setup: Setup, database_url: str, state: str, words: str, timeout: float = 40) -> str:
    """Wait until the campaign is in `state` in the database, then `/campaign status` must say `words`."""
    deadline = time.monotonic() + timeout
    while (now := campaign_state(database_url, "spring")) != state:
        assert time.monotonic() < deadline, now
        time.sleep(0.1)
    status = setup.chat(SAM, "/campaign status spring")
    assert words in status, status
    return status


def test_a_wrong_password_pauses_a_served_campaign_and_resume_delivers_once(
    tmp_path: Path, database_url: str
) -> None:
    with FaultyServer(auth=True) as relay:
        setup = Setup(tmp_path, tmp_path / "postroom.toml", tmp_path / "postroom.db", free_port(), relay)  # type: ignore[arg-type]
        configure(
            setup, database_url, "wrong-" + secrets.token_urlsafe(12)
        )  # serve refuses one from our source
        (tmp_path / "contacts.csv").write_text(CONTACTS)
        assert setup.run("contacts", "import", "contacts.csv", "--list", "customers").returncode == 0
        with served(setup):
            started = time.monotonic()
            setup.chat(SAM, "/campaign new spring --to customers --template welcome")
            # The start must come after the two `postroom` calls below (submit, approve), else the approving
            # process starts the send itself: four times what one call just took, as slow as the machine is.
            # A fixed 10 s was both a wait on a quiet machine and too short on a loaded one.
            ahead = max(3.0, 4 * (time.monotonic() - started))
            while True:  # a submit slower than that (a loaded machine) refuses the time, changing nothing
                at = (datetime.now(UTC) + timedelta(seconds=ahead + 1)).isoformat(timespec="seconds")
                done = setup.run("chat", "--as", SAM, f"/campaign submit spring --at {at}")
                if "is in the past" not in done.stdout or ahead > 120:
                    break
                ahead *= 2
            assert done.returncode == 0 and "It starts at" in done.stdout, (done.stdout, done.stderr)
            assert "Traceback" not in done.stdout + done.stderr
            approved = setup.chat(MARIA, "/approve spring")
            assert "it starts at" in approved, approved  # serve starts it, not this process
            status = wait_for(setup, database_url, "paused", "is paused")
        assert "refused Postroom's login (535 5.7.8" in status and "smtp.username and smtp.password" in status
        assert "Nobody was suppressed" in status and "3 recipients: pending 3" in status, status
        assert relay.messages == [] and relay.handler.refused_logins
        assert "Nobody is suppressed." in setup.chat(ADMIN, "/suppressions list")

        configure(setup, database_url, PASSWORD)  # the admin corrects smtp.password and restarts
        with served(setup):
            assert "Resumed" in setup.chat(SAM, "/campaign resume spring")
            wait_for(setup, database_url, "completed", "is completed")
        assert Counter(r for m in relay.messages for r in m.rcpt_tos) == Counter(dict.fromkeys(RECIPIENTS, 1))
        assert "Nobody is suppressed." in setup.chat(ADMIN, "/suppressions list")


def serve_saying(setup: Setup, words: str, timeout: float = 20) -> str:
    """Start `postroom serve`, wait until its standard error holds `words` (it must be answering /healthz
    by then: a bad relay never stops it), stop it; the whole standard error."""
    import signal
    import subprocess

    import httpx

    from tests.test_cli import POSTROOM, clean_env

    log = setup.folder / "serve.err"
    with log.open("w") as err:
        proc = subprocess.Popen(
            [POSTROOM, "--config", str(setup.config), "serve"], cwd=setup.folder, env=clean_env(), stderr=err
        )
    try:
        deadline = time.monotonic() + timeout
        while words not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        assert httpx.get(f"http://127.0.0.1:{setup.web_port}/healthz", timeout=2).status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
    return log.read_text()


def test_serve_warns_in_one_sentence_when_the_relay_is_not_there_and_keeps_running(setup: Setup) -> None:
    """Tryout: serve started silently with a wrong smtp.port; it now says so at start (and still serves)."""
    port = free_port()  # nothing listens there
    setup.config.write_text(
        setup.config.read_text().replace(f"port = {setup.smtp.port}\n", f"port = {port}\n")
    )
    err = serve_saying(setup, "Warning: The mail relay")
    (line,) = [x for x in err.splitlines() if x.startswith("Warning: The mail relay")]
    assert line.startswith(
        f"Warning: The mail relay at 127.0.0.1:{port} can't be reached (connection failed: "
    )
    assert line.endswith(
        "check smtp.host and smtp.port (campaign mail and group posts wait until it answers)."
    )


def test_serve_warns_when_the_relay_refuses_the_password(tmp_path: Path, database_url: str) -> None:
    with FaultyServer(auth=True) as relay:
        setup = Setup(tmp_path, tmp_path / "postroom.toml", tmp_path / "postroom.db", free_port(), relay)  # type: ignore[arg-type]
        configure(setup, database_url, "wrong-" + secrets.token_urlsafe(12))
        err = serve_saying(setup, "Warning: The mail relay")
    password = [x for x in setup.config.read_text().splitlines() if x.startswith("password =")][0]
    assert f"Warning: The mail relay at 127.0.0.1:{relay.port} refused Postroom's login (535" in err
    assert "check smtp.username and smtp.password." in err and password.split('"')[1] not in err
