"""DKIM: every message Postroom sends — campaigns, automations, test sends, group mail — is signed with the
key of its domain and verifies with dkimpy (an independent verifier); a bad key is one sentence at start;
`postroom dkim keygen` writes the key (0600) and prints the record that verifies it."""

from __future__ import annotations

import stat
from pathlib import Path

import aiosmtplib
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.app import Runtime, build_app
from bot.cli import main
from bot.config import ConfigError
from bot.hr.importer import import_staff
from bot.mail.compose import build_message
from bot.mail.dkim import DkimSigner, KeyProblem, load_key, parse_key
from tests.audience_kit import make_bot, wait_for_mail  # noqa: F401
from tests.conftest import APPROVER, SENDER, make_settings
from tests.dkim_kit import DOMAIN, Keys, verified
from tests.group_mail_kit import fanned_out
from tests.lifecycle_kit import lifecycle_bot
from tests.smtp import free_port

CONSENT = '--consent "Said yes at the booth"'


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    k = Keys(tmp_path / "dkim")
    k.make("pr2026")  # RSA-2048
    k.make("ed2026", "ed25519")
    return k


def message(
    subject: str = "Hello", text: str = "Hi there.\n", from_address: str = "news@corp.example"
) -> bytes:
    return build_message(
        from_name="Example Corp",
        from_address=from_address,
        to_name="Lena Fischer",
        to_address="lena@example.com",
        subject=subject,
        text=text,
        html="<p>Hi there.</p>",
        message_id="<1.abc@corp.example>",
        headers=[
            ("List-Unsubscribe", "<https://postroom.corp.example/u/abc>, <mailto:unsubscribe@corp.example>"),
            ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
        ],
    )


def signer(keys: Keys, *selectors: str) -> DkimSigner:
    return DkimSigner(
        load_key(domain=DOMAIN, selector=s, key_file=str(keys.files[s])) for s in selectors or keys.files
    )


# -- the signature itself ------------------------------------------------------------------------
def test_rsa_and_ed25519_signatures_verify_and_cover_the_listed_headers(keys: Keys) -> None:
    signed = signer(keys).sign(message())
    assert verified(signed, keys) == [
        (DOMAIN, "pr2026", "rsa-sha256"),
        (DOMAIN, "ed2026", "ed25519-sha256"),
    ]
    head = signed.split(b"\r\n\r\n", 1)[0].decode()
    h = head.split("h=", 1)[1].split(";", 1)[0].replace("\r\n\t", "")
    assert h.split(":") == [
        "from",
        "to",
        "subject",
        "date",
        "message-id",
        "list-unsubscribe",
        "list-unsubscribe-post",
        "from",  # sealed: a From added later breaks it
    ]
    assert "c=relaxed/relaxed" in head
    signature_lines = head.split("\r\nFrom: ", 1)[0].split("\r\n")
    assert len(signature_lines) > 8 and all(len(line) <= 78 for line in signature_lines), head


@pytest.mark.parametrize(
    "change",
    [
        lambda m: m.replace(b"Subject: Hello", b"Subject: Hellp"),
        lambda m: m.replace(b"Hi there.", b"Hi therE.", 1),
        lambda m: m.replace(b"List-Unsubscribe: <https://postroom", b"List-Unsubscribe: <https://evil"),
        lambda m: m.replace(b"\r\nFrom: ", b"\r\nFrom: Boss <boss@corp.example>\r\nFrom: ", 1),
    ],
    ids=["subject", "body", "list-unsubscribe", "added-from"],
)
def test_a_changed_message_no_longer_verifies(keys: Keys, change) -> None:  # type: ignore[no-untyped-def]
    signed = signer(keys, "pr2026").sign(message())
    assert verified(signed, keys)
    with pytest.raises(AssertionError, match="does not verify"):
        verified(change(signed), keys)


def test_relaxed_canonicalisation_survives_refolding_and_trailing_space(keys: Keys) -> None:
    signed = signer(keys).sign(message(text="Line one  \n\twith tabs\n\n\n"))
    refolded = signed.replace(b"\r\nSubject: Hello", b"\r\nSubject:   Hello\r\n  ") + b"\r\n\r\n"
    assert len(verified(refolded, keys)) == 2


def test_only_the_headers_present_are_signed_and_a_bare_lf_message_is_signed_as_sent(keys: Keys) -> None:
    data = b"From: Alice <alice@corp.example>\nSubject: plain\n\nBody\n"
    signed = signer(keys, "ed2026").sign(data)
    assert b"\r\nFrom: Alice" in signed and b"\n" not in signed.replace(b"\r\n", b"")
    assert b"h=from:subject:from;" in signed
    assert verified(signed, keys) == [(DOMAIN, "ed2026", "ed25519-sha256")]


def test_the_key_is_chosen_by_the_from_domain_then_its_parent_then_the_sender(keys: Keys) -> None:
    s = signer(keys, "pr2026")
    sub = s.sign(message(from_address="news@mail.corp.example"))
    assert verified(sub, keys) == [(DOMAIN, "pr2026", "rsa-sha256")]  # aligned (relaxed) with the parent
    foreign = message(from_address="news@other.example")
    assert s.sign(foreign) == foreign  # no key: as it came
    relayed = b"Sender: eng@corp.example\r\nFrom: Pat <pat@partner.example>\r\nSubject: x\r\n\r\nhi\r\n"
    assert verified(s.sign(relayed), keys) == [(DOMAIN, "pr2026", "rsa-sha256")]
    assert s.sign(b"no header block at all") == b"no header block at all"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    subject=st.text(st.characters(blacklist_categories=("Cs",)), max_size=120),
    name=st.text(st.characters(blacklist_categories=("Cs",)), max_size=60),
    text=st.text(st.characters(blacklist_categories=("Cs",)), max_size=400),
)
def test_any_subject_name_and_body_verifies(keys: Keys, subject: str, name: str, text: str) -> None:
    data = build_message(
        from_name=name or None,
        from_address="news@corp.example",
        to_name=name or None,
        to_address="x@example.com",
        subject=subject,
        text=text,
        html=f"<p>{text}</p>",
        message_id="<2.x@corp.example>",
    )
    assert len(verified(signer(keys).sign(data), keys)) == 2


# -- every message the engine sends ----------------------------------------------------------------
async def test_every_campaign_automation_and_test_message_verifies(make_bot, smtp, keys: Keys) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    bot = await make_bot(dkim=keys.section("pr2026", "ed2026"))
    reply = await bot.say(SENDER, "/campaign new spring --to customers --template welcome")
    assert "Draft campaign" in reply, reply
    reply = await bot.say(SENDER, f"/campaign test spring {SENDER}")
    assert "[TEST]" in reply, reply
    assert "Submitted" in await bot.say(SENDER, "/campaign submit spring")
    assert "Approved" in await bot.say(APPROVER, "/approve spring")
    await bot.settle()
    for email in ("lena@example.com", "raj@example.net", "kim@example.org"):
        await wait_for_mail(smtp, email)

    reply = await bot.say(SENDER, "/automation new welcome --on confirmed:customers --template welcome")
    assert "Draft automation" in reply, reply
    assert "Submitted automation" in await bot.say(SENDER, "/automation submit welcome")
    assert "Approved" in await bot.say(APPROVER, "/approve automation:welcome")
    await bot.settle()
    await bot.say(SENDER, f"/contacts add ann@example.com --list customers {CONSENT}")
    await bot.settle()
    await wait_for_mail(smtp, "ann@example.com")

    sent = smtp.messages
    assert len(sent) >= 5
    for received in sent:
        assert verified(received.data, keys) == [
            (DOMAIN, "pr2026", "rsa-sha256"),
            (DOMAIN, "ed2026", "ed25519-sha256"),
        ], received.rcpt_tos


async def test_group_mail_copies_verify(database_url, smtp, tmp_path: Path, keys: Keys) -> None:  # type: ignore[no-untyped-def]
    staff = tmp_path / "staff.csv"
    staff.write_text(
        "employee_id,email,name,department,location\n"
        "E1,alice@corp.example,Alice,Engineering,Berlin\n"
        "E2,bob@corp.example,Bob,Engineering,Shanghai\n"
    )
    port = free_port()
    async for bot in lifecycle_bot(
        database_url,
        smtp.port,
        tmp_path,
        relay={"enabled": True, "host": "127.0.0.1", "port": port},
        dkim={**keys.section("pr2026"), "signing_processes": 1},  # RSA signed in another process
    ):
        runtime = Runtime(bot.app)
        await runtime.start_services()
        try:
            await import_staff(bot.app.lifecycle, staff)
            body = "Ship it.\n" + "A long line of text " * 40 + "\n"
            raw = (
                "From: Alice <alice@corp.example>\r\nTo: eng@corp.example\r\nSubject: Release\r\n"
                f"Message-ID: <r1@corp.example>\r\n\r\n{body}"
            )
            await aiosmtplib.send(
                raw.encode(),
                sender="alice@corp.example",
                recipients=["eng@corp.example"],
                hostname="127.0.0.1",
                port=port,
            )
            await fanned_out(bot.app)
        finally:
            await runtime.stop_services()
    copies = smtp.messages
    assert sorted(r for m in copies for r in m.rcpt_tos) == ["alice@corp.example", "bob@corp.example"]
    for received in copies:
        assert verified(received.data, keys) == [(DOMAIN, "pr2026", "rsa-sha256")]


# -- keys: at start, one sentence ------------------------------------------------------------------
def _settings(tmp_path: Path, database_url: str, smtp_port: int, **key: str):  # type: ignore[no-untyped-def]
    return make_settings(
        database_url, smtp_port, tmp_path, dkim={"keys": [{"domain": DOMAIN, "selector": "s1", **key}]}
    )


def _public_pem(path: Path) -> bytes:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing", "does not exist; make it with postroom dkim keygen corp.example s1"),
        ("folder", "is a folder, not a key file"),
        ("under-a-file", "can't be read: Not a directory"),
        ("empty", "is empty: write a private key there"),
        ("public", "is not a private key in PEM form"),
        ("garbage", "is not a private key in PEM form"),
        ("encrypted", "is encrypted with a passphrase"),
        ("mismatch", "is an rsa-sha256 key, but the settings say algorithm = 'ed25519-sha256'"),
        ("unset-env", "is to come from $POSTROOM_TEST_DKIM_UNSET, which is not set"),
    ],
)
async def test_a_bad_key_is_one_sentence_at_start(
    tmp_path: Path, keys: Keys, case: str, expected: str, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    rsa_file = keys.files["pr2026"]
    target = tmp_path / "key.pem"
    key: dict[str, str] = {"key_file": str(target)}
    if case == "folder":
        target.mkdir()
    elif case == "under-a-file":
        key = {"key_file": str(rsa_file / "key.pem")}
    elif case == "empty":
        target.write_text("\n")
    elif case == "public":
        target.write_bytes(_public_pem(rsa_file))
    elif case == "garbage":
        target.write_text("v=DKIM1; k=rsa; p=MIIBIjANBg")
    elif case == "encrypted":
        private = serialization.load_pem_private_key(rsa_file.read_bytes(), password=None)
        target.write_bytes(
            private.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"passphrase"),
            )
        )
    elif case == "mismatch":
        key = {"key_file": str(rsa_file), "algorithm": "ed25519-sha256"}
    elif case == "unset-env":
        monkeypatch.delenv("POSTROOM_TEST_DKIM_UNSET", raising=False)
        key = {"key_env": "POSTROOM_TEST_DKIM_UNSET"}
    settings = _settings(tmp_path, "sqlite+aiosqlite:///" + str(tmp_path / "x.db"), 2525, **key)
    with pytest.raises(ConfigError) as caught:
        await build_app(settings)
    sentence = str(caught.value)
    assert expected in sentence, sentence
    assert sentence.count("\n") == 0 and "BEGIN" not in sentence
    assert not (tmp_path / "x.db").exists()  # refused before anything opened


def test_a_key_from_the_environment_signs(keys: Keys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    pem = keys.files["ed2026"].read_text()
    monkeypatch.setenv("POSTROOM_TEST_DKIM", pem.replace("\n", "\\n"))  # how env files often hold it
    key = load_key(domain=DOMAIN, selector="ed2026", key_env="POSTROOM_TEST_DKIM")
    assert verified(DkimSigner([key]).sign(message()), keys) == [(DOMAIN, "ed2026", "ed25519-sha256")]


# A 768-bit RSA key (openssl genrsa 768): cryptography makes none so short, other tools do.
SHORT_RSA = """\
-----BEGIN PRIVATE KEY-----
MIIB5QIBADANBgkqhkiG9w0BAQEFAASCAc8wggHLAgEAAmEAy9J2B2kbOVxMmEr7
xS7DJ0XtbZ4Ou11rLZaGLAzya+WmZFeslsE+hvfQFuw23BdJzY5zZWDxUTgLjE5j
taSQAsfevqIF4uJ52W88kO6rWmio/GLKvRSHhqldy8u82p5HAgMBAAECYCwJvRa8
zvUFzEbbbKqd/+xsX3Bfxi8VcCLZcwPxiC9n3xuvFcs81ZWz1XIed3v2S8k2Jnp7
BQnfRnsKTkWXx98tJhaikENerJmdN3M8S1/Vda6zW86enV1ZlHtKEKYoAQIxAOeC
pTsQgIC+obLn9O18FIaIBe8wcnRdT0fvH9xi20CbMQ5JQ0cGi13TjcDAb4XuwQIx
AOFiAxboBka0tN8r1S8G+TCpC10HAGCnluShpc8XQ5Z2ArPLPMt9IrRsxrLYLO3X
BwIxAOCulpWAKnbIjD4JiFeDeJgoIzpEFpCAjpUNqipFdux4sV9gEv83hsKEsqpD
GPkvAQIwLX+JvCAO1Es6kCrbGGlB+M7HWnpFWz25umHfhRTfMgqUtRL8LOAQF3g2
DHiTaVgVAjEAtcdaV7OuoI08/GhtO13Mj3CwWN1b2ZVnrO5WLHOZpyNyuIeRfzev
wC7+fsjZbZWQ
-----END PRIVATE KEY-----
"""


def test_a_short_rsa_key_is_refused() -> None:
    with pytest.raises(KeyProblem, match="is a 768-bit RSA key, which receivers ignore; make a 2048-bit one"):
        parse_key(SHORT_RSA.encode(), domain=DOMAIN, selector="old", where="key_file old.pem")


def test_postroom_chat_with_a_bad_key_prints_one_sentence(tmp_path: Path) -> None:
    config = tmp_path / "postroom.toml"
    config.write_text(
        f'[database]\nurl = "sqlite+aiosqlite:///{tmp_path / "p.db"}"\n'
        '[org]\nname = "Example Corp"\ndomains = ["corp.example"]\npostal_address = "1 Example Street, Berlin"\n'
        f'[[dkim.keys]]\ndomain = "corp.example"\nselector = "s1"\nkey_file = "{tmp_path / "nope.pem"}"\n'
    )
    result = CliRunner().invoke(main, ["--config", str(config), "chat", "--as", "a@corp.example", "/help"])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert result.output.strip().splitlines() == [
        f"Error: The DKIM key file {tmp_path / 'nope.pem'} for corp.example (selector s1) does not exist; "
        f"make it with postroom dkim keygen corp.example s1 --out {tmp_path / 'nope.pem'}."
    ]


# -- postroom dkim keygen --------------------------------------------------------------------------
def test_keygen_writes_a_0600_key_whose_printed_record_verifies(tmp_path: Path) -> None:
    keys = Keys(tmp_path / "k")
    path = keys.make("news1")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert parse_key(path.read_bytes(), domain=DOMAIN, selector="news1", where="t").bits == 2048
    record = keys.records["news1._domainkey.corp.example"]
    assert record.startswith(b"v=DKIM1; k=rsa; p=MII")
    assert verified(signer(keys, "news1").sign(message()), keys) == [(DOMAIN, "news1", "rsa-sha256")]

    runner = CliRunner()
    again = runner.invoke(main, ["dkim", "keygen", DOMAIN, "news1", "--out", str(path)])
    assert again.exit_code == 1 and "exists; give --force" in again.output
    before = path.read_bytes()
    assert path.read_bytes() == before
    for args, said in (
        (["corp", "s1"], "'corp' is not a mail domain like corp.example."),
        ([DOMAIN, "bad selector"], "'bad selector' is not a DKIM selector"),
        ([DOMAIN, "s1", "--bits", "512"], "Invalid value for '--bits'"),
    ):
        result = runner.invoke(main, ["dkim", "keygen", *args, "--out", str(tmp_path / "other.pem")])
        assert result.exit_code != 0 and said in result.output and "Traceback" not in result.output
        assert not (tmp_path / "other.pem").exists()


async def test_serve_names_the_keys_in_force(tmp_path: Path, keys: Keys) -> None:
    from bot.cli import startup_lines

    settings = make_settings(
        "sqlite+aiosqlite:///" + str(tmp_path / "s.db"), 2525, tmp_path, dkim=keys.section("pr2026", "ed2026")
    )
    app = await build_app(settings)
    try:
        lines = startup_lines(settings, Runtime(app))
    finally:
        await app.close()
    assert (
        "DKIM signing: corp.example (s=pr2026, rsa-sha256, 2048 bits), corp.example (s=ed2026, ed25519-sha256)"
        in lines
    )
    assert not any("no key for" in line for line in lines)


async def test_rsa_signatures_made_in_signing_processes_verify(keys: Keys) -> None:
    import asyncio

    from bot.mail.dkim import SigningPool

    s = signer(keys)  # RSA and Ed25519: the RSA one is made in another process, the Ed25519 one here
    s.pool = SigningPool(s.keys, 2)
    try:
        signed = await asyncio.gather(*(s.sign_async(message(subject=f"n{i}")) for i in range(30)))
    finally:
        s.pool.close()
    for data in signed:
        assert verified(data, keys) == [
            (DOMAIN, "pr2026", "rsa-sha256"),
            (DOMAIN, "ed2026", "ed25519-sha256"),
        ]
    assert len({d.split(b"b=", 2)[1][:40] for d in signed}) == 30  # each message its own signature
