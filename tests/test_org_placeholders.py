"""No example organisation reaches real mail: until org.name, org.domains and org.postal_address are set,
[org] holds obvious placeholders, and `postroom serve` and `postroom chat` refuse to start with one
sentence naming the keys and the `postroom init` that writes them. The values are checked the same way
in the file and on init's command line."""

from __future__ import annotations

import re
import secrets
import subprocess
import tomllib
from pathlib import Path

import pytest

from bot.config import ConfigError, load_settings, org_problem
from tests.conftest import HR
from tests.smtp import free_port
from tests.test_cli import POSTROOM, clean_env

EXAMPLE = Path(__file__).parents[1] / "manifests" / "postroom.example.toml"
INIT = "`postroom init --org-name … --domain … --postal-address …`"


def postroom(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [POSTROOM, *args], capture_output=True, text=True, cwd=cwd, env=clean_env(), timeout=60
    )


def base_config(folder: Path, org: str) -> Path:
    config = folder / "postroom.toml"
    config.write_text(
        f'[database]\nurl = "sqlite+aiosqlite:///{folder / "x.db"}"\n'
        f'[web]\nport = {free_port()}\nsecret = "{secrets.token_urlsafe(32)}"\n' + org
    )
    return config


def refusal(folder: Path, config: Path, command: str) -> str:
    args = ["serve"] if command == "serve" else ["chat", "--as", HR, "/help"]
    done = postroom(folder, "--config", str(config), *args)
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr
    assert done.stdout == "", "nothing ran"
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and lines[0].endswith("."), done.stderr
    assert f"postroom {command} won't start while " in lines[0] and INIT in lines[0]
    return lines[0]


def example_org() -> str:
    text = EXAMPLE.read_text()
    section = text[text.index("[org]\n") : text.index("\n[", text.index("[org]\n"))]
    return section + "\n"


@pytest.mark.parametrize("command", ["serve", "chat"])
def test_serve_and_chat_refuse_without_org(tmp_path: Path, command: str) -> None:
    said = refusal(tmp_path, base_config(tmp_path, ""), command)
    assert "org.name, org.domains, org.postal_address are unset" in said


@pytest.mark.parametrize("command", ["serve", "chat"])
def test_serve_and_chat_refuse_the_example_files_org(tmp_path: Path, command: str) -> None:
    org = example_org()
    assert tomllib.loads(org)["org"]["name"] == "Your Organisation"  # the section was copied whole
    said = refusal(tmp_path, base_config(tmp_path, org), command)
    assert "org.name, org.domains, org.postal_address are unset" in said


@pytest.mark.parametrize("command", ["serve", "chat"])
def test_serve_and_chat_refuse_a_missing_postal_address(tmp_path: Path, command: str) -> None:
    config = base_config(tmp_path, '[org]\nname = "Acme GmbH"\ndomains = ["acme.example"]\n')
    said = refusal(tmp_path, config, command)
    assert "while org.postal_address is unset" in said and "org.name" not in said


@pytest.mark.parametrize("command", ["serve", "chat"])
def test_serve_and_chat_refuse_inits_commented_org(tmp_path: Path, command: str) -> None:
    done = postroom(tmp_path, "init")
    assert done.returncode == 0, done.stderr
    assert "postroom serve and postroom chat refuse to start without" in done.stdout
    config = tmp_path / "postroom.toml"
    assert re.search(r"^# name = ", config.read_text(), re.M)  # [org] is there, commented out
    said = refusal(tmp_path, config, command)
    assert "org.name, org.domains, org.postal_address are unset" in said


def test_a_configured_org_starts_chat(tmp_path: Path) -> None:
    config = base_config(
        tmp_path,
        '[org]\nname = "Acme GmbH"\ndomains = ["acme.example"]\npostal_address = "Hauptstraße 1, Berlin"\n',
    )
    done = postroom(tmp_path, "--config", str(config), "chat", "--as", HR, "/help")
    assert done.returncode == 0 and "/groups" in done.stdout, done.stderr


def test_defaults_are_placeholders_that_org_problem_names() -> None:
    s = load_settings(read_file=False, read_env=False)
    assert (s.org.name, s.org.domains, s.org.postal_address) == (
        "Your Organisation",
        ["your-company.example"],
        "Your street, postcode and city",
    )
    assert s.campaigns.from_name == "Your Organisation"  # derived, so serve refuses it with the rest
    said = org_problem(s, "serve")
    assert said is not None and said.startswith("postroom serve won't start while org.name, org.domains")
    fine = load_settings(
        read_file=False,
        read_env=False,
        org={"name": " Acme ", "domains": ["acme.example"], "postal_address": "Hauptstraße 1"},
    )
    assert fine.org.name == "Acme" and org_problem(fine, "serve") is None


@pytest.mark.parametrize(
    ("org", "says"),
    [
        ({"name": "   "}, "org.name (or $POSTROOM_ORG__NAME) must not be empty"),
        ({"name": "Acme\x00GmbH"}, "org.name (or $POSTROOM_ORG__NAME) must not contain control"),
        ({"name": "Acme \u202egnp"}, "must not contain control or text-direction characters (it has U+202E)"),
        ({"name": "A" * 201}, "org.name (or $POSTROOM_ORG__NAME) must be at most 200 characters"),
        ({"postal_address": ""}, "org.postal_address (or $POSTROOM_ORG__POSTAL_ADDRESS) must not be empty"),
        ({"postal_address": "Street 1\x0bBerlin"}, "must not contain control"),
        ({"postal_address": "x" * 501}, "must be at most 500 characters"),
        ({"domains": ["acme"]}, "'acme' is not a mail domain like acme.com"),
        ({"domains": ["acme.example, evil.example"]}, "is not a mail domain"),
        ({"domains": ["acme..example"]}, "'acme..example' is not a mail domain"),
        ({"domains": ["a_b.example"]}, "'a_b.example' is not a mail domain"),
        # Tryout: gmail.com in org.domains was accepted: every Gmail user would count as staff.
        ({"domains": ["corp.example", "gmail.com"]}, "'gmail.com' is a public mailbox provider's domain"),
        ({"domains": ["QQ.com"]}, "'qq.com' is a public mailbox provider's domain"),
        # Tryout: an IP address was taken as a company domain (alice@10.0.0.1 counted as staff).
        (
            {"domains": ["corp.example", "10.0.0.1"]},
            "org.domains (or $POSTROOM_ORG__DOMAINS) '10.0.0.1' is an IP",
        ),
        ({"domains": ["[10.0.0.1]"]}, "'[10.0.0.1]' is an IP address, not a mail domain"),
        ({"domains": ["[IPv6:2001:db8::1]"]}, "'[ipv6:2001:db8::1]' is an IP address, not a mail domain"),
        ({"domains": ["10.0.0.256"]}, "'10.0.0.256' ends in a number"),
        ({"domains": ["127.1"]}, "'127.1' ends in a number"),
    ],
)
def test_bad_org_values_are_a_configuration_error(org: dict[str, object], says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(read_file=False, read_env=False, org=org)
    assert says in str(caught.value)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--org-name", "Acme\x07GmbH"], "Invalid value for --org-name: must not contain control"),
        (["--org-name", "Acme \u202eHmbG"], "Invalid value for --org-name: must not contain control"),
        (["--org-name", "  "], "Invalid value for --org-name: must not be empty."),
        (["--org-name", "A" * 201], "--org-name: must be at most 200 characters"),
        (["--org-name", "Your Organisation"], "--org-name: must be your organisation's own"),
        (
            ["--postal-address", "Street\x1b[2J 1"],
            "Invalid value for --postal-address: must not contain control",
        ),
        (["--postal-address", "x" * 501], "--postal-address: must be at most 500 characters"),
        (["--domain", "your-company.example"], "is the placeholder"),
        (["--domain", "acme.example\x7f"], "is not a mail domain"),
        # New-user tryout: these were written to org.domains with exit 0.
        (["--domain", "acme..example"], "'acme..example' is not a mail domain"),
        (["--domain", "-x.example"], "'-x.example' is not a mail domain"),
        (["--domain", "*.acme.example"], "'*.acme.example' is not a mail domain"),
        (["--domain", "corp.example", "--domain", "outlook.com"], "is a public mailbox provider's domain"),
        (["--domain", "192.168.1.10"], "'192.168.1.10' is an IP address, not a mail domain"),
    ],
)
def test_init_refuses_bad_org_values_and_writes_nothing(tmp_path: Path, args: list[str], says: str) -> None:
    done = postroom(tmp_path, "init", *args)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert says in done.stderr.strip().splitlines()[-1], done.stderr
    assert list(tmp_path.iterdir()) == []


def test_init_with_every_org_value_starts_and_says_what_to_set_next(tmp_path: Path) -> None:
    done = postroom(
        tmp_path,
        "init",
        "--org-name",
        " Acme GmbH ",
        "--domain",
        "@Acme.example",
        "--postal-address",
        "Hauptstraße 1, 10115 Berlin",
    )
    assert done.returncode == 0, done.stderr
    assert "Fill in web.base_url, then [smtp] (your mail server) and [roles]" in done.stdout
    assert "refuse to start" not in done.stdout
    config = tmp_path / "postroom.toml"
    settings = load_settings(config, read_env=False)
    assert (settings.org.name, settings.org.domains) == ("Acme GmbH", ["acme.example"])
    assert org_problem(settings, "serve") is None
    chat = postroom(tmp_path, "--config", str(config), "chat", "--as", "hr@acme.example", "/help")
    assert chat.returncode == 0, chat.stderr


def test_serve_refuses_the_example_domain_left_in_web_and_roles(tmp_path: Path) -> None:
    """Copying the example config and changing only [org] leaked https://postroom.corp.example into
    List-Unsubscribe, and roles named @corp.example people outside the company without a word."""
    text = EXAMPLE.read_text()
    org = 'name = "Acme GmbH"\ndomains = ["acme.example"]\npostal_address = "Hauptstraße 1, Berlin"\n'
    start = text.index("[org]\n") + len("[org]\n")
    text = text[:start] + org + text[text.index("\n[", start) :]
    text = re.sub(r"(?m)^url = .*$", f'url = "sqlite+aiosqlite:///{tmp_path / "x.db"}"', text, count=1)
    text = re.sub(
        r"(?m)^# ?secret = .*$|^secret = .*$", f'secret = "{secrets.token_urlsafe(32)}"', text, count=1
    )
    config = tmp_path / "postroom.toml"
    config.write_text(text)
    settings = load_settings(config, read_env=False)
    assert settings.org.domains == ["acme.example"] and "corp.example" in settings.web.base_url
    done = postroom(tmp_path, "--config", str(config), "serve")
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: postroom serve won't start while "), done.stderr
    assert (
        "web.base_url (https://postroom.corp.example)" in lines[0]
        and "roles.hr (hannah@corp.example)" in lines[0]
    )
    assert "still on the example domain corp.example, which is not in org.domains (acme.example)" in lines[0]


@pytest.mark.parametrize("command", ["serve", "chat"])
def test_serve_and_chat_refuse_a_public_mailbox_domain_in_org_domains(tmp_path: Path, command: str) -> None:
    from bot.config import PUBLIC_MAILBOX_DOMAINS

    assert {"gmail.com", "outlook.com", "hotmail.com", "yahoo.com", "icloud.com", "qq.com", "163.com"} <= (
        PUBLIC_MAILBOX_DOMAINS
    )
    config = base_config(
        tmp_path,
        '[org]\nname = "Acme GmbH"\ndomains = ["corp.example", "gmail.com"]\npostal_address = "Hauptstraße 1"\n',
    )
    args = ["serve"] if command == "serve" else ["chat", "--as", HR, "/help"]
    done = postroom(tmp_path, "--config", str(config), *args)
    lines = done.stderr.strip().splitlines()
    assert done.returncode != 0 and len(lines) == 1 and done.stdout == "", done.stderr
    assert "org.domains" in lines[0] and "'gmail.com' is a public mailbox provider's domain" in lines[0]


ORG = (
    '[org]\nname = "Acme GmbH"\ndomains = ["acme.example"]\npostal_address = "Acme GmbH, 1 Main St, Berlin"\n'
)


def test_serve_refuses_campaign_addresses_at_a_public_mailbox_provider(tmp_path: Path) -> None:
    """New-user tryout: POSTROOM_CAMPAIGNS__FROM_ADDRESS=news@gmail.com started serve, printing
    Return-Path bounces+…@gmail.com and mailto:unsubscribe@gmail.com: bounces with their tokens and the
    unsubscribes would have gone to a stranger's mailbox."""
    config = base_config(tmp_path, ORG + '[campaigns]\nfrom_address = "news@gmail.com"\n')
    done = postroom(tmp_path, "--config", str(config), "serve")
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip() == (
        "Error: postroom serve won't start with campaigns.from_address news@gmail.com at gmail.com, a public "
        "mailbox provider: bounces and unsubscribe mail would go to a mailbox there, not the company's. Use "
        "an address on your own domain (acme.example)."
    ), done.stderr


def test_a_sending_domain_of_its_own_is_allowed_and_named_at_start() -> None:
    from bot.config import sender_problem, sender_warnings

    own = load_settings(
        read_file=False,
        read_env=False,
        org={"domains": ["acme.example"]},
        campaigns={"from_address": "n@acme.example"},
    )
    assert sender_problem(own, "serve") is None and sender_warnings(own) == []
    mail_domain = load_settings(
        read_file=False,
        read_env=False,
        org={"domains": ["acme.example"]},
        campaigns={"from_address": "news@mail.acme-news.example"},
    )
    assert sender_problem(mail_domain, "serve") is None
    assert sender_warnings(mail_domain)[0].startswith(
        "campaigns.from_address news@mail.acme-news.example is not on org.domains (acme.example): make sure "
        "mail to mail.acme-news.example reaches Postroom"
    )
    bounce = load_settings(
        read_file=False,
        read_env=False,
        org={"domains": ["acme.example"]},
        campaigns={"bounce_domain": "outlook.com"},
    )
    said = sender_problem(bounce, "serve")
    assert said is not None and "campaigns.bounce_domain outlook.com at outlook.com" in said


def test_an_international_org_domain_is_kept_in_the_form_addresses_are_stored_in() -> None:
    """Addresses are stored with the domain in its xn-- form (bot/addresses.py): org.domains follows, so
    bob@bücher.example counts as a company address."""
    s = load_settings(read_file=False, read_env=False, org={"domains": ["Bücher.example"]})
    assert s.org.domains == ["xn--bcher-kva.example"]
    from bot.addresses import normalise

    assert s.is_internal(normalise("bob@bücher.example"))


def test_a_trailing_dot_or_a_providers_subdomain_does_not_pass_as_the_companys() -> None:
    """Verification tryout: news@gmail.com. (a trailing dot, the same domain to DNS) started serve."""
    from bot.config import sender_problem

    for address in ("news@gmail.com.", "news@GMAIL.COM.", "news@mail.gmail.com"):
        s = load_settings(
            read_file=False,
            read_env=False,
            org={"domains": ["acme.example"]},
            campaigns={"from_address": address},
        )
        said = sender_problem(s, "serve")
        assert said is not None and "a public mailbox provider" in said, address
