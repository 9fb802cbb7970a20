"""The sender follows [org]: with `org.name = "Acme GmbH"`, `org.domains = ["acme.example"]` and no
[campaigns] section, mail goes out from Acme, never from the example organisation; `postroom serve`
says at start who the mail is from and where it listens (without [org] it does not start at all:
tests/test_org_placeholders.py)."""

from __future__ import annotations

import base64
import re
import secrets
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from bot.config import load_settings
from tests.conftest import DEMO_TEMPLATES
from tests.smtp import SmtpServer, free_port
from tests.test_cli import CONTACTS, POSTROOM, clean_env

HR, SAM, MARIA = "hr@acme.example", "sam@acme.example", "maria@acme.example"
TOKEN_PATH = re.compile(r"/(u|c|o|preview)/([A-Za-z0-9_-]+\.[A-Za-z0-9_-]+)")


def acme_config(folder: Path, smtp_port: int, web_port: int, relay_port: int) -> Path:
    shutil.copytree(DEMO_TEMPLATES, folder / "templates")  # campaigns.templates_dir's default: ./templates
    config = folder / "postroom.toml"
    config.write_text(f"""
[database]
url = "sqlite+aiosqlite:///{folder / "acme.db"}"

[smtp]
host = "127.0.0.1"
port = {smtp_port}
timeout_s = 5

[org]
name = "Acme GmbH"
domains = ["acme.example"]
postal_address = "Hauptstraße 1, 10115 Berlin"

[roles]
hr = ["{HR}"]
senders = ["{SAM}"]
approvers = ["{MARIA}"]

[web]
host = "127.0.0.1"
port = {web_port}
base_url = "https://postroom.acme.example"
secret = "{secrets.token_urlsafe(32)}"

[relay]
enabled = true
host = "127.0.0.1"
port = {relay_port}
""")
    return config


def decoded_tokens(text: str) -> list[str]:
    """The payload of every Postroom token in `text` (a token is base64url(payload).mac)."""
    out = []
    for _kind, token in TOKEN_PATH.findall(text):
        body = token.split(".")[0]
        out.append(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode())
    return out


def test_mail_from_an_org_without_a_campaigns_section_names_the_org_and_no_token_holds_an_address(
    tmp_path: Path,
) -> None:
    with SmtpServer() as smtp:
        web_port, relay_port = free_port(), free_port()
        config = acme_config(tmp_path, smtp.port, web_port, relay_port)

        def postroom(*args: str) -> str:
            done = subprocess.run(
                [POSTROOM, "--config", str(config), *args],
                capture_output=True,
                text=True,
                cwd=tmp_path,
                env=clean_env(),
                timeout=60,
            )
            assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
            return done.stdout

        (tmp_path / "contacts.csv").write_text(CONTACTS)
        postroom("contacts", "import", "contacts.csv", "--list", "customers")
        postroom("chat", "--as", SAM, "/campaign new spring --to customers --template welcome")
        postroom("chat", "--as", SAM, "/campaign submit spring")
        postroom("chat", "--as", MARIA, "/approve spring")
        assert len(smtp.handler.messages) == 3
        recipients = ["lena@example.com", "raj@example.net", "yuki@example.org"]
        for received in smtp.handler.messages:
            msg = received.message
            assert msg["From"] == "Acme GmbH <news@acme.example>"
            https, mailto = [part.strip(" <>") for part in msg["List-Unsubscribe"].split(",")]
            assert mailto.startswith("mailto:unsubscribe@acme.example?subject=unsubscribe%20")
            assert https.startswith("https://postroom.acme.example/u/")
            local, _, domain = received.mail_from.partition("@")
            assert domain == "acme.example" and local.startswith("bounces+") and len(local) <= 64
            assert msg["Message-ID"].endswith("@acme.example>")
            assert "Acme GmbH" in msg["List-Id"]
            everything = received.data.decode() + msg.get_body(("html",)).get_content()
            everything += msg.get_body(("plain",)).get_content()
            headers = received.data.decode().split("\r\n\r\n", 1)[0]
            assert "Example Corp" not in everything and "corp.example" not in headers
            payloads = decoded_tokens(everything)
            assert {p.split("|")[0] for p in payloads} >= {"ud", "c", "o"}
            for payload in payloads:
                assert "@" not in payload and not any(r.split("@")[0] in payload for r in recipients), payload
            assert "@" not in local.removeprefix("bounces+")

        # serve says who the mail is from and where it really listens, before anything else happens
        proc = subprocess.Popen(
            [POSTROOM, "--config", str(config), "serve"],
            cwd=tmp_path,
            env=clean_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            deadline = time.monotonic() + 20
            while True:
                assert proc.poll() is None, proc.communicate()[1]
                try:
                    if httpx.get(f"http://127.0.0.1:{web_port}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline
                time.sleep(0.05)
            # the unsubscribe page a recipient opens does not show their address either
            lena = smtp.handler.to("lena@example.com")[0].message
            path = (
                lena["List-Unsubscribe"]
                .split(",")[0]
                .strip(" <>")
                .removeprefix("https://postroom.acme.example")
            )
            page = httpx.get(f"http://127.0.0.1:{web_port}{path}")
            assert page.status_code == 200 and "lena@example.com" not in page.text
            assert "Acme GmbH" in page.text
            for payload in decoded_tokens(page.text):
                assert "@" not in payload
        finally:
            proc.send_signal(signal.SIGTERM)
            _out, err = proc.communicate(timeout=10)
        assert proc.returncode == 0, err
        assert (
            "Campaign mail: From: Acme GmbH <news@acme.example>; Return-Path: bounces+…@acme.example" in err
        )
        assert "mailto:unsubscribe@acme.example" in err
        assert f"Listening: web 127.0.0.1:{web_port}; SMTP relay 127.0.0.1:{relay_port}" in err
        assert "Warning" not in err  # [org] is configured
        assert "DKIM signing: no key for acme.example, so campaign mail leaves unsigned" in err


@pytest.mark.parametrize(
    ("campaigns", "expected"),
    [
        ({}, ("Acme GmbH", "news@acme.example", "unsubscribe@acme.example", "acme.example")),
        (
            {"from_address": "hello@mail.acme.example"},
            ("Acme GmbH", "hello@mail.acme.example", "unsubscribe@mail.acme.example", "mail.acme.example"),
        ),
        (
            {
                "from_name": "Acme News",
                "from_address": "n@acme.example",
                "unsubscribe_mailbox": "stop@lists.acme.example",
                "bounce_domain": "bounce.acme.example",
            },
            ("Acme News", "n@acme.example", "stop@lists.acme.example", "bounce.acme.example"),
        ),
    ],
)
def test_sender_settings_follow_org_unless_set(campaigns: dict[str, str], expected: tuple[str, ...]) -> None:
    settings = load_settings(
        read_file=False,
        read_env=False,
        org={"name": "Acme GmbH", "domains": ["Acme.example", "acme.de"]},
        campaigns=campaigns,
    )
    c = settings.campaigns
    assert (c.from_name, c.from_address, c.unsubscribe_mailbox, c.bounce_domain) == expected
