"""The policy service speaks Postfix's attribute protocol, answers every request within its bound, and
turns garbage, oversize requests and its own failures into one answer, never a hang or a traceback."""

from __future__ import annotations

import asyncio

import pytest

from bot.groups.postfix_policy import PolicyService
from tests.smtp import free_port
from tests.test_group_posts import running


@pytest.fixture
async def policy(database_url, smtp, tmp_path):  # type: ignore[no-untyped-def]
    port = free_port()
    async for bot, _relay in running(
        database_url, smtp.port, tmp_path, postfix={"policy_enabled": True, "policy_port": port}
    ):
        yield bot, port


def request(**attrs: str) -> bytes:
    base = {"request": "smtpd_access_policy", "protocol_state": "RCPT", "client_address": "127.0.0.1"}
    return "".join(f"{k}={v}\n" for k, v in {**base, **attrs}.items()).encode() + b"\n"


async def ask(port: int, *payloads: bytes) -> list[str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answers = []
    try:
        for payload in payloads:
            writer.write(payload)
            await writer.drain()
            answer = await asyncio.wait_for(reader.readuntil(b"\n\n"), 10)
            answers.append(answer.decode().strip())
        return answers
    finally:
        writer.close()


async def test_the_posting_policy_over_the_protocol(policy) -> None:  # type: ignore[no-untyped-def]
    _bot, port = policy
    answers = await ask(
        port,
        request(sender="chen@corp.example", recipient="eng@corp.example"),
        request(sender="alice@corp.example", recipient="eng@corp.example", instance="i1"),
        request(sender="chen@corp.example", recipient="someone@corp.example"),
        request(
            protocol_state="END-OF-MESSAGE",
            sender="alice@corp.example",
            instance="i1",
            size="1234",
            queue_id="ABC12345",
        ),
        request(sender="chen@corp.example", recipient="board@corp.example", instance="i2"),
        request(
            protocol_state="END-OF-MESSAGE",
            sender="chen@corp.example",
            instance="i2",
            size="99",
            queue_id="DEF67890",
        ),
        b"request=other\n\n",
    )
    assert answers[0].startswith(
        "action=REJECT 5.7.1 <eng@corp.example>: only members of this group may post"
    )
    assert answers[1:4] == ["action=DUNNO"] * 3
    assert answers[4] == "action=DUNNO"  # held at the end of the message, when Postfix knows its queue id
    assert answers[5] == "action=HOLD held for a moderator of board@corp.example"
    assert answers[6] == "action=DUNNO"
    log = await _bot.say("hannah@corp.example", "/posts eng")
    assert "alice@corp.example" in log and "1 KB" in log and "delivered by Postfix" in log


@pytest.mark.parametrize(
    "garbage, why",
    [
        (b"no equals sign here\n\n", "not name=value"),
        (b"request=smtpd_access_policy\n" + b"x=" + b"y" * 20000 + b"\n\n", "longer than the limit"),
        (b"".join(b"a%d=b\n" % i for i in range(200)) + b"\n", "over 100 lines"),
        (b"\n", "an empty request"),
        (b"\xff\xfe=1\n\n", "not ASCII"),
    ],
)
async def test_bad_requests_get_one_answer_and_the_connection_closes(
    policy, garbage: bytes, why: str
) -> None:  # type: ignore[no-untyped-def]
    _bot, port = policy
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(garbage)
    await writer.drain()
    answer = (await asyncio.wait_for(reader.read(), 10)).decode()
    writer.close()
    assert answer.startswith("action=DEFER_IF_PERMIT Policy request malformed") and why in answer
    # and the service still answers the next client
    assert await ask(port, request(sender="a@x.example", recipient="nobody@corp.example")) == ["action=DUNNO"]


async def test_a_request_not_decided_in_time_defers_and_never_hangs(policy) -> None:  # type: ignore[no-untyped-def]
    bot, port = policy
    service = bot.app.group_mail.policy
    service.settings = service.settings.model_copy(update={"answer_within_s": 1e-9})
    (answer,) = await ask(port, request(sender="chen@corp.example", recipient="eng@corp.example"))
    assert answer == "action=DEFER_IF_PERMIT Group policy temporarily unavailable, try again later"


# Security tryout: Postfix expands each of these to eng@corp.example (recipient_delimiter, case folding,
# the trailing dot, quotes, a bare local part, a source route, the percent hack, a bang path); the policy
# must check eng@'s policy for every one, not answer DUNNO because the text is not "eng@corp.example".
REWRITTEN = [
    "eng+x@corp.example",
    "eng@corp.example.",
    '"eng"@corp.example',
    "ENG@Corp.Example",
    "eng",
    "<eng@corp.example>",
    "@relay.example:eng@corp.example",
    "eng%corp.example@corp.example",
    "corp.example!eng",
]


@pytest.mark.parametrize("recipient", REWRITTEN)
async def test_every_form_postfix_expands_to_a_group_gets_its_policy(policy, recipient: str) -> None:  # type: ignore[no-untyped-def]
    _bot, port = policy
    (answer,) = await ask(port, request(sender="chen@corp.example", recipient=recipient))
    assert answer.startswith("action=REJECT 5.7.1 <") and "only members of this group may post" in answer, (
        recipient,
        answer,
    )
    (ok,) = await ask(port, request(sender="alice@corp.example", recipient=recipient))
    assert ok == "action=DUNNO"


@pytest.mark.parametrize("recipient", ['"eng@corp.example', "@relay.example", "eng@corp@example"])
async def test_a_recipient_that_cannot_be_read_is_refused_not_waved_through(policy, recipient: str) -> None:  # type: ignore[no-untyped-def]
    _bot, port = policy
    (answer,) = await ask(port, request(sender="chen@corp.example", recipient=recipient))
    assert answer.startswith("action=REJECT 5.1.3 <") and "can't be read" in answer, answer


async def test_the_delimiter_is_postfixs_and_other_mail_is_left_alone(database_url, smtp, tmp_path) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    postfix = {"policy_enabled": True, "policy_port": port, "recipient_delimiter": "-"}
    async for _bot, _relay in running(database_url, smtp.port, tmp_path, postfix=postfix):
        answers = await ask(
            port,
            request(sender="chen@corp.example", recipient="eng-anything@corp.example"),
            request(sender="chen@corp.example", recipient="eng+x@corp.example"),  # no such address here
            request(sender="chen@corp.example", recipient="someone+x@corp.example"),
        )
        assert answers[0].startswith("action=REJECT 5.7.1") and "only members" in answers[0]
        assert answers[1:] == ["action=DUNNO", "action=DUNNO"]


async def test_an_address_that_is_a_group_itself_is_not_read_as_its_prefix(
    database_url, smtp, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    """With "-" as the delimiter, eng-open@ is its own group (moderate: nonmembers holds), not eng@."""
    port = free_port()
    postfix = {"policy_enabled": True, "policy_port": port, "recipient_delimiter": "-"}
    async for _bot, _relay in running(database_url, smtp.port, tmp_path, postfix=postfix):
        (answer,) = await ask(port, request(sender="chen@corp.example", recipient="eng-open@corp.example"))
        assert answer == "action=DUNNO"  # held at the end of the message, not refused as eng@'s


# Security tryout: anyone who reaches the MTA can claim sender=alice@corp.example. Only a client in
# postfix.trusted_networks (default loopback) or one logged in as that mailbox is believed.
async def test_a_company_sender_from_outside_the_trusted_networks_is_an_outsider(policy) -> None:  # type: ignore[no-untyped-def]
    _bot, port = policy
    outside = {"client_address": "203.0.113.9"}
    answers = await ask(
        port,
        request(sender="alice@corp.example", recipient="eng@corp.example", **outside),  # eng: post: members
        request(sender="alice@corp.example", recipient="all-staff@corp.example", **outside),  # company
        request(sender="hannah@corp.example", recipient="board@corp.example", instance="u1", **outside),
        request(
            protocol_state="END-OF-MESSAGE",
            sender="hannah@corp.example",
            instance="u1",
            size="10",
            queue_id="AAA111",
            **outside,
        ),
        request(sender="alice@corp.example", recipient="eng-open@corp.example", **outside),  # holds outsiders
        request(sender="partner@other.example", recipient="partners@corp.example", **outside),  # post: anyone
    )
    assert answers[0].startswith(
        "action=REJECT 5.7.1 <eng@corp.example>: only members of this group may post"
    )
    assert (
        "alice@corp.example is a company address" in answers[0] and "postfix.trusted_networks" in answers[0]
    )
    assert answers[1].startswith("action=REJECT 5.7.1 <all-staff@corp.example>: only people at corp.example")
    assert "SMTP AUTH" in answers[1]
    # hannah owns board@ (never held when she really sends), but from outside she is not believed
    assert answers[2] == "action=DUNNO"
    assert answers[3].startswith(
        "action=HOLD held for a moderator of board@corp.example: hannah@corp.example is"
    )
    assert answers[4:] == ["action=DUNNO", "action=DUNNO"]


async def test_smtp_auth_as_the_sender_is_believed_and_as_someone_else_is_not(policy) -> None:  # type: ignore[no-untyped-def]
    _bot, port = policy
    outside = {"client_address": "203.0.113.9"}
    answers = await ask(
        port,
        request(sender="alice@corp.example", recipient="eng@corp.example", sasl_username="alice", **outside),
        request(
            sender="alice@corp.example",
            recipient="eng@corp.example",
            sasl_username="Alice@Corp.Example",
            **outside,
        ),
        request(sender="alice@corp.example", recipient="eng@corp.example", sasl_username="chen", **outside),
        request(sender="alice@corp.example", recipient="eng@corp.example", client_address="::1"),
    )
    assert answers[0:2] == ["action=DUNNO", "action=DUNNO"]
    assert answers[2].startswith("action=REJECT 5.7.1") and "SMTP AUTH" in answers[2]
    assert answers[3] == "action=DUNNO"  # loopback is trusted by default


# Tryout finding: a long refusal was cut at 200 characters in the middle of a word ("...as that mai").
# Postfix sends the text on whole, after its own "554 5.7.1 <rcpt>: Recipient address rejected: ": the
# reply line must stay within RFC 5321's 512 octets, cut after a whole word, with "...".
def postfix_reply_line(answer: str, recipient: str) -> str:
    action, dsn, text = answer.removeprefix("action=").split(" ", 2)
    assert action == "REJECT" and dsn == "5.7.1", answer
    return f"554 {dsn} <{recipient}>: Recipient address rejected: {text}\r\n"


@pytest.mark.parametrize("local", ["alice", "a" * 60, "b" * 250, "c" * 290])
async def test_a_long_refusal_is_cut_after_a_whole_word_within_the_reply_line(policy, local: str) -> None:  # type: ignore[no-untyped-def]
    _bot, port = policy
    sender = f"{local}@corp.example"
    (answer,) = await ask(
        port, request(sender=sender, recipient="eng@corp.example", client_address="203.0.113.9")
    )
    full = (
        f"<eng@corp.example>: only members of this group may post to it, and {sender} is a company "
        "address, but mail from this client is taken as its sender only from postfix.trusted_networks or "
        "after SMTP AUTH as that mailbox"
    )
    line = postfix_reply_line(answer, "eng@corp.example")
    assert len(line.encode()) <= 512, (len(line), answer)
    text = answer.split(" ", 2)[2]
    if len(full) + 60 <= 510:  # fits: nothing cut
        assert text == full, answer
    else:
        assert text.endswith("...") and len(text) > 60, answer
        head = text.removesuffix("...")
        assert full.startswith(head) and full[len(head)] in " ,", answer  # after a whole word
        assert text.startswith("<eng@corp.example>: only members of this group may post to it"), answer


async def test_a_refusal_with_a_long_recipient_still_fits_one_reply_line(policy) -> None:  # type: ignore[no-untyped-def]
    _bot, port = policy
    recipient = "eng+" + "x" * 300 + "@corp.example"  # eng@ through the delimiter
    (answer,) = await ask(port, request(sender="chen@corp.example", recipient=recipient))
    assert len(postfix_reply_line(answer, recipient).encode()) <= 512, answer
    assert "only members of this group may post" in answer, answer


# Attacker tryout: the held-post decision lived only in memory. A flood of RCPT requests evicted it, and a
# restart of serve lost it; END-OF-MESSAGE then found nothing and answered DUNNO, so a post to a moderated
# group went out unmoderated. An END-OF-MESSAGE without a remembered decision is decided afresh from its
# own attributes, or deferred when they are not enough (several recipients): never DUNNO by default.
async def flood(port: int, count: int, client: str) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for start in range(0, count, 500):
            batch = range(start, min(count, start + 500))
            writer.write(
                b"".join(
                    request(
                        sender=f"f{i}@other.example",
                        recipient="partners@corp.example",
                        instance=f"flood{i}",
                        client_address=client,
                    )
                    for i in batch
                )
            )
            await writer.drain()
            for _ in batch:
                assert await asyncio.wait_for(reader.readuntil(b"\n\n"), 30) == b"action=DUNNO\n\n"
    finally:
        writer.close()


def end_of_message(instance: str, **attrs: str) -> bytes:
    return request(
        protocol_state="END-OF-MESSAGE", instance=instance, size="10", queue_id=f"Q{instance}", **attrs
    )


async def test_a_held_post_is_held_after_a_flood_evicts_its_decision(policy) -> None:  # type: ignore[no-untyped-def]
    _bot, port = policy
    victim = {"sender": "x@gmail.com", "client_address": "198.51.100.7"}
    assert await ask(port, request(recipient="board@corp.example", instance="victim1", **victim)) == [
        "action=DUNNO"
    ]
    assert await ask(port, request(recipient="board@corp.example", instance="victim2", **victim)) == [
        "action=DUNNO"
    ]
    assert await ask(port, request(recipient="board@corp.example", instance="victim3", **victim)) == [
        "action=DUNNO"
    ]
    await flood(port, 10_001, client="203.0.113.66")  # another client's flood evicts nothing of victim's
    # one RCPT, one recipient; no recipient named, so the remembered decision is what holds it
    (three,) = await ask(port, end_of_message("victim3", recipient_count="1", **victim))
    assert three.startswith("action=HOLD held for a moderator of board@corp.example"), three
    await flood(port, 1_001, client="198.51.100.7")  # victim's own client: its oldest entries go
    one, two = await ask(
        port,
        # Postfix names the recipient at the end of the message when there is exactly one
        end_of_message("victim1", recipient="board@corp.example", recipient_count="1", **victim),
        end_of_message("victim2", recipient_count="2", **victim),  # two recipients: not named
    )
    assert one.startswith("action=HOLD held for a moderator of board@corp.example"), one
    assert two.startswith("action=DEFER_IF_PERMIT ") and "try again later" in two, two


async def test_a_held_post_is_held_after_a_restart_between_rcpt_and_end_of_message(policy) -> None:  # type: ignore[no-untyped-def]
    bot, port = policy
    victim = {"sender": "x@gmail.com", "client_address": "198.51.100.7"}
    assert await ask(port, request(recipient="board@corp.example", instance="r1", **victim)) == [
        "action=DUNNO"
    ]
    old = bot.app.group_mail.policy
    await old.stop()
    fresh = PolicyService(old.ctx, old.moderation)  # a restarted serve remembers nothing
    await fresh.start(port=0)
    try:
        answers = await ask(
            fresh.port,
            end_of_message("r1", recipient="board@corp.example", recipient_count="1", **victim),
            end_of_message("r2", recipient_count="3", **victim),
            end_of_message("r3", recipient="eng@corp.example", sender="chen@corp.example"),
            end_of_message("r4", recipient="someone@corp.example", sender="chen@corp.example"),
            request(protocol_state="DATA", instance="r5", recipient_count="2", **victim),
        )
    finally:
        await fresh.stop()
    assert answers[0].startswith("action=HOLD held for a moderator of board@corp.example"), answers
    assert answers[1].startswith("action=DEFER_IF_PERMIT "), answers
    assert answers[2].startswith("action=REJECT 5.7.1 <eng@corp.example>: only members"), answers
    assert answers[3] == "action=DUNNO"  # not a group: ordinary mail
    assert answers[4].startswith("action=DEFER_IF_PERMIT "), answers
    log = await bot.say("hannah@corp.example", "/posts board")
    assert "x@gmail.com" in log


async def test_ordinary_mail_to_several_people_is_not_deferred(policy) -> None:  # type: ignore[no-untyped-def]
    _bot, port = policy
    answers = await ask(
        port,
        request(sender="chen@corp.example", recipient="a@corp.example", instance="m1"),
        request(sender="chen@corp.example", recipient="b@corp.example", instance="m1"),
        request(protocol_state="DATA", sender="chen@corp.example", instance="m1", recipient_count="2"),
        end_of_message("m1", sender="chen@corp.example", recipient_count="2"),
    )
    assert answers == ["action=DUNNO"] * 4


# Tryout finding: an END-OF-MESSAGE with nothing remembered, naming recipient=someone@ (no group) with
# recipient_count=2, was decided from that one recipient and answered DUNNO. Postfix names the recipient at
# DATA and END-OF-MESSAGE only when the message has exactly one (SMTPD_POLICY_README); with more, the
# other recipient may be a group, so the answer is postfix.on_error (the client retries), never DUNNO.
@pytest.mark.parametrize("state", ["END-OF-MESSAGE", "DATA"])
async def test_one_named_recipient_of_several_is_not_the_whole_message(policy, state: str) -> None:  # type: ignore[no-untyped-def]
    bot, port = policy
    old = bot.app.group_mail.policy
    await old.stop()
    fresh = PolicyService(old.ctx, old.moderation)  # nothing remembered: a restart between RCPT and here
    await fresh.start(port=0)
    outsider = {"sender": "x@gmail.com", "client_address": "198.51.100.7", "protocol_state": state}
    try:
        answers = await ask(
            fresh.port,
            request(instance="n1", recipient="someone@corp.example", recipient_count="2", **outsider),
            request(instance="n2", recipient="board@corp.example", recipient_count="2", **outsider),
            request(instance="n3", recipient="someone@corp.example", recipient_count="x", **outsider),
            request(instance="n4", recipient="someone@corp.example", recipient_count="0", **outsider),
            # exactly one, or no count at all (Postfix before 2.3): decided afresh from it
            request(instance="n5", recipient="someone@corp.example", recipient_count="1", **outsider),
            request(instance="n6", recipient="someone@corp.example", **outsider),
        )
    finally:
        await fresh.stop()
    assert all(a.startswith("action=DEFER_IF_PERMIT ") for a in answers[:4]), answers
    assert answers[4:] == ["action=DUNNO", "action=DUNNO"], answers


async def test_a_flood_between_two_rcpts_cannot_drop_the_group_of_a_message(policy) -> None:  # type: ignore[no-untyped-def]
    """RCPT board@ (held for an outsider), a flood from the same client evicts that decision, RCPT
    someone@ starts the message afresh: END-OF-MESSAGE with two recipients found one remembered, no
    group among it, and answered DUNNO — board@'s moderation skipped."""
    _bot, port = policy
    victim = {"sender": "x@gmail.com", "client_address": "198.51.100.7"}
    assert await ask(port, request(recipient="board@corp.example", instance="two", **victim)) == [
        "action=DUNNO"
    ]
    await flood(port, 1_001, client="198.51.100.7")
    answers = await ask(
        port,
        request(recipient="someone@corp.example", instance="two", **victim),
        request(protocol_state="DATA", instance="two", recipient_count="2", **victim),
        end_of_message("two", recipient_count="2", **victim),
        # all of a message's RCPTs remembered: decided as before
        request(recipient="someone@corp.example", instance="whole", **victim),
        request(recipient="board@corp.example", instance="whole", **victim),
        request(protocol_state="DATA", instance="whole", recipient_count="2", **victim),
        end_of_message("whole", recipient_count="2", **victim),
    )
    assert answers[0] == "action=DUNNO"
    assert answers[1].startswith("action=DEFER_IF_PERMIT ") and "try again later" in answers[1], answers
    assert answers[2].startswith("action=DEFER_IF_PERMIT "), answers
    assert answers[3:6] == ["action=DUNNO"] * 3, answers
    assert answers[6].startswith("action=HOLD held for a moderator of board@corp.example"), answers


async def test_a_flood_between_rcpts_is_caught_even_when_a_later_rcpt_is_rejected(policy) -> None:  # type: ignore[no-untyped-def]
    """The RCPT count alone misses this: RCPT board@ (remembered, then evicted by a flood), RCPT someone@
    and RCPT other@ remembered afresh, other@ then rejected by a later Postfix restriction, so Postfix
    counts 2 recipients and 2 RCPTs are remembered. The evicted message's name is kept: deferred."""
    _bot, port = policy
    victim = {"sender": "x@gmail.com", "client_address": "198.51.100.7"}
    assert await ask(port, request(recipient="board@corp.example", instance="split", **victim)) == [
        "action=DUNNO"
    ]
    await flood(port, 1_001, client="198.51.100.7")
    answers = await ask(
        port,
        request(recipient="someone@corp.example", instance="split", **victim),
        request(recipient="other@corp.example", instance="split", **victim),
        end_of_message("split", recipient_count="2", **victim),
    )
    assert answers[:2] == ["action=DUNNO", "action=DUNNO"]
    assert answers[2].startswith("action=DEFER_IF_PERMIT ") and "try again later" in answers[2], answers


async def test_serve_names_the_policy_service_where_it_listens(policy) -> None:  # type: ignore[no-untyped-def]
    """serve's "Listening:" line named the web app and the relay but not the policy service Postfix is to be
    pointed at (check_policy_service inet:host:port)."""
    from bot.app import Runtime
    from bot.cli import startup_lines

    bot, port = policy
    listening = next(
        x for x in startup_lines(bot.app.ctx.settings, Runtime(bot.app)) if x.startswith("Listening")
    )
    assert f"Postfix policy service 127.0.0.1:{port}" in listening, listening
    await bot.app.group_mail.policy.stop()
    listening = next(
        x for x in startup_lines(bot.app.ctx.settings, Runtime(bot.app)) if x.startswith("Listening")
    )
    assert "policy" not in listening, listening
