"""The optional MX check against a small DNS server on loopback: a domain that does not exist, or has
neither MX nor A record, is refused; one with an MX (or only an A record) is fine; a server that does not
answer in time accepts the address (a DNS hiccup must not turn people away)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from bot.contacts.importer import import_contacts
from bot.contacts.mx import has_mail_server
from tests.audience_kit import make_bot, open_signup, web  # noqa: F401


class FakeDns(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        query = dns.message.from_wire(data)
        question = query.question[0]
        name, kind = question.name.to_text(), question.rdtype
        if name == "silent.test.":
            return  # never answers: the look-up times out
        reply = dns.message.make_response(query)
        if name == "gone.example.net.":
            reply.set_rcode(dns.rcode.NXDOMAIN)
        elif name == "mx.example.net." and kind == dns.rdatatype.MX:
            reply.answer.append(dns.rrset.from_text(name, 300, "IN", "MX", "10 mail.mx.example.net."))
        elif name == "aonly.test." and kind == dns.rdatatype.A:
            reply.answer.append(dns.rrset.from_text(name, 300, "IN", "A", "192.0.2.1"))
        self.transport.sendto(reply.to_wire(), addr)  # type: ignore[attr-defined]


@pytest.fixture
async def dns_port() -> AsyncIterator[int]:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(FakeDns, local_addr=("127.0.0.1", 0))
    try:
        yield transport.get_extra_info("sockname")[1]
    finally:
        transport.close()


@pytest.mark.parametrize(
    ("domain", "expected"),
    [
        ("mx.example.net", True),
        ("aonly.test", True),
        ("gone.example.net", False),
        ("empty.test", False),
        ("silent.test", True),
    ],
)
async def test_a_domain_without_a_mail_server_is_refused(dns_port: int, domain: str, expected: bool) -> None:
    found = await has_mail_server(domain, timeout_s=0.3, nameservers=["127.0.0.1"], port=dns_port)
    assert found is expected


async def test_signup_and_import_refuse_a_dead_domain(dns_port, make_bot, smtp, tmp_path) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    resolver = {"mx_check": True, "dns_servers": ["127.0.0.1"], "dns_port": dns_port, "dns_timeout_s": 0.3}
    bot = await make_bot(signup=resolver)
    await open_signup(bot)
    async with web(bot) as client:
        refused = await client.post("/s/customers", data={"email": "someone@gone.example.net"})
        assert refused.status_code == 400 and "gone.example.net does not receive email" in refused.text
        assert (
            await client.post("/s/customers", data={"email": "someone@mx.example.net"})
        ).status_code == 200
    rows = "email,consent_at\nx@gone.example.net,2026-01-01T00:00:00+00:00\ny@mx.example.net,2026-01-01T00:00:00+00:00\n"
    (tmp_path / "more.csv").write_text(rows)
    report = await import_contacts(bot.app.ctx, tmp_path / "more.csv", "more")
    assert report.added == 1 and report.bad == [
        (2, "gone.example.net does not receive email (no MX or A record)")
    ]
