"""One recipient domain that refuses every address with a bare 550 (its provider refuses the relay, or the
relay cannot reach it) must not stall a campaign to everyone else: the domain is deferred — its messages
wait and are tried again later, nobody there is suppressed — and its refusals stop counting toward the
campaign-wide error window, so the other domains keep flowing.

Against a real aiosmtpd relay on loopback answering per recipient (tests/smtp_faults.py) and a real database.
"""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest

from bot.db.models import Delivery
from tests.conftest import APPROVER, SENDER
from tests.smtp_faults import FaultyServer
from tests.test_campaign_delivery import deliveries, make_bot, state_of, until
from tests.test_send_failures import (
    GENERIC_550,
    audience_of,
    received,
    said,
    statuses,
    suppressed_emails,
)

__all__ = ["make_bot"]  # the fixture, used by name
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")  # loopback only

SIZE = 267
# example.org is 4 in 7 of the audience: more than error_pause_share of any window of messages
PATTERN = [
    "example.net",
    "example.org",
    "example.com",
    "example.org",
    "partner.example",
    "example.org",
    "example.org",
]
EMAILS = [f"c{i}@{PATTERN[i % len(PATTERN)]}" for i in range(SIZE)]
ORG = [e for e in EMAILS if e.endswith("@example.org")]
UNKNOWN = "c2@example.com"
USER_UNKNOWN = "550 5.1.1 <c2@example.com>: Recipient address rejected: User unknown"
OTHERS = [e for e in EMAILS if e not in ORG and e != UNKNOWN]


def deferral(bot) -> list[str]:  # type: ignore[no-untyped-def]
    return [text for text in said(bot) if "example.org refused" in text]


def tries(server: FaultyServer) -> Counter[str]:
    """How often the relay was actually asked to take each address and refused it."""
    return Counter(r.removeprefix("RCPT ") for r in server.handler.refused if r.startswith("RCPT "))


async def org_rows(bot) -> dict[str, Delivery]:  # type: ignore[no-untyped-def]
    return {e: d for e, d in (await deliveries(bot, "spring")).items() if e in ORG}


async def start(bot, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    to = await audience_of(bot, tmp_path, "many", EMAILS)
    assert "Draft campaign" in await bot.say(SENDER, f"/campaign new spring --to {to} --template welcome")
    assert "Submitted" in await bot.say(SENDER, "/campaign submit spring")
    assert "Approved" in await bot.say(APPROVER, "/approve spring")  # its run goes on: no settle


async def deferred_again(bot, server: FaultyServer, before: int) -> bool:  # type: ignore[no-untyped-def]
    """The relay refused example.org once more since `before` refusals, and every row there is recorded as
    waiting for the next deferral's end (or given up)."""
    if len(server.handler.refused) <= before:
        return False
    now = bot.core.ctx.now()
    rows = (await org_rows(bot)).values()
    return all(
        d.status == "failed" or (d.status == "pending" and d.next_attempt_at and d.next_attempt_at > now)
        for d in rows
    )


# Tryout: the error window paused the campaign ("27 of the last 51 messages failed"), and every resume sent
# fewer (25, 13, 6, 3) because the domain's refused rows went back to the front of the queue.
async def test_one_domain_refusing_everyone_is_deferred_and_the_others_are_all_delivered(
    make_bot, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    with FaultyServer() as server:
        server.handler.domain_replies["example.org"] = GENERIC_550
        server.handler.rcpt_replies[UNKNOWN] = USER_UNKNOWN
        bot = await make_bot(smtp_section={"port": server.port}, retry_base_s=600)
        await start(bot, tmp_path)

        async def others_done() -> bool:
            return received(server) == Counter(dict.fromkeys(OTHERS, 1)) and await deferred_again(
                bot, server, 0
            )

        await until(others_done, timeout=30)
        assert await state_of(bot, "spring") == "sending", said(bot)
        assert not [text for text in said(bot) if "Paused by itself" in text], said(bot)
        assert await suppressed_emails(bot) == [UNKNOWN]
        counts = await statuses(bot, "spring")
        assert counts[("sent", 1)] == len(OTHERS) and counts[("bounced", 1)] == 1
        # Every example.org row waits, counting only the tries the relay really refused.
        rows, tried = await org_rows(bot), tries(server)
        assert {d.status for d in rows.values()} == {"pending"}, counts
        assert {e: d.attempts for e, d in rows.items()} == {e: tried[e] for e in ORG}
        assert sum(1 for e in ORG if not tried[e]) > len(ORG) // 2, tried
        told = deferral(bot)
        assert len(told) == 1, said(bot)
        assert GENERIC_550 in told[0] and "Nobody was suppressed" in told[0], told


# Review: each re-probe after a deferral put every claimed row of the domain back with an attempt counted,
# so after max_attempts deferrals the whole domain was "gave up after N attempts" — and the campaign
# "completed" — though the relay had been asked about one address per deferral.
async def test_a_domain_deferred_many_times_loses_nobody_who_was_never_tried(
    make_bot, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    attempts = 4
    with FaultyServer() as server:
        server.handler.domain_replies["example.org"] = GENERIC_550
        server.handler.rcpt_replies[UNKNOWN] = USER_UNKNOWN
        bot = await make_bot(
            smtp_section={"port": server.port}, retry_base_s=600, retry_max_s=600, max_attempts=attempts
        )
        await start(bot, tmp_path)

        async def others_done() -> bool:
            return received(server) == Counter(dict.fromkeys(OTHERS, 1)) and await deferred_again(
                bot, server, 0
            )

        await until(others_done, timeout=30)
        clock = bot.core.ctx.clock
        for waited in range(1, attempts):  # each wait over, the domain's first refusal defers it again
            before = len(server.handler.refused)
            bot.core.ctx.clock = lambda waited=waited: clock() + timedelta(seconds=601 * waited)
            await until(lambda before=before: deferred_again(bot, server, before), timeout=30)
        assert await state_of(bot, "spring") == "sending", said(bot)
        rows, tried = await org_rows(bot), tries(server)
        assert {e: d.attempts for e, d in rows.items()} == {e: tried[e] for e in ORG}
        assert sum(1 for e in ORG if not tried[e]) > len(ORG) // 2, tried
        given_up = {e for e, d in rows.items() if d.status == "failed"}
        assert given_up == {e for e in ORG if tried[e] >= attempts}, tried  # the probe, tried each time
        assert all(
            rows[e].last_error.startswith(f"gave up after {attempts} attempts, not suppressed")
            for e in given_up
        )
        assert len(deferral(bot)) == 1, said(bot)

        server.handler.fix()  # the provider takes mail again
        bot.core.ctx.clock = lambda: clock() + timedelta(seconds=601 * attempts)  # and the wait is over
        await bot.settle()
        assert await state_of(bot, "spring") == "completed", said(bot)
        assert received(server) == Counter(
            dict.fromkeys([*OTHERS, *(e for e in ORG if e not in given_up)], 1)
        )
        assert await suppressed_emails(bot) == [UNKNOWN]
        assert not [text for text in said(bot) if "Paused by itself" in text], said(bot)
