"""Group mail like a list server: a post is stored before the 250, delivered from the store once per
member whatever the client retries, mail loops end at once, posts wait for a moderator in chat, DMARC-safe
copies for senders whose domain asks for it, and the post log."""

from __future__ import annotations

import asyncio
import socket
import threading
from email.message import EmailMessage
from email.utils import make_msgid

import aiosmtplib
import dns.message
import dns.rcode
import dns.rrset
import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import func, select, update

from bot.app import Runtime
from bot.db.models import GroupPost, GroupSenderAllow
from bot.events import Action, Actor, Conversation
from bot.hr.importer import import_staff
from tests.conftest import HR
from tests.group_mail_kit import deliveries, fanned_out, until
from tests.lifecycle_kit import RULES, lifecycle_bot
from tests.smtp import free_port

STAFF = """employee_id,email,name,department,location
E1,alice@corp.example,Alice,Engineering,Berlin
E2,bob@corp.example,Bob,Engineering,Shanghai
E3,chen@corp.example,Chen,Sales,Shanghai
E4,fwd@corp.example,Forwarder,Engineering,Berlin
"""
MODERATED = """
  - address: board
    name: Board
    owners: [hannah@corp.example]
    post: moderated
    members: {department: Engineering}
  - address: eng-open
    post: members
    moderate: nonmembers
    moderators: [alice@corp.example]
    members: {department: Engineering}
"""


async def running(database_url, smtp_port, tmp_path, **sections):  # type: ignore[no-untyped-def]
    port = free_port()
    relay = {"enabled": True, "host": "127.0.0.1", "port": port, **sections.pop("relay", {})}
    port = relay["port"]
    async for bot in lifecycle_bot(
        database_url, smtp_port, tmp_path, rules=RULES + MODERATED, relay=relay, **sections
    ):
        runtime = Runtime(bot.app)
        await runtime.start_services()
        staff = tmp_path / "staff.csv"
        staff.write_text(STAFF)
        await import_staff(bot.app.lifecycle, staff)
        try:
            yield bot, port
        finally:
            await runtime.stop_services()


@pytest.fixture
async def relay(database_url, smtp, tmp_path):  # type: ignore[no-untyped-def]
    async for pair in running(database_url, smtp.port, tmp_path):
        yield pair


def mail(
    sender: str, to: str, subject: str = "Hello", body: str = "Body text.\n", msgid: str | None = None
) -> bytes:
    msg = EmailMessage()
    msg["From"] = f"Sender <{sender}>"
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = msgid or make_msgid(domain="corp.example")
    msg.set_content(body)
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))


async def post(port: int, sender: str, to: str, data: bytes) -> str:
    _errors, reply = await aiosmtplib.send(
        data, sender=sender, recipients=[to], hostname="127.0.0.1", port=port
    )
    return reply


def held_cards(bot):  # type: ignore[no-untyped-def]
    return [
        m.card for kind, conv, m in bot.console.transcript if kind == "send" and m.card and m.card.buttons
    ]


def copies(smtp, address: str) -> int:  # type: ignore[no-untyped-def]
    return sum(1 for m in smtp.messages if address in m.rcpt_tos)


def raw_post_without_reading_the_reply(
    port: int, sender: str, to: str, data: bytes, gave_up: threading.Event
) -> None:
    """A client that sends the whole message and gives up (its timeout) without reading the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        f = s.makefile("rb")
        f.readline()
        for line in (b"EHLO client", f"MAIL FROM:<{sender}>".encode(), f"RCPT TO:<{to}>".encode(), b"DATA"):
            s.sendall(line + b"\r\n")
            while True:
                reply = f.readline()
                if reply[3:4] != b"-":
                    break
        s.sendall(data + b".\r\n")
        gave_up.wait(10)  # no read: the client's timeout fires here


async def test_a_post_is_stored_before_250_and_a_retry_is_not_delivered_again(relay, smtp) -> None:  # type: ignore[no-untyped-def]
    bot, port = relay
    data = mail("alice@corp.example", "eng@corp.example", msgid="<retry-1@corp.example>")
    gave_up = threading.Event()
    client = asyncio.get_running_loop().run_in_executor(
        None,
        raw_post_without_reading_the_reply,
        port,
        "alice@corp.example",
        "eng@corp.example",
        data,
        gave_up,
    )

    async def stored() -> int:
        async with bot.app.ctx.sessions() as session:
            return (await session.execute(select(func.count()).select_from(GroupPost))).scalar_one()

    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while await stored() < 1:
        assert loop.time() < deadline, "the post was not stored"
        await asyncio.sleep(0.02)
    gave_up.set()
    await client
    # The client retries the very message, twice (same sender, same Message-ID).
    assert (await post(port, "alice@corp.example", "eng@corp.example", data)).startswith("Message accepted")
    assert (await post(port, "alice@corp.example", "eng@corp.example", data)).startswith("Message accepted")
    (stored_post,) = await fanned_out(bot.app)
    assert stored_post.state == "delivered" and stored_post.recipient_count == 3 and stored_post.body is None
    assert stored_post.message_id == "<retry-1@corp.example>" and stored_post.subject == "Hello"
    for member in ("alice@corp.example", "bob@corp.example", "fwd@corp.example"):
        assert copies(smtp, member) == 1, member
    copy = smtp.handler.to("bob@corp.example")[0]
    assert copy.mail_from.startswith("bounces+g.")  # each member's own return path
    assert copy.message["List-Post"] == "<mailto:eng@corp.example>"
    assert copy.message["Sender"] == "eng@corp.example"
    assert copy.message["From"] == "Sender <alice@corp.example>"  # an internal sender passes unchanged
    # A new message (another Message-ID) is a new post.
    await post(port, "alice@corp.example", "eng@corp.example", mail("alice@corp.example", "eng@corp.example"))
    await fanned_out(bot.app)
    assert copies(smtp, "bob@corp.example") == 2


class Forwarder:
    """An outbound relay whose one mailbox forwards everything back to the group (a loop)."""

    def __init__(self, back_to: int) -> None:
        self.back_to = back_to
        self.replies: list[str] = []
        self.got: list[tuple[str, list[str]]] = []

    async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
        self.got.append((envelope.mail_from, list(envelope.rcpt_tos)))
        if "fwd@corp.example" in envelope.rcpt_tos:
            try:
                await aiosmtplib.send(
                    envelope.original_content,
                    sender="fwd@corp.example",
                    recipients=["eng@corp.example"],
                    hostname="127.0.0.1",
                    port=self.back_to,
                    timeout=10,
                )
                self.replies.append("accepted")
            except aiosmtplib.SMTPResponseException as exc:
                self.replies.append(f"{exc.code} {exc.message}")
            except aiosmtplib.SMTPRecipientsRefused as exc:
                self.replies.append(str(exc))
        return "250 OK"


async def test_a_mail_loop_ends_at_the_first_return_and_nobody_gets_two(database_url, tmp_path) -> None:  # type: ignore[no-untyped-def]
    relay_port = free_port()
    forwarder = Forwarder(relay_port)
    controller = Controller(forwarder, hostname="127.0.0.1", port=free_port(), decode_data=False)
    controller.start()
    try:
        async for bot, port in running(database_url, controller.port, tmp_path, relay={"port": relay_port}):
            data = mail("alice@corp.example", "eng@corp.example")
            await post(port, "alice@corp.example", "eng@corp.example", data)
            await fanned_out(bot.app)
            await until(lambda: len(forwarder.replies) == 1)
            assert forwarder.replies[0].startswith("554") and "loop" in forwarder.replies[0].lower()
            got = sorted(r for _f, rcpts in forwarder.got for r in rcpts)
            assert got == ["alice@corp.example", "bob@corp.example", "fwd@corp.example"]
            async with bot.app.ctx.sessions() as session:
                assert (await session.execute(select(func.count()).select_from(GroupPost))).scalar_one() == 1
    finally:
        controller.stop()


def click(who: str, action_id: str, value: str) -> Action:
    import uuid

    return Action(
        Actor("console", who, email=who),
        action_id,
        value,
        Conversation("console", "hr"),
        delivery_id=str(uuid.uuid4()),
    )


async def test_a_moderated_post_waits_for_a_click_and_goes_once(relay, smtp) -> None:  # type: ignore[no-untyped-def]
    bot, port = relay
    reply = await post(
        port,
        "chen@corp.example",
        "board@corp.example",
        mail("chen@corp.example", "board@corp.example", "Budget", "Line one\nLine two\n"),
    )
    assert reply.startswith("Message accepted")
    await until(lambda: bool(bot.cards("hr")))
    card = bot.cards("hr")[-1].card
    assert card is not None and "board@corp.example" in card.title
    fields = dict(card.fields)
    assert (
        fields["Subject"] == "Budget" and fields["Recipients"] == "3" and "Line one" in fields["First lines"]
    )
    assert [b.action_id for b in card.buttons] == ["post.approve", "post.reject", "post.allow"]
    post_id = card.buttons[0].value
    assert smtp.messages == []  # nothing leaves before a decision
    refused = await bot.core.handle_action(click("bob@corp.example", "post.approve", post_id))
    assert refused is not None and "Only the moderators of board@corp.example" in refused.text
    answer = await bot.core.handle_action(click(HR, "post.approve", post_id))
    assert answer is not None
    assert answer.text == f"Approved post #{post_id} to board@corp.example. It goes to 3 members.", (
        answer.text
    )
    again = await bot.core.handle_action(click(HR, "post.approve", post_id))
    assert again is not None and "already decided" in again.text
    await fanned_out(bot.app)
    assert sorted(r for m in smtp.messages for r in m.rcpt_tos) == [
        "alice@corp.example",
        "bob@corp.example",
        "fwd@corp.example",
    ]
    log = await bot.say(HR, "/posts board")
    assert "chen@corp.example" in log and "Budget" in log and "moderated" in log


async def test_reject_with_a_reason_allow_a_sender_and_expiry(relay, smtp) -> None:  # type: ignore[no-untyped-def]
    bot, port = relay
    # eng-open: members post; others wait for its moderator (alice) instead of being refused.
    await post(
        port,
        "chen@corp.example",
        "eng-open@corp.example",
        mail("chen@corp.example", "eng-open@corp.example", "Offer"),
    )
    await until(lambda: bool(held_cards(bot)))
    post_id = held_cards(bot)[-1].buttons[0].value
    answer = await bot.say("alice@corp.example", f'/post reject {post_id} "off topic here"')
    assert "Rejected post" in answer
    notice = await asyncio.to_thread(lambda: smtp.handler.wait_for(1))
    assert notice[0].rcpt_tos == ["chen@corp.example"] and notice[0].mail_from == "<>"
    assert "off topic here" in notice[0].message.get_content()
    # Always allow: this post goes, and the next one does not wait.
    await post(
        port,
        "chen@corp.example",
        "eng-open@corp.example",
        mail("chen@corp.example", "eng-open@corp.example", "Two"),
    )
    await until(lambda: len(held_cards(bot)) >= 2)
    second = held_cards(bot)[-1].buttons[0].value
    answer_msg = await bot.core.handle_action(click("alice@corp.example", "post.allow", second))
    assert answer_msg is not None and "now posts without waiting" in answer_msg.text
    async with bot.app.ctx.sessions() as session:
        assert (await session.execute(select(GroupSenderAllow.email))).scalars().all() == [
            "chen@corp.example"
        ]
    await post(
        port,
        "chen@corp.example",
        "eng-open@corp.example",
        mail("chen@corp.example", "eng-open@corp.example", "Three"),
    )
    posts = await fanned_out(bot.app)
    assert [p.state for p in posts] == ["rejected", "delivered", "delivered"]
    assert len(held_cards(bot)) == 2
    # A held post nobody decides expires with a notice to its sender.
    await post(
        port,
        "chen@corp.example",
        "board@corp.example",
        mail("chen@corp.example", "board@corp.example", "Late"),
    )
    async with bot.app.ctx.sessions() as session, session.begin():
        await session.execute(
            update(GroupPost).where(GroupPost.state == "held").values(expires_at=bot.app.ctx.now())
        )
    before = len(smtp.messages)
    await bot.app.group_mail.moderation.tick()
    posts = await fanned_out(bot.app)
    assert posts[-1].state == "expired" and posts[-1].body is None
    await until(lambda: len(smtp.messages) > before)
    assert "nobody decided in time" in smtp.messages[-1].message.get_content()


class DnsServer:
    """A DNS server on a loopback UDP port publishing one DMARC record."""

    def __init__(self, records: dict[str, str]) -> None:
        self.records = records
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.queries: list[str] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.running = True

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while self.running:
            try:
                wire, addr = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            query = dns.message.from_wire(wire)
            name = query.question[0].name.to_text().rstrip(".").lower()
            self.queries.append(name)
            response = dns.message.make_response(query)
            if name in self.records:
                response.answer.append(
                    dns.rrset.from_text(name + ".", 600, "IN", "TXT", f'"{self.records[name]}"')
                )
            else:
                response.set_rcode(dns.rcode.NXDOMAIN)
            self.sock.sendto(response.to_wire(), addr)

    def __enter__(self) -> DnsServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.running = False
        self.thread.join(2)
        self.sock.close()


async def test_dmarc_reject_senders_go_out_via_the_group(database_url, smtp, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with DnsServer(
        {"_dmarc.strict.example": "v=DMARC1; p=reject; rua=mailto:d@strict.example"}
    ) as dns_server:
        relay = {"dns_nameservers": ["127.0.0.1"], "dns_port": dns_server.port}
        async for bot, port in running(database_url, smtp.port, tmp_path, relay=relay):
            await bot.say(HR, "/addgroup partners bob@corp.example")
            await post(
                port,
                "x@strict.example",
                "partners@corp.example",
                mail("x@strict.example", "partners@corp.example"),
            )
            await post(
                port, "y@lax.example", "partners@corp.example", mail("y@lax.example", "partners@corp.example")
            )
            await post(
                port,
                "x@strict.example",
                "partners@corp.example",
                mail("x@strict.example", "partners@corp.example"),
            )
            await post(
                port,
                "alice@corp.example",
                "partners@corp.example",
                mail("alice@corp.example", "partners@corp.example"),
            )
            await fanned_out(bot.app)
            got = [m.message for m in smtp.handler.to("bob@corp.example")]
            assert len(got) == 4
            assert got[0]["From"] == "Sender via partners <partners@corp.example>"
            assert got[0]["Reply-To"] == "Sender <x@strict.example>"
            assert got[0]["List-Id"] == '"partners" <partners.corp.example>'
            assert got[1]["From"] == "Sender <y@lax.example>" and got[1]["Reply-To"] is None
            assert got[2]["From"] == "Sender via partners <partners@corp.example>"
            assert got[3]["From"] == "Sender <alice@corp.example>"
            # cached for the record's TTL, and the company's own domain is never looked up
            assert dns_server.queries.count("_dmarc.strict.example") == 1
            assert not [q for q in dns_server.queries if "corp.example" in q]


async def test_a_hard_bounce_is_reported_and_suppresses_nobody(relay, smtp) -> None:  # type: ignore[no-untyped-def]
    bot, port = relay
    smtp.handler.fail_rcpt["bob@corp.example"] = [550]
    await post(port, "alice@corp.example", "eng@corp.example", mail("alice@corp.example", "eng@corp.example"))
    (done,) = await fanned_out(bot.app)
    assert (await deliveries(bot.app, done.id))["bob@corp.example"] == "bounced"
    hr = [m for kind, conv, m in bot.console.transcript if conv == "hr" and "bounced" in m.text]
    assert hr and "bob@corp.example" in hr[-1].text and "5.1.1" in hr[-1].text
    await until(lambda: any("Undeliverable" in str(m.message["Subject"]) for m in smtp.messages))
    notice = next(m for m in smtp.messages if "Undeliverable" in str(m.message["Subject"]))
    assert notice.rcpt_tos == ["alice@corp.example"] and "bob@corp.example" in notice.message.get_content()
    from bot.db.models import Membership, Suppression

    async with bot.app.ctx.sessions() as session:
        assert (await session.execute(select(func.count()).select_from(Suppression))).scalar_one() == 0
        assert "bob@corp.example" in (await session.execute(select(Membership.email))).scalars().all()


async def test_the_relay_reads_a_recipient_as_the_policy_service_does(relay, smtp) -> None:  # type: ignore[no-untyped-def]
    """ENG+x@Corp.Example is eng@ (postfix.recipient_delimiter, case): its policy applies, and eng@ and
    eng+x@ in one envelope are one post, one copy per member."""
    bot, port = relay
    with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as refused:
        await post(
            port, "chen@corp.example", "ENG+x@Corp.Example", mail("chen@corp.example", "eng@corp.example")
        )
    assert "only members of this group may post" in refused.value.recipients[0].message
    data = mail("alice@corp.example", "eng@corp.example")
    await aiosmtplib.send(
        data,
        sender="alice@corp.example",
        recipients=["ENG+x@Corp.Example", "eng@corp.example"],
        hostname="127.0.0.1",
        port=port,
    )
    (stored,) = await fanned_out(bot.app)
    assert stored.group_address == "eng@corp.example" and stored.recipient_count == 3
    for member in ("alice@corp.example", "bob@corp.example", "fwd@corp.example"):
        assert copies(smtp, member) == 1, member


async def test_one_message_to_two_groups_is_one_copy_each_and_the_log_counts_true(relay, smtp) -> None:  # type: ignore[no-untyped-def]
    """Tryout finding: eng@ and all-staff@ in one message gave the log "0 recipients" (or 1) for the
    second group; a post held for board@ next to one that went to all-staff@ gave its members a second
    copy when approved. A member gets one copy per message; each group's log counts its members reached."""
    bot, port = relay
    everyone = ["alice@corp.example", "bob@corp.example", "chen@corp.example", "fwd@corp.example"]
    await aiosmtplib.send(
        mail("alice@corp.example", "eng@corp.example, all-staff@corp.example"),
        sender="alice@corp.example",
        recipients=["eng@corp.example", "all-staff@corp.example"],
        hostname="127.0.0.1",
        port=port,
    )
    posts = await fanned_out(bot.app)
    assert [(p.group_address, p.recipient_count) for p in posts] == [
        ("eng@corp.example", 3),
        ("all-staff@corp.example", 4),
    ]
    assert [copies(smtp, m) for m in everyone] == [1, 1, 1, 1]
    assert "4 recipients" in await bot.say(HR, "/posts all-staff")
    # chen's post waits for board@'s moderators and goes to all-staff@ at once
    await aiosmtplib.send(
        mail("chen@corp.example", "board@corp.example, all-staff@corp.example", "Budget"),
        sender="chen@corp.example",
        recipients=["board@corp.example", "all-staff@corp.example"],
        hostname="127.0.0.1",
        port=port,
    )
    await fanned_out(bot.app)
    assert [copies(smtp, m) for m in everyone] == [2, 2, 2, 2]
    await until(lambda: bool(bot.cards("hr")))
    post_id = bot.cards("hr")[-1].card.buttons[0].value
    answer = await bot.core.handle_action(click(HR, "post.approve", post_id))
    # Tryout finding: this said "it goes to 3 members" and nobody got a copy. It says the copies that go.
    assert answer is not None and answer.text == (
        f"Approved post #{post_id} to board@corp.example. Nobody gets a copy from it: every member had the "
        "message through another group it was sent to."
    ), answer.text
    posts = await fanned_out(bot.app)
    assert [copies(smtp, m) for m in everyone] == [2, 2, 2, 2]  # board@'s members had it from all-staff@
    assert [(p.group_address, p.state, p.recipient_count) for p in posts[2:]] == [
        ("board@corp.example", "delivered", 3),
        ("all-staff@corp.example", "delivered", 4),
    ]


async def test_deciding_a_post_that_was_never_held_says_so(relay, smtp) -> None:  # type: ignore[no-untyped-def]
    bot, port = relay
    # alice is in Engineering: her post to eng-open goes straight out, no moderator involved.
    await post(
        port,
        "alice@corp.example",
        "eng-open@corp.example",
        mail("alice@corp.example", "eng-open@corp.example", "Standup"),
    )
    (delivered,) = await fanned_out(bot.app)
    assert delivered.state == "delivered" and not delivered.moderated
    for verb in ("approve", "reject"):
        answer = await bot.say(HR, f"/post {verb} {delivered.id}")
        assert f"Post #{delivered.id} to eng-open@corp.example was never held for a moderator" in answer, (
            answer
        )
        assert "already decided" not in answer
    log = await bot.say(HR, "/posts eng-open")
    assert f"#{delivered.id} " in log


async def test_a_rejection_notice_comes_from_noreply_on_the_bounce_domain(relay, smtp) -> None:  # type: ignore[no-untyped-def]
    bot, port = relay
    await post(
        port,
        "chen@corp.example",
        "eng-open@corp.example",
        mail("chen@corp.example", "eng-open@corp.example", "Offer"),
    )
    await until(lambda: bool(held_cards(bot)))
    post_id = held_cards(bot)[-1].buttons[0].value
    assert f"#{post_id}" in held_cards(bot)[-1].title
    answer = await bot.say("alice@corp.example", f'/post reject {post_id} "off topic"')
    assert f"Rejected post #{post_id}" in answer
    (notice,) = await asyncio.to_thread(lambda: smtp.handler.wait_for(1))
    bounce_domain = bot.app.ctx.settings.campaigns.bounce_domain
    assert notice.message["From"].addresses[0].addr_spec == f"noreply@{bounce_domain}"
    assert "eng-open@corp.example" not in str(notice.message["From"])
    assert notice.message["Auto-Submitted"] == "auto-replied"
    assert notice.mail_from == "<>"


async def test_an_approval_counts_the_copies_that_go_out(relay, smtp) -> None:  # type: ignore[no-untyped-def]
    """Tryout finding: "/post approve" said "it goes to 3 members" for board@ (alice, bob, fwd) when the
    same message had gone to berlin@ (alice, fwd) at once: one copy went, to bob. It counts as the fan-out
    does: members, the sender too when one, less those another group of the message covered."""
    bot, port = relay
    await aiosmtplib.send(
        mail("chen@corp.example", "board@corp.example, berlin@corp.example", "Offsite"),
        sender="chen@corp.example",
        recipients=["board@corp.example", "berlin@corp.example"],
        hostname="127.0.0.1",
        port=port,
    )
    await fanned_out(bot.app)
    assert (copies(smtp, "alice@corp.example"), copies(smtp, "fwd@corp.example")) == (1, 1)
    await until(lambda: len(held_cards(bot)) == 1)
    post_id = held_cards(bot)[-1].buttons[0].value
    before = len(smtp.messages)
    answer = await bot.say(HR, f"/post approve {post_id}")
    assert answer == (
        f"Approved post #{post_id} to board@corp.example. It goes to 1 member. 2 more members had the "
        "message through another group it was sent to."
    ), answer
    await fanned_out(bot.app)
    assert [r for m in smtp.messages[before:] for r in m.rcpt_tos] == ["bob@corp.example"]
    # a member who sends gets a copy like everyone else (a list server's default): counted
    await aiosmtplib.send(
        mail("bob@corp.example", "board@corp.example", "Minutes"),
        sender="bob@corp.example",
        recipients=["board@corp.example"],
        hostname="127.0.0.1",
        port=port,
    )
    await until(lambda: len(held_cards(bot)) == 2)
    post_id = held_cards(bot)[-1].buttons[0].value
    before = len(smtp.messages)
    answer = await bot.say(HR, f"/post allow {post_id}")
    assert answer == (
        f"Approved post #{post_id} to board@corp.example. It goes to 3 members. bob@corp.example now posts "
        "without waiting."
    ), answer
    await fanned_out(bot.app)
    assert sorted(r for m in smtp.messages[before:] for r in m.rcpt_tos) == [
        "alice@corp.example",
        "bob@corp.example",
        "fwd@corp.example",
    ]
    # in Chinese too (bob's posts no longer wait: chen's does)
    await aiosmtplib.send(
        mail("chen@corp.example", "board@corp.example", "Agenda"),
        sender="chen@corp.example",
        recipients=["board@corp.example"],
        hostname="127.0.0.1",
        port=port,
    )
    await until(lambda: len(held_cards(bot)) == 3)
    post_id = held_cards(bot)[-1].buttons[0].value
    bot.console.locale = "zh_CN"
    answer = await bot.say(HR, f"/post approve {post_id}")
    assert answer == f"已批准发往 board@corp.example 的帖子 #{post_id}。将发给 3 个成员。", answer


async def test_one_message_in_two_transactions_to_overlapping_groups_is_one_copy_each(relay, smtp) -> None:  # type: ignore[no-untyped-def]
    """Found looking for double deliveries: a client whose RCPT to all-staff@ was deferred (or that sends
    each group in its own transaction, as some servers split recipients) delivers the same message again
    to all-staff@ alone. Only posts stored in one transaction counted as one message, so alice, bob and
    fwd (in eng@ and all-staff@) got it twice. Same sender and Message-ID within
    relay.duplicate_window_hours is one message: one copy per member, whichever group it came through."""
    bot, port = relay
    everyone = ["alice@corp.example", "bob@corp.example", "chen@corp.example", "fwd@corp.example"]
    data = mail("alice@corp.example", "eng@corp.example, all-staff@corp.example", "Release")
    await post(port, "alice@corp.example", "eng@corp.example", data)
    await fanned_out(bot.app)
    await post(port, "alice@corp.example", "all-staff@corp.example", data)
    posts = await fanned_out(bot.app)
    assert [copies(smtp, m) for m in everyone] == [1, 1, 1, 1]
    assert [(p.group_address, p.recipient_count) for p in posts] == [
        ("eng@corp.example", 3),
        ("all-staff@corp.example", 4),
    ]
    # a held post of that message, approved later, sends nobody a second copy either
    held = mail("chen@corp.example", "board@corp.example, all-staff@corp.example", "Plan")
    await post(port, "chen@corp.example", "board@corp.example", held)
    await until(lambda: len(held_cards(bot)) == 1)
    await post(port, "chen@corp.example", "all-staff@corp.example", held)
    await fanned_out(bot.app)
    answer = await bot.say(HR, f"/post approve {held_cards(bot)[-1].buttons[0].value}")
    assert "Nobody gets a copy from it" in answer, answer
    await fanned_out(bot.app)
    assert [copies(smtp, m) for m in everyone] == [2, 2, 2, 2]
    # another message (its own Message-ID) is another post: everyone gets it
    other = mail("alice@corp.example", "all-staff@corp.example", "Release")
    await post(port, "alice@corp.example", "all-staff@corp.example", other)
    await fanned_out(bot.app)
    assert [copies(smtp, m) for m in everyone] == [3, 3, 3, 3]
