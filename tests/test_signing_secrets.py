"""No built-in secret: `postroom serve` refuses a missing, published or weak one, a running serve refuses
tokens made with any string from the source, `postroom init` and the demo make their own secrets, and
configuration errors never echo a secret."""

from __future__ import annotations

import json
import re
import secrets
import smtplib
import sqlite3
import stat
import subprocess
import tomllib
from pathlib import Path

import httpx
import pytest

from bot.campaigns.tracking import verp_address
from bot.links import Signer
from tests.conftest import HR
from tests.smtp import free_port
from tests.test_cli import CONTACTS, MARIA, POSTROOM, SAM, Setup, clean_env, served
from tests.test_cli import setup as setup  # noqa: F401  (the fixture)
from tests.test_wecom import AES_KEY

OLD_DEFAULT = "change-me-postroom-dev-secret"
OLD_DEMO = "demo-secret-not-for-production"
OLD_DEMO_HR = "demo-hr-webhook-secret-not-for-production"
EXAMPLE = Path(__file__).parents[1] / "manifests" / "postroom.example.toml"
# Strings anyone can read in the repository: the old defaults, and a long random-looking one from a test.
FROM_THE_SOURCE = [OLD_DEFAULT, OLD_DEMO, OLD_DEMO_HR, AES_KEY]


def set_secret(config: Path, section: str, key: str, value: str | None) -> None:
    """Set (or, with None, remove) one key of a section of the config file tests/test_cli.py writes."""
    text = config.read_text()
    header = f"[{section}]\n"
    if header not in text:
        text += "\n" + header
    head, _, rest = text.partition(header)
    body, nxt, tail = rest.partition("\n[")
    body = "".join(line + "\n" for line in body.splitlines() if not line.startswith(f"{key} ="))
    if value is not None:
        body = f"{key} = {json.dumps(value)}\n" + body
    config.write_text(head + header + body + (nxt + tail if nxt else ""))


def serve_refusal(setup: Setup) -> str:
    done = setup.run("serve", timeout=30)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and lines[0].endswith("."), done.stderr
    return lines[0]


# -- postroom serve refuses to start -------------------------------------------------------------------
def test_serve_without_a_secret_says_in_one_sentence_how_to_make_one(setup: Setup) -> None:
    set_secret(setup.config, "web", "secret", None)
    said = serve_refusal(setup)
    assert "web.secret is not set" in said
    assert "postroom init" in said and "secrets.token_urlsafe(32)" in said
    assert not setup.db.exists(), "nothing may start (not even the database) without a secret"


WEAK = [
    (OLD_DEFAULT, "published with Postroom"),
    (OLD_DEMO, "published with Postroom"),
    ("Kq3" + "x" * 40, "too predictable"),
    ("z" * 48, "too predictable"),
    ("ab" * 24, "too predictable"),
    ("0123456789" * 4, "too predictable"),
    # a new random one each run, under a fixed id: pytest-xdist workers must collect the same test names
    pytest.param(
        secrets.token_urlsafe(18),
        "shorter than 32 characters",
        id="random-24-chars-shorter than 32 characters",
    ),
    ("my-company-secret-for-postroom-2026-links", "placeholder"),
    (AES_KEY, "appears in Postroom's own source"),
]


@pytest.mark.parametrize(("secret", "says"), [WEAK[0], WEAK[2], WEAK[-1]])
def test_serve_refuses_a_published_or_weak_secret(setup: Setup, secret: str, says: str) -> None:
    set_secret(setup.config, "web", "secret", secret)
    said = serve_refusal(setup)
    assert said.startswith("Error: web.secret ") and says in said and "postroom init" in said
    assert secret not in said


@pytest.mark.parametrize(("secret", "says"), WEAK)
def test_the_policy_refuses_each_kind_of_weak_secret_and_accepts_generated_ones(
    secret: str, says: str
) -> None:
    from bot.secret_policy import check_secret, generate_secret

    said = check_secret("web.secret", secret, required=True)
    assert said is not None and says in said and said.endswith(".") and secret not in said
    for made in (generate_secret(), secrets.token_urlsafe(32), secrets.token_hex(32)):
        assert check_secret("web.secret", made, required=True) is None


def test_every_value_in_the_example_configuration_is_refused_as_a_secret() -> None:
    """Whatever someone copies from manifests/postroom.example.toml into a secret key is refused."""
    from bot.secret_policy import check_secret

    example = tomllib.loads(EXAMPLE.read_text())
    strings = [v for section in example.values() for v in section.values() if isinstance(v, str) and v]
    strings += re.findall(r'"([^"]{8,})"', EXAMPLE.read_text())  # commented-out values too
    assert len(strings) > 20
    for value in strings:
        assert check_secret("web.secret", value, required=True) is not None, value


def test_serve_refuses_example_webhook_secrets(setup: Setup) -> None:
    from bot.config import load_settings
    from bot.secret_policy import serving_problem

    good = {"secret": secrets.token_urlsafe(32)}
    for key in ("hr.webhook_secret", "campaigns.webhook_secret"):
        section, name = key.split(".")
        for value in (OLD_DEMO_HR, "hr-webhook-secret-0123456789", "k" * 40):
            settings = load_settings(read_file=False, read_env=False, web=good, **{section: {name: value}})
            said = serving_problem(settings)
            assert said is not None and said.startswith(f"{key} ") and value not in said
        fine = load_settings(
            read_file=False, read_env=False, web=good, **{section: {name: secrets.token_urlsafe(32)}}
        )
        assert serving_problem(fine) is None
    set_secret(setup.config, "hr", "webhook_secret", OLD_DEMO_HR)  # and through the command
    assert serve_refusal(setup).startswith("Error: hr.webhook_secret is a value published with Postroom")


def test_a_running_serve_refuses_tokens_made_with_any_string_from_the_source(setup: Setup) -> None:
    """Serve starts with none of them (above); running on a real secret, it refuses every link forged
    with them, for a delivery that exists."""
    from bot.secret_policy import check_secret

    assert all(check_secret("web.secret", value, required=True) for value in FROM_THE_SOURCE)
    relay_port = free_port()
    with setup.config.open("a") as f:
        f.write(f'\n[relay]\nenabled = true\nhost = "127.0.0.1"\nport = {relay_port}\n')
    (setup.folder / "contacts.csv").write_text(CONTACTS)
    assert setup.run("contacts", "import", "contacts.csv", "--list", "customers").returncode == 0
    setup.chat(SAM, "/campaign new spring --to customers --template welcome")
    setup.chat(SAM, "/campaign submit spring")
    setup.chat(MARIA, "/approve spring")
    assert len(setup.smtp.handler.messages) == 3
    base = f"http://127.0.0.1:{setup.web_port}"
    with served(setup):
        for value in FROM_THE_SOURCE:
            forged = Signer(value)
            for path, refused in (
                (f"/u/{forged.sign('ud', '1')}", 400),
                (f"/u/{forged.sign('u', '1', 'lena@example.com')}", 400),  # the old format, forged
                (f"/c/{forged.sign('c', '1', 'https://evil.example/')}", 400),
                (f"/o/{forged.sign('o', '1')}.gif", 400),
                (f"/preview/{forged.sign_expiring('p', '1', ttl_s=3600)}", 403),
            ):
                got = httpx.get(base + path)
                assert got.status_code == refused, (value, path)
                assert "location" not in got.headers
                if path.startswith("/u/"):
                    posted = httpx.post(base + path, content="List-Unsubscribe=One-Click")
                    assert posted.status_code == 400
            with smtplib.SMTP("127.0.0.1", relay_port, timeout=10) as relay:
                relay.ehlo()
                relay.mail("mailer-daemon@example.net")
                code, _ = relay.rcpt(verp_address(forged, 1, "corp.example"))
                assert code == 550
        # The genuine links still work: this is the secret that refused the others.
        received = setup.smtp.handler.to("lena@example.com")[0]
        genuine = received.message["List-Unsubscribe"].split(",")[0].strip(" <>").split("/u/")[1]
        assert httpx.get(f"{base}/u/{genuine}").status_code == 200
        with smtplib.SMTP("127.0.0.1", relay_port, timeout=10) as relay:
            relay.ehlo()
            relay.mail("mailer-daemon@example.net")
            assert relay.rcpt(received.mail_from)[0] == 250
    with sqlite3.connect(setup.db) as conn:
        assert conn.execute("SELECT count(*) FROM suppressions").fetchone() == (0,)


# -- commands that sign nothing run without a secret; those that sign say so -------------------------
def test_chat_and_db_upgrade_run_without_a_secret_and_signing_says_how_to_make_one(setup: Setup) -> None:
    set_secret(setup.config, "web", "secret", None)
    upgraded = setup.run("db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    assert "Created the internal group eng@corp.example" in setup.chat(HR, "/newgroup eng")
    (setup.folder / "contacts.csv").write_text(CONTACTS)
    assert setup.run("contacts", "import", "contacts.csv", "--list", "customers").returncode == 0
    setup.chat(SAM, "/campaign new spring --to customers --template welcome")
    for command in ("/campaign test spring sam@corp.example", "/campaign submit spring"):
        said = setup.chat(SAM, command, refused=True)
        assert "web.secret is not set" in said and "postroom init" in said, said
    assert setup.smtp.handler.messages == [], "no mail with links nobody could verify"
    assert "draft" in setup.chat(SAM, "/campaign status spring")


# -- postroom init --------------------------------------------------------------------------------------
def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [POSTROOM, *args], capture_output=True, text=True, cwd=cwd, env=clean_env(), timeout=60
    )


def test_init_writes_a_private_starter_config_with_generated_secrets(tmp_path: Path) -> None:
    from bot.config import load_settings
    from bot.secret_policy import serving_problem

    done = run(
        [
            "init",
            "--org-name",
            'Acme "Ost" GmbH',
            "--domain",
            "acme.example",
            "--base-url",
            "https://p.acme.example/",
        ],
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    path = tmp_path / "postroom.toml"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    settings = load_settings(path, read_env=False)
    assert settings.org.name == 'Acme "Ost" GmbH' and settings.org.domains == ["acme.example"]
    assert settings.web.base_url == "https://p.acme.example"
    assert settings.campaigns.from_address == "news@acme.example"
    assert serving_problem(settings) is None  # the generated secret is one serve accepts
    commented = re.findall(r'# webhook_secret = "([^"]+)"', path.read_text())
    assert len(commented) == 2 and all(len(v) >= 32 for v in commented)

    first = path.read_text()
    again = run(["init", "--org-name", "Other"], tmp_path)
    assert again.returncode != 0 and "Traceback" not in again.stderr
    assert again.stderr.strip().splitlines() == [
        f"Error: {Path('postroom.toml')} already exists: choose another file with -o, or overwrite it with --force."
    ]
    assert path.read_text() == first
    forced = run(["init", "--force", "-o", "postroom.toml"], tmp_path)
    assert (
        forced.returncode == 0
        and "Fill in org.name, org.domains, org.postal_address, web.base_url" in forced.stdout
    )
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_settings(path, read_env=False).web.secret != settings.web.secret
    other = tmp_path / "elsewhere.toml"
    assert run(["init", "-o", str(other)], tmp_path).returncode == 0 and other.exists()


def test_init_refuses_bad_options_with_one_sentence(tmp_path: Path) -> None:
    for args, says in (
        (["--base-url", "postroom.acme.example"], "--base-url"),
        (["--domain", "not a domain"], "--domain"),
    ):
        done = run(["init", *args], tmp_path)
        assert done.returncode != 0 and says in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "postroom.toml").exists()


# -- the demo's own secrets -----------------------------------------------------------------------------
@pytest.mark.xdist_group("demo-ports")  # prepare() tries 8080 and 2525 by binding them: beside the real demos
def test_the_demo_makes_its_secrets_once_keeps_them_private_and_fresh_renews_them(tmp_path: Path) -> None:
    from bot import demo
    from bot.secret_policy import serving_problem

    first = demo.prepare(tmp_path / "d").settings
    files = list((tmp_path / "d").glob("*secret*"))
    assert len(files) == 1 and stat.S_IMODE(files[0].stat().st_mode) == 0o600
    assert serving_problem(first) is None
    assert first.web.secret not in (OLD_DEMO, OLD_DEFAULT) and first.hr.webhook_secret != OLD_DEMO_HR
    again = demo.prepare(tmp_path / "d").settings
    assert (again.web.secret, again.hr.webhook_secret) == (first.web.secret, first.hr.webhook_secret)
    fresh = demo.prepare(tmp_path / "d", fresh=True).settings
    assert fresh.web.secret != first.web.secret and fresh.hr.webhook_secret != first.hr.webhook_secret
    assert demo.prepare(tmp_path / "other").settings.web.secret != fresh.web.secret


# -- configuration errors never echo a secret -----------------------------------------------------------
@pytest.mark.parametrize(
    ("toml", "env", "key", "value"),
    [
        ('[web]\nsecret = "shortSECRET1"\n', {}, "web.secret", "shortSECRET1"),
        ('[hr]\nwebhook_secret = "tinyHR7"\n', {}, "hr.webhook_secret", "tinyHR7"),
        (
            '[wecom]\ncorp_id = "ww1"\nencoding_aes_key = "aesKEY-too-short"\n',
            {},
            "wecom.encoding_aes_key",
            "aesKEY-too-short",
        ),
        ("[smtp]\npassword = 73914285\n", {}, "smtp.password", "73914285"),
        ("", {"POSTROOM_WEB__SECRET": "envSECRET42"}, "web.secret", "envSECRET42"),
    ],
)
def test_a_configuration_error_names_a_secret_key_but_never_its_value(
    tmp_path: Path, toml: str, env: dict[str, str], key: str, value: str
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
    assert done.returncode != 0 and done.stderr.count("\n") == 1, done.stderr
    assert key in done.stderr and value not in done.stderr


def test_every_doc_and_message_states_the_one_secret_length_rule() -> None:
    """The rule is the policy's (MIN_LENGTH); no doc or configuration message says another length."""
    from bot.config import ConfigError, load_settings
    from bot.secret_policy import MIN_LENGTH, check_secret

    root = Path(__file__).parents[1]
    docs = [root / "README.md", EXAMPLE, *sorted((root / "docs").glob("*.md"))]
    for doc in docs:
        for line in doc.read_text().splitlines():
            if "secret" in line.lower():
                lengths = re.findall(
                    r"(\d+)\+? (?:random )?characters|(\d+)\+ random|< ?(\d+) characters", line
                )
                for found in lengths:
                    assert str(MIN_LENGTH) in found, f"{doc.name}: {line.strip()}"
    assert f"{MIN_LENGTH} or more random" in (root / "docs" / "hr-webhook.md").read_text()
    for section, key in (("web", "secret"), ("hr", "webhook_secret")):
        with pytest.raises(ConfigError) as caught:
            load_settings(read_file=False, read_env=False, **{section: {key: "tinyHR7x"}})
        assert f"must be {MIN_LENGTH} or more random characters" in str(caught.value)
    said = check_secret("hr.webhook_secret", "q7Xz" * 6, required=False)
    assert said is not None and f"shorter than {MIN_LENGTH} characters" in said


# -- the messengers' credentials and the passwords: none from the source, no placeholder --------------
PUBLISHED_CREDENTIALS = [
    ("slack", "signing_secret", "test-signing-secret-3f9a1c"),  # tests/slack_fake.py
    ("wecom", "token", "123456"),  # wechatpy's public test vectors (tests/test_wecom.py)
    ("wecom", "encoding_aes_key", AES_KEY),
]


@pytest.mark.parametrize(("section", "key", "value"), PUBLISHED_CREDENTIALS)
def test_serve_refuses_a_published_messenger_credential(
    setup: Setup, section: str, key: str, value: str
) -> None:
    set_secret(setup.config, section, key, value)
    said = serve_refusal(setup)
    assert said.startswith(f"Error: {section}.{key} ") and value not in said, said
    assert not setup.db.exists()


def test_the_policy_judges_every_credential_and_password_serve_uses() -> None:
    """Each platform credential: refused when from the source, a placeholder, far too short or repeated;
    a real-looking one passes. Passwords: only a string from our source is refused."""
    from bot.config import load_settings
    from bot.secret_policy import ISSUED, PASSWORDS, credential_problem, serving_problem

    real = {
        "slack.signing_secret": secrets.token_hex(16),
        "slack.bot_token": f"xoxb-{secrets.randbelow(10**12)}-{secrets.randbelow(10**13)}-{secrets.token_urlsafe(18)}",
        "slack.app_token": f"xapp-1-A0{secrets.randbelow(10**9)}-{secrets.randbelow(10**13)}-{secrets.token_hex(32)}",
        "wecom.token": secrets.token_hex(8),
        "wecom.encoding_aes_key": secrets.token_urlsafe(33)[:43],
        "wecom.secret": secrets.token_urlsafe(32),
        "dingtalk.client_secret": secrets.token_urlsafe(48),
        "providers.microsoft.client_secret": secrets.token_urlsafe(30),
        "providers.wecom.secret": secrets.token_urlsafe(32),
        "email_events.mailgun.signing_key": secrets.token_hex(16),
    }
    assert set(real) == {key for key, _, _ in ISSUED}
    for key, shortest, _ in ISSUED:
        assert credential_problem(key, real[key]) is None, key
        for bad, says in (
            (AES_KEY, "Postroom's own source"),
            ("my-wecom-secret-value-for-corp-2026-xyzabcd", "placeholder"),
            (secrets.token_hex(shortest)[: shortest - 1], "shorter than"),
            (("ab" * 30)[:43], "predictable"),
        ):
            if key == "wecom.encoding_aes_key" and len(bad) != 43:
                continue  # loading refuses any other length already
            said = credential_problem(key, bad)
            assert said is not None and said.startswith(f"{key} ") and says in said and bad not in said, (
                key,
                bad,
            )
    for key in PASSWORDS:
        for fine in ("hunter" + secrets.token_hex(2), "pw" + secrets.token_hex(3), secrets.token_urlsafe(9)):
            assert credential_problem(key, fine) is None, (key, fine)
        for published in ("ding-secret", "app-secret", OLD_DEMO):
            said = credential_problem(key, published)
            assert said is not None and "Postroom's own source" in said and published not in said
    good = {"secret": secrets.token_urlsafe(32)}
    settings = load_settings(read_file=False, read_env=False, web=good, smtp={"password": "app-secret"})
    assert (serving_problem(settings) or "").startswith("smtp.password appears in Postroom's own source")
