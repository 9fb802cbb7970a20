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


def wait_for(setup: Setup, words: str, timeout: float = 40) -> str:
    deadline = time.monotonic() + timeout
    while True:
        status = setup.chat(SAM, "/campaign status spring")
        if words in status:
            return status
        assert time.monotonic() < deadline, status
        time.sleep(0.2)


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
            setup.chat(SAM, "/campaign new spring --to customers --template welcome")
            at = (datetime.now(UTC) + timedelta(seconds=10)).isoformat(timespec="seconds")
            assert "It starts at" in setup.chat(SAM, f"/campaign submit spring --at {at}")
            approved = setup.chat(MARIA, "/approve spring")
            assert "it starts at" in approved, approved  # serve starts it, not this process
            status = wait_for(setup, "is paused")
        assert "refused Postroom's login (535 5.7.8" in status and "smtp.username and smtp.password" in status
        assert "Nobody was suppressed" in status and "3 recipients: pending 3" in status, status
        assert relay.messages == [] and relay.handler.refused_logins
        assert "Nobody is suppressed." in setup.chat(ADMIN, "/suppressions list")

        configure(setup, database_url, PASSWORD)  # the admin corrects smtp.password and restarts
        with served(setup):
            assert "Resumed" in setup.chat(SAM, "/campaign resume spring")
            wait_for(setup, "is completed")
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
