"""The policy service speaks Postfix's attribute protocol, answers every request within its bound, and
turns garbage, oversize requests and its own failures into one answer, never a hang or a traceback."""

from __future__ import annotations

import asyncio

import pytest

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
