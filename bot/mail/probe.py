"""Whether the configured relay (`[smtp]`) answers: connect, EHLO, STARTTLS and AUTH when configured.

`postroom serve` runs it once at start and warns (one sentence) rather than refusing to start: the relay
may come up later, and campaign mail waits for it. `postroom doctor` reports the same sentence.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import replace

from bot.mail.transport import SmtpTarget, SmtpTransport, _setup_outcome, _SetupFailed

PROBE_TIMEOUT_S = 5.0


async def relay_problem(relay: SmtpTarget, timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
    """One sentence saying why the relay can't take Postroom's mail, naming the key to check; None when
    it connected, greeted and (if its username is set) accepted the login."""
    target = replace(relay, timeout_s=min(relay.timeout_s, timeout_s))
    transport = SmtpTransport(target, 1)
    where, keys = relay.where, relay.keys
    try:
        client = await asyncio.wait_for(transport._connect(), timeout_s + 1)
    except TimeoutError:
        return (
            f"The mail relay at {where} did not answer within {timeout_s:g} s; check {keys}.host and "
            f"{keys}.port (campaign mail and group posts wait until it answers)."
        )
    except _SetupFailed as exc:
        outcome = _setup_outcome(exc, "")
        detail = outcome.detail or "no reply"
        if exc.stage == "connect" and outcome.fault == "connection":
            return (
                f"The mail relay at {where} can't be reached ({detail}); check {keys}.host and {keys}.port "
                "(campaign mail and group posts wait until it answers)."
            )
        if exc.stage == "auth":
            return (
                f"The mail relay at {where} refused Postroom's login ({detail}); check {keys}.username and "
                f"{keys}.password."
            )
        if exc.stage == "starttls":
            return f"The mail relay at {where} failed STARTTLS ({detail}); check {keys}.starttls and {keys}.port."
        return f"The mail relay at {where} failed at {exc.stage.upper()} ({detail}); check {keys}.host and {keys}.port."
    with contextlib.suppress(Exception):
        await client.quit()
    client.close()
    return None
