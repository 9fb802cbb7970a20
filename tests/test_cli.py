"""The installed `postroom` command, end to end, as a person drives it from a shell.

A postroom.toml points at a temporary SQLite database and at a real SMTP server on loopback
(tests/smtp.py, running in this process); each `postroom` call is a separate process.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import DEMO_TEMPLATES, HR, NOBODY
from tests.smtp import SmtpServer, free_port

POSTROOM = str(Path(sys.executable).parent / "postroom")
SAM = "sam@corp.example"  # a sender who is also an approver: his own campaigns he still may not approve
MARIA = "maria@corp.example"
OMAR = "omar@corp.example"

CONTACTS = """email,name,consent_at,consent_source,company
lena@example.com,Lena Fischer,2026-03-02T10:15:00+00:00,signup form,Fischer GmbH
raj@example.net,Raj Patel,2026-04-11T08:00:00+00:00,trade fair,
yuki@example.org,Yuki Tanaka,2026-05-20T16:45:00+09:00,webinar,Tanaka KK
nocon@example.com,No Consent,,,
not-an-address,Broken Row,2026-05-20T16:45:00+00:00,webinar,
"""


@dataclass
class Setup:
    folder: Path
    config: Path
    db: Path
    web_port: int
    smtp: SmtpServer

    def run(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [POSTROOM, "--config", str(self.config), *args],
            capture_output=True,
            text=True,
            cwd=self.folder,
            env=clean_env(env),
            timeout=timeout,
        )

    def chat(self, who: str, text: str, *, refused: bool = False) -> str:
        """The answer; `postroom chat` exits 1 when the command is refused, 0 when it was carried out."""
        done = self.run("chat", "--as", who, text)
        assert done.returncode == (1 if refused else 0), (text, done.stdout, done.stderr)
        assert "Traceback" not in done.stdout + done.stderr
        return done.stdout


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTROOM_")}
    env.update(extra or {})
    return env


def write_config(folder: Path, smtp_port: int, web_port: int, database_url: str | None = None) -> Path:
    """A postroom.toml for these tests. SpamAssassin is off, as in tests/conftest.py's settings: a submit or a
    preview would run it (~0.8 s of CPU each), and tests/test_spam_score.py tests it, with the default."""
    templates = folder / "templates"
    if not templates.exists():
        shutil.copytree(DEMO_TEMPLATES, templates)
    config = folder / "postroom.toml"
    default_url = f"sqlite+aiosqlite:///{folder / 'postroom.db'}"
    config.write_text(f"""
[database]
url = "{database_url or default_url}"

[smtp]
host = "127.0.0.1"
port = {smtp_port}
timeout_s = 5

[org]
name = "Example Corp"
domains = ["corp.example"]
postal_address = "1 Example Street, Berlin"

[roles]
hr = ["{HR}"]
senders = ["{SAM}"]
approvers = ["{MARIA}", "{OMAR}", "{SAM}"]

[web]
host = "127.0.0.1"
port = {web_port}
base_url = "https://postroom.corp.example"
secret = "{secrets.token_urlsafe(32)}"

[campaigns]
templates_dir = "{templates}"
from_address = "news@corp.example"
unsubscribe_mailbox = "unsubscribe@corp.example"
spam_check = "off"
""")
    return config


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    """SQLite only (the schema tests edit the file directly)."""
    with SmtpServer() as smtp:
        web_port = free_port()
        config = write_config(tmp_path, smtp.port, web_port)
        yield Setup(tmp_path, config, tmp_path / "postroom.db", web_port, smtp)


@pytest.fixture
def setup_on_each_database(tmp_path: Path, database_url: str) -> Iterator[Setup]:
    """SQLite, and PostgreSQL when POSTROOM_TEST_DATABASE_URL is set."""
    with SmtpServer() as smtp:
        web_port = free_port()
        config = write_config(tmp_path, smtp.port, web_port, database_url)
        yield Setup(tmp_path, config, tmp_path / "postroom.db", web_port, smtp)


@contextmanager
def served(setup: Setup) -> Iterator[subprocess.Popen[str]]:
    """`postroom serve` running until the block ends; then SIGTERM, and it must stop within 5 s."""
    proc = subprocess.Popen(
        [POSTROOM, "--config", str(setup.config), "serve"],
        cwd=setup.folder,
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
                if httpx.get(f"http://127.0.0.1:{setup.web_port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "postroom serve did not answer /healthz within 20 s"
            time.sleep(0.05)
        yield proc
    finally:
        if proc.poll() is None:
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            try:
                _out, err = proc.communicate(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                raise AssertionError("postroom serve did not stop within 5 s of SIGTERM") from None
            assert proc.returncode == 0, err
            assert "Traceback" not in err and "Stopping" in err
            assert time.monotonic() - started < 5


def test_the_done_when_list_from_a_shell(setup_on_each_database: Setup) -> None:
    setup = setup_on_each_database
    smtp = setup.smtp.handler

    # HR creates a group, adds two internal people; /members lists them.
    assert "Created the internal group eng@corp.example" in setup.chat(HR, '/newgroup eng "Engineering"')
    assert "it now has 2 members" in setup.chat(
        HR, "/addgroup eng alice@corp.example bob@corp.example --unknown-ok"
    )
    members = setup.chat(HR, "/members eng")
    assert "alice@corp.example" in members and "bob@corp.example" in members

    # A gmail address is refused with a sentence, and nothing changes; nor can a non-HR person add.
    refused = setup.chat(HR, "/addgroup eng carol@corp.example someone@gmail.com --unknown-ok", refused=True)
    assert "someone@gmail.com is outside corp.example" in refused and "campaign" in refused
    assert "is for HR or admins;" in setup.chat(NOBODY, "/newgroup sales", refused=True)
    assert "owners of eng@corp.example" in setup.chat(NOBODY, "/addgroup eng nora@corp.example", refused=True)
    assert setup.chat(HR, "/members eng") == members

    # Contacts with consent from a CSV; the bad row is reported with its line number.
    (setup.folder / "contacts.csv").write_text(CONTACTS)
    imported = setup.run("contacts", "import", "contacts.csv", "--list", "customers")
    assert imported.returncode == 0, imported.stderr
    assert "Imported 4 of 5 rows" in imported.stdout and "line 6:" in imported.stdout

    # The sender's submit reaches the approvers as a card, with buttons and their text commands.
    assert "Draft campaign “spring”" in setup.chat(
        SAM,
        '/campaign new spring --to customers --template welcome --subject "Spring news for {{ first_name }}"',
    )
    submitted = setup.chat(SAM, "/campaign submit spring")
    assert "[approvals]" in submitted and "┌─ Approval needed: campaign “spring”" in submitted
    assert "[ Approve ]  → type: /approve spring" in submitted
    assert "[ Reject ]  → type: /reject spring <reason>" in submitted
    assert "3 recipients" in submitted

    # The sender may not approve his own campaign, even holding the approver role.
    assert "you can't approve or reject it yourself" in setup.chat(SAM, "/approve spring", refused=True)
    assert smtp.messages == []

    # An approver's /approve delivers one message to every consented contact, with the headers.
    approved = setup.chat(MARIA, "/approve spring")
    assert "Approved “spring”" in approved and "sent — 3 delivered" in approved
    assert sorted(r for m in smtp.messages for r in m.rcpt_tos) == [
        "lena@example.com",
        "raj@example.net",
        "yuki@example.org",
    ]
    ids = set()
    for received in smtp.messages:
        msg = received.message
        ids.add(msg["Message-ID"])
        https, mailto = [part.strip(" <>") for part in msg["List-Unsubscribe"].split(",")]
        assert https.startswith("https://postroom.corp.example/u/")
        assert mailto.startswith("mailto:unsubscribe@corp.example?subject=")
        assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert len(ids) == 3

    # Approving twice sends once.
    assert "nothing to approve" in setup.chat(OMAR, "/approve spring", refused=True)
    assert "nothing to approve" in setup.chat(MARIA, "/approve spring", refused=True)
    assert len(smtp.messages) == 3

    # A one-click POST to the running web app suppresses the contact; the next campaign skips it.
    lena = smtp.to("lena@example.com")[0].message
    path = lena["List-Unsubscribe"].split(",")[0].strip(" <>").removeprefix("https://postroom.corp.example")
    with served(setup):
        page = httpx.get(f"http://127.0.0.1:{setup.web_port}{path}")
        assert page.status_code == 200 and "l…@example.com" in page.text  # masked: links get forwarded
        done = httpx.post(
            f"http://127.0.0.1:{setup.web_port}{path}",
            content="List-Unsubscribe=One-Click",
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        assert done.status_code == 200
    smtp.messages.clear()
    setup.chat(SAM, "/campaign new summer --to customers --template welcome")
    assert "2 recipients" in setup.chat(SAM, "/campaign submit summer")
    setup.chat(OMAR, "/approve summer")
    assert sorted(r for m in smtp.messages for r in m.rcpt_tos) == ["raj@example.net", "yuki@example.org"]


def test_serve_answers_healthz_and_stops_on_sigterm(setup_on_each_database: Setup) -> None:
    setup = setup_on_each_database
    with served(setup) as proc:
        health = httpx.get(f"http://127.0.0.1:{setup.web_port}/healthz")
        assert health.json() == {"status": "ok"}
        assert proc.poll() is None
    assert proc.returncode == 0


@pytest.mark.parametrize(
    ("toml", "env", "says"),
    [
        ("[smtp]\nport = 70000\n", {}, "smtp.port (or $POSTROOM_SMTP__PORT)"),
        ('[smtp]\nhots = "mail"\n', {}, "smtp.hots is not one Postroom knows"),
        ("[smtp\nport = 25\n", {}, "is not valid TOML"),
        ('[web]\nbase_url = "ftp://x"\n', {}, "web.base_url"),
        (
            "",
            {"POSTROOM_SMTP__PORT": "abc"},
            "smtp.port (or $POSTROOM_SMTP__PORT) input should be a valid integer",
        ),
        (
            "",
            {"POSTROOM_ORG__DOMAINS": "corp.example"},
            "POSTROOM_ORG__DOMAINS can't be read: a list is written as JSON",
        ),
        (
            '[database]\nurl = "sqlite+aiosqlite:////nonexistent/dir/x.db"\n'
            '[org]\nname = "Acme"\ndomains = ["acme.example"]\npostal_address = "Street 1, Berlin"\n',
            {},
            "a folder that does not exist",
        ),
    ],
)
def test_a_bad_configuration_stops_with_one_sentence(
    tmp_path: Path, toml: str, env: dict[str, str], says: str
) -> None:
    config = tmp_path / "postroom.toml"
    config.write_text(toml)
    done = subprocess.run(
        [POSTROOM, "--config", str(config), "chat", "--as", HR, "/help"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=clean_env(env),
        timeout=60,
    )
    assert done.returncode != 0
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("Error: ") and says in done.stderr
    assert done.stderr.rstrip().endswith(".")


def test_db_upgrade_and_an_unknown_schema_is_refused(setup: Setup) -> None:
    first = setup.run("db", "upgrade")
    assert first.returncode == 0 and first.stdout.startswith("Upgraded the schema from empty to ")
    again = setup.run("db", "upgrade")
    assert again.returncode == 0 and "up to date" in again.stdout

    with sqlite3.connect(setup.db) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '9999_from_the_future'")
    for args in (("chat", "--as", HR, "/help"), ("db", "upgrade")):
        done = setup.run(*args)
        assert done.returncode != 0 and "Traceback" not in done.stderr
        assert done.stderr == (
            "Error: The database's schema (9999_from_the_future) is newer than this version of "
            "Postroom knows: upgrade Postroom.\n"
        )

    with sqlite3.connect(setup.db) as conn:
        conn.execute("DELETE FROM alembic_version")
    for args in (("chat", "--as", HR, "/help"), ("db", "upgrade")):
        done = setup.run(*args)
        assert done.returncode != 0 and "has tables but no Postroom schema version" in done.stderr
        assert done.stderr.count("\n") == 1


def test_serve_on_a_taken_port_says_so_before_starting_anything(setup: Setup) -> None:
    import socket

    mailbox = setup.folder / "relay-mailbox"  # the relay (started by the services) would create it
    with setup.config.open("a") as f:
        f.write(
            f'\n[relay]\nenabled = true\nhost = "127.0.0.1"\nport = {free_port()}\nmailbox_dir = "{mailbox}"\n'
        )
    with socket.create_server(("127.0.0.1", setup.web_port)):
        done = setup.run("serve", timeout=30)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        f"Error: The web app can't listen on 127.0.0.1:{setup.web_port} (address already in use): "
        "set web.port to a free port."
    ]
    assert not mailbox.exists(), "the relay, scheduler and watcher must not start when the web port is taken"


async def test_web_connections_have_nagle_off() -> None:
    """The web port's socket is made so asyncio sets TCP_NODELAY on each connection; without it every
    response waited ~40 ms for the client's delayed ACK (slack_ack's /healthz baseline: 48 ms -> 1.7 ms)."""
    import asyncio
    import socket

    from bot.app import listening_socket

    sock = listening_socket("127.0.0.1", 0)
    seen: list[int] = []

    async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        writer.close()

    server = await asyncio.start_server(accepted, sock=sock)
    async with server:
        _reader, writer = await asyncio.open_connection("127.0.0.1", sock.getsockname()[1])
        await _reader.read()
        writer.close()
    assert seen and seen[0] != 0


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (
            ("chat", "--as", "notanemail", "/groups"),
            "Invalid value for --as: “notanemail” is not an email address.",
        ),
        (
            ("contacts", "import", "nosuch.csv", "--list", "x"),
            "Can't read nosuch.csv: No such file or directory.",
        ),
        (
            ("contacts", "import", "binary.csv", "--list", "x"),
            "binary.csv is not UTF-8 text; save it as UTF-8 CSV.",
        ),
        (("contacts", "import", "noemail.csv", "--list", "x"), "noemail.csv has no “email” column"),
        (("contacts", "import", "noemail.csv", "--list", "bad list!"), "“bad list!” cannot be a list name"),
    ],
)
def test_cli_bad_input_is_one_sentence_and_changes_nothing(
    setup: Setup, args: tuple[str, ...], says: str
) -> None:
    (setup.folder / "binary.csv").write_bytes(b"\xff\xfe\x00email")
    (setup.folder / "noemail.csv").write_text("name\nx\n")
    done = setup.run(*args)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert says in done.stderr.strip().splitlines()[-1]
    if setup.db.exists():
        with sqlite3.connect(setup.db) as conn:
            assert conn.execute("SELECT count(*) FROM contacts").fetchone() == (0,)
            assert conn.execute("SELECT count(*) FROM contact_lists").fetchone() == (0,)


def test_an_older_schema_is_refused_until_db_upgrade(setup: Setup) -> None:
    from alembic import command

    from bot.db.engine import alembic_config, head_revision

    cfg = alembic_config()
    cfg.set_main_option("sqlalchemy.url", f"sqlite:///{setup.db}")
    command.upgrade(cfg, "0004")  # a database left by the previous release
    refused = setup.run("chat", "--as", HR, "/help")
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert refused.stderr == (
        f"Error: The database's schema is out of date (0004, this version needs "
        f"{head_revision()}): run `postroom db upgrade` first.\n"
    )
    upgraded = setup.run("db", "upgrade")
    assert (
        upgraded.returncode == 0
        and upgraded.stdout.strip() == f"Upgraded the schema from 0004 to {head_revision()}."
    )
    assert setup.run("chat", "--as", HR, "/help").returncode == 0


def with_stdout_closed(setup: Setup, *args: str) -> tuple[int, str]:
    """`postroom … | head -1` once head has gone: the reader closes its end before anything is written."""
    proc = subprocess.Popen(
        [POSTROOM, "--config", str(setup.config), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=setup.folder,
        env=clean_env(),
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read()
    return proc.wait(timeout=60), err


# Review: `postroom chat … | head -1` said "Error: Postroom could not start: [Errno 32] Broken pipe." and
# exited 1 — after the command had been carried out, and before the campaign send it started had finished.
def test_chat_into_a_pipe_that_closes_finishes_the_command_and_exits_quietly(setup: Setup) -> None:
    assert with_stdout_closed(setup, "chat", "--as", HR, "/help") == (0, "")
    assert with_stdout_closed(setup, "chat", "--as", HR, '/newgroup eng "Engineering"') == (0, "")
    assert "eng@corp.example" in setup.chat(HR, "/groups")
    code, err = with_stdout_closed(setup, "chat", "--as", NOBODY, "/newgroup sales")
    assert (code, err) == (1, ""), err  # refused: still 1, and still no traceback

    (setup.folder / "contacts.csv").write_text(CONTACTS)
    assert setup.run("contacts", "import", "contacts.csv", "--list", "customers").returncode == 0
    setup.chat(SAM, "/campaign new spring --to customers --template welcome")
    setup.chat(SAM, "/campaign submit spring")
    assert with_stdout_closed(setup, "chat", "--as", MARIA, "/approve spring") == (0, "")
    # The send it started finished before it exited, as with a reader that stays.
    assert sorted(r for m in setup.smtp.messages for r in m.rcpt_tos) == [
        "lena@example.com",
        "raj@example.net",
        "yuki@example.org",
    ]
