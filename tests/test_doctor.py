"""`postroom doctor` against a DNS server on loopback (dnspython's message parsing, UDP): one line per check,
a sentence with what to fix; a missing DKIM record and a DMARC policy without alignment are each found."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
from click.testing import CliRunner

from bot.cli import main
from tests.dkim_kit import Keys
from tests.smtp import SmtpServer, free_port
from tests.smtp_faults import USERNAME, FaultyServer

RELAY = {"port": 0}  # the [smtp] port config() writes: a real relay on loopback (the `relay` fixture)


@pytest.fixture(autouse=True)
def relay() -> Iterator[SmtpServer]:
    with SmtpServer() as server:
        RELAY["port"] = server.port
        yield server


class Zone:
    """A DNS server on a loopback UDP port answering TXT and MX from a dict; anything else is NXDOMAIN."""

    def __init__(self, txt: dict[str, list[str]], mx: dict[str, str]) -> None:
        self.txt = txt
        self.mx = mx
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.running = True
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        self.sock.settimeout(0.1)
        while self.running:
            try:
                wire, addr = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            query = dns.message.from_wire(wire)
            question = query.question[0]
            name = question.name.to_text().rstrip(".").lower()
            reply = dns.message.make_response(query)
            if question.rdtype == dns.rdatatype.TXT and name in self.txt:
                for value in self.txt[name]:
                    strings = " ".join(f'"{value[i : i + 255]}"' for i in range(0, len(value), 255))
                    reply.answer.append(dns.rrset.from_text(name + ".", 300, "IN", "TXT", strings))
            elif question.rdtype == dns.rdatatype.MX and name in self.mx:
                reply.answer.append(dns.rrset.from_text(name + ".", 300, "IN", "MX", f"10 {self.mx[name]}."))
            elif name not in self.txt and name not in self.mx:
                reply.set_rcode(dns.rcode.NXDOMAIN)
            self.sock.sendto(reply.to_wire(), addr)

    def __enter__(self) -> Zone:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.running = False
        self.thread.join(2)
        self.sock.close()


def config(
    tmp_path: Path, keys: Keys, *selectors: str, base_url: str = "https://postroom.corp.example"
) -> Path:
    lines = [
        f'[database]\nurl = "sqlite+aiosqlite:///{tmp_path / "d.db"}"',
        f'[web]\nbase_url = "{base_url}"',
        '[org]\nname = "Corp"\ndomains = ["corp.example"]',
        '[campaigns]\nfrom_address = "news@corp.example"',
        f'[smtp]\nhost = "127.0.0.1"\nport = {RELAY["port"]}\ntimeout_s = 3',
    ]
    for s in selectors:
        lines.append(
            f'[[dkim.keys]]\ndomain = "corp.example"\nselector = "{s}"\nkey_file = "{keys.files[s]}"'
        )
    path = tmp_path / "postroom.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def doctor(path: Path, port: int) -> tuple[int, list[str]]:
    result = CliRunner().invoke(
        main,
        ["--config", str(path), "doctor", "--nameserver", "127.0.0.1", "--port", str(port), "--timeout", "2"],
    )
    assert "Traceback" not in result.output, result.output
    return result.exit_code, result.output.strip().splitlines()


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    k = Keys(tmp_path / "dkim")
    k.make("pr2026")
    k.make("old")
    return k


def test_a_domain_set_up_right_has_nothing_to_fix(tmp_path: Path, keys: Keys) -> None:
    txt = {
        "corp.example": ["v=spf1 mx include:relay.corp.example -all", "google-site-verification=x"],
        "pr2026._domainkey.corp.example": [keys.records["pr2026._domainkey.corp.example"].decode()],
        "_dmarc.corp.example": ["v=DMARC1; p=quarantine; rua=mailto:dmarc@corp.example"],
    }
    with Zone(txt, {"corp.example": "mx.corp.example"}) as zone:
        code, lines = doctor(config(tmp_path, keys, "pr2026"), zone.port)
    assert code == 0, lines
    assert lines == [
        "OK   SPF corp.example: “v=spf1 mx include:relay.corp.example -all”.",
        "OK   DKIM corp.example (s=pr2026): the published key matches (rsa-sha256).",
        "OK   DMARC corp.example: p=quarantine (at _dmarc.corp.example), aligned by DKIM.",
        "OK   MX corp.example: bounces go to mx.corp.example.",
        "OK   web https://postroom.corp.example: https, as one-click unsubscribe needs.",
        f"OK   SMTP 127.0.0.1:{RELAY['port']}: the relay answered.",
        "Nothing to fix.",
    ]


def test_missing_dkim_record_wrong_key_and_dmarc_without_alignment_are_each_one_sentence(
    tmp_path: Path, keys: Keys
) -> None:
    txt = {
        "corp.example": ["v=spf1 +all"],
        # the "old" selector publishes the other key: the record does not match what Postroom signs with
        "old._domainkey.corp.example": [keys.records["pr2026._domainkey.corp.example"].decode()],
        "_dmarc.corp.example": ["v=DMARC1; p=reject; adkim=s; aspf=s"],
    }
    with Zone(txt, {}) as zone:
        path = config(tmp_path, keys, "pr2026", "old", base_url="http://postroom.corp.example")
        # signing as a parent domain under adkim=s: mail from news@mail.corp.example does not align
        path.write_text(
            path.read_text().replace(
                'from_address = "news@corp.example"',
                'from_address = "news@mail.corp.example"\nbounce_domain = "bounce.other.example"',
            )
        )
        code, lines = doctor(path, zone.port)
    assert code == 1, lines
    by_check = {line.split(":", 1)[0]: line for line in lines}
    missing = by_check["FIX  DKIM corp.example (s=pr2026)"]
    assert "no DKIM record at pr2026._domainkey.corp.example: publish the TXT record" in missing
    assert (
        "the key published at old._domainkey.corp.example is not the public half"
        in by_check["FIX  DKIM corp.example (s=old)"]
    )
    unaligned = by_check["FIX  DMARC mail.corp.example"]
    assert unaligned.startswith(
        "FIX  DMARC mail.corp.example: policy p=reject (at _dmarc.corp.example), but neither DKIM nor SPF aligns "
        "with mail.corp.example (DKIM signs as d=corp.example under adkim=s; the return path's domain "
        "bounce.other.example is not it (aspf=s))"
    ), unaligned
    assert "ends in +all, which lets any server send as corp.example" in by_check["FIX  SPF corp.example"]
    assert "no SPF record" in by_check["FIX  SPF mail.corp.example"]
    assert "has no MX record" in by_check["FIX  MX bounce.other.example"]
    assert "web.base_url is not https" in by_check["FIX  web http"]
    assert lines[-1].endswith("to fix.")
    for line in lines[:-1]:
        assert line.count(". ") <= 2 and "\n" not in line  # one sentence a line, with what to do


def test_no_dmarc_record_and_policy_none_say_what_to_publish(tmp_path: Path, keys: Keys) -> None:
    records = keys.records["pr2026._domainkey.corp.example"].decode()
    base = {"corp.example": ["v=spf1 mx -all"], "pr2026._domainkey.corp.example": [records]}
    with Zone(base, {"corp.example": "mx.corp.example"}) as zone:
        _code, lines = doctor(config(tmp_path, keys, "pr2026"), zone.port)
    assert any(
        line.startswith(
            'FIX  DMARC corp.example: no DMARC record: publish a TXT record at _dmarc.corp.example such as "v=DMARC1; p=none;'
        )
        for line in lines
    ), lines
    with Zone(
        {**base, "_dmarc.corp.example": ["v=DMARC1; p=none"]}, {"corp.example": "mx.corp.example"}
    ) as zone:
        code, lines = doctor(config(tmp_path, keys, "pr2026"), zone.port)
    assert code == 0 and any(line.startswith("WARN DMARC corp.example: policy p=none") for line in lines), (
        lines
    )


def test_a_resolver_that_does_not_answer_and_a_bad_nameserver_are_sentences(
    tmp_path: Path, keys: Keys
) -> None:
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    try:
        result = CliRunner().invoke(
            main,
            [
                "--config",
                str(config(tmp_path, keys, "pr2026")),
                "doctor",
                "--nameserver",
                "127.0.0.1",
                "--port",
                str(silent.getsockname()[1]),
                "--timeout",
                "0.3",
            ],
        )
    finally:
        silent.close()
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert (
        "FIX  SPF corp.example: the resolver could not be asked about corp.example (no answer in time)"
        in result.output
    )
    bad = CliRunner().invoke(
        main, ["--config", str(config(tmp_path, keys)), "doctor", "--nameserver", "dns.google"]
    )
    assert (
        bad.exit_code == 1
        and bad.output.strip() == "Error: --nameserver 'dns.google' is not an IP address like 192.0.2.53."
    )


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_doctor_says_when_the_relay_is_unreachable_or_refuses_the_login(tmp_path: Path, keys: Keys) -> None:
    """Tryout: a wrong smtp port or password went unnoticed until the first send; doctor names the key."""
    import secrets

    path = config(tmp_path, keys, "pr2026")
    nobody = free_port()
    path.write_text(path.read_text().replace(f"port = {RELAY['port']}", f"port = {nobody}"))
    with Zone({}, {}) as zone:
        code, lines = doctor(path, zone.port)
    assert code == 1
    (line,) = [x for x in lines if x.startswith(("FIX  SMTP ", "OK   SMTP "))]
    assert line.startswith(
        f"FIX  SMTP 127.0.0.1:{nobody}: the mail relay at 127.0.0.1:{nobody} can't be reached ("
    )
    assert line.endswith(
        "check smtp.host and smtp.port (campaign mail and group posts wait until it answers)."
    )
    with FaultyServer(auth=True) as faulty, Zone({}, {}) as zone:
        wrong = "wrong-" + secrets.token_urlsafe(12)
        path.write_text(
            path.read_text().replace(
                f"port = {nobody}", f'port = {faulty.port}\nusername = "{USERNAME}"\npassword = "{wrong}"'
            )
        )
        code, lines = doctor(path, zone.port)
    (line,) = [x for x in lines if x.startswith(("FIX  SMTP ", "OK   SMTP "))]
    assert (
        code == 1
        and "refused Postroom's login (535" in line
        and line.endswith("check smtp.username and smtp.password.")
    ), line
    assert wrong not in "\n".join(lines)
