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

from tests.conftest import APPROVER, SENDER
from tests.smtp_faults import FaultyServer
from tests.test_campaign_delivery import make_bot, state_of, until
from tests.test_send_failures import (
    GENERIC_550,
    approve,
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


# Tryout: the error window paused the campaign ("27 of the last 51 messages failed"), and every resume sent
# fewer (25, 13, 6, 3) because the domain's refused rows went back to the front of the queue.
async def test_one_domain_refusing_everyone_is_deferred_and_the_others_are_all_delivered(
    make_bot, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    with FaultyServer() as server:
        server.handler.domain_replies["example.org"] = GENERIC_550
        server.handler.rcpt_replies[UNKNOWN] = USER_UNKNOWN
        bot = await make_bot(smtp_section={"port": server.port})
        to = await audience_of(bot, tmp_path, "many", EMAILS)
        await approve(bot, "spring", to)
        assert await state_of(bot, "spring") == "completed", said(bot)
        assert not [text for text in said(bot) if "Paused by itself" in text], said(bot)
        assert received(server) == Counter(dict.fromkeys(OTHERS, 1))
        assert await suppressed_emails(bot) == [UNKNOWN]
        counts = await statuses(bot, "spring")
        assert counts[("sent", 1)] == len(OTHERS) and counts[("bounced", 1)] == 1
        failed = sum(n for (status, _attempts), n in counts.items() if status == "failed")
        assert failed == len(ORG), counts
        told = deferral(bot)
        assert len(told) == 1, said(bot)
        assert GENERIC_550 in told[0] and "Nobody was suppressed" in told[0], told


async def test_a_deferred_domain_is_delivered_once_it_accepts_mail_again(make_bot, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with FaultyServer() as server:
        server.handler.domain_replies["example.org"] = GENERIC_550
        server.handler.rcpt_replies[UNKNOWN] = USER_UNKNOWN
        bot = await make_bot(smtp_section={"port": server.port}, retry_base_s=600)
        to = await audience_of(bot, tmp_path, "many", EMAILS)
        assert "Draft campaign" in await bot.say(SENDER, f"/campaign new spring --to {to} --template welcome")
        assert "Submitted" in await bot.say(SENDER, "/campaign submit spring")
        assert "Approved" in await bot.say(APPROVER, "/approve spring")  # its run goes on: no settle

        async def others_done() -> bool:
            return received(server) == Counter(dict.fromkeys(OTHERS, 1)) and bool(deferral(bot))

        await until(others_done, timeout=30)
        assert await state_of(bot, "spring") == "sending", said(bot)
        assert await suppressed_emails(bot) == [UNKNOWN]
        told = deferral(bot)
        assert len(told) == 1 and "tried again from" in told[0], told
        server.handler.fix()  # the provider takes mail again
        clock = bot.core.ctx.clock
        bot.core.ctx.clock = lambda: clock() + timedelta(seconds=601)  # and the wait is over
        await bot.settle()
        assert await state_of(bot, "spring") == "completed", said(bot)
        assert received(server) == Counter(dict.fromkeys([*OTHERS, *ORG], 1))
        assert await suppressed_emails(bot) == [UNKNOWN]
        assert not [text for text in said(bot) if "Paused by itself" in text], said(bot)
