"""The sentence a campaign pauses with when the send itself fails (bot/mail/replies.py: `stops_send`).

Each names the server's reply and the setting to check, so whoever reads it in the approvals chat or in
`/campaign status` can fix it and `/campaign resume`. Stored with `notes.note`, so each reader sees it in
their own language.
"""

from __future__ import annotations

from datetime import datetime

from bot.campaigns.notes import note
from bot.mail.replies import STAGE_NAMES, Outcome


def pause_note(outcome: Outcome, *, server: str, keys: str, sender: str, name: str) -> str:
    """`keys` is where the route's settings live (`smtp`, `smtp.routes.<name>`): the sentence names the very
    setting to change."""
    reply = outcome.detail or "no reply"
    stage = STAGE_NAMES.get(outcome.stage or "", outcome.stage or "?")
    if outcome.fault == "connection":
        return note(
            "Paused by itself: Postroom could not talk to the mail server at {server} ({reply}, at {stage}). "
            "Check {keys}.host, {keys}.port and {keys}.starttls, and that the server is running. Nobody was "
            "suppressed; /campaign resume {name} continues where it stopped.",
            server=server,
            keys=keys,
            reply=reply,
            stage=stage,
            name=name,
        )
    if outcome.fault == "auth" and outcome.stage == "auth":
        return note(
            "Paused by itself: the mail server at {server} refused Postroom's login ({reply}). Check "
            "{keys}.username and {keys}.password. Nobody was suppressed; /campaign resume {name} continues "
            "where it stopped.",
            server=server,
            keys=keys,
            reply=reply,
            name=name,
        )
    if outcome.fault == "auth":
        return note(
            "Paused by itself: the mail server at {server} does not let Postroom send through it ({reply}, "
            "at {stage}). Check {keys}.username and {keys}.password, and that the server relays mail from this "
            "host. Nobody was suppressed; /campaign resume {name} continues where it stopped.",
            server=server,
            keys=keys,
            reply=reply,
            stage=stage,
            name=name,
        )
    if outcome.fault == "sender" and outcome.stage == "data":
        return note(
            "Paused by itself: the mail server at {server} refused the message itself ({reply}). Check "
            "campaigns.from_address against the server's sender policy (SPF, DKIM) and the message's "
            "content. Nobody was suppressed; /campaign resume {name} continues where it stopped.",
            server=server,
            reply=reply,
            name=name,
        )
    if outcome.fault == "sender":
        return note(
            "Paused by itself: the mail server at {server} refused the sender {sender} ({reply}). Check "
            "campaigns.from_address and campaigns.bounce_domain against the server's sender policy. "
            "Nobody was suppressed; /campaign resume {name} continues where it stopped.",
            server=server,
            sender=sender,
            reply=reply,
            name=name,
        )
    if outcome.fault == "transient":
        return note(
            "Paused by itself: the mail server at {server} kept answering {reply} at {stage}, which is not "
            "about any recipient. Nobody was suppressed; /campaign resume {name} tries again.",
            server=server,
            reply=reply,
            stage=stage,
            name=name,
        )
    return note(
        "Paused by itself: the mail server at {server} answered {reply} at {stage}, which is not about any "
        "recipient. Check that {keys}.host and {keys}.port point at a mail relay configured to accept this "
        "mail. Nobody was suppressed; /campaign resume {name} continues where it stopped.",
        server=server,
        keys=keys,
        reply=reply,
        stage=stage,
        name=name,
    )


def deferred_domain_note(outcome: Outcome, *, domain: str, count: int, until: datetime, name: str) -> str:
    """One recipient domain refuses everyone while the others take mail: its messages wait, the campaign goes
    on (bot/campaigns/engine.py, `_DomainBreaker`)."""
    return note(
        "{domain} refused {count} recipients in a row with the same reply ({reply}) while other domains took "
        "mail: its messages in {name} wait and are tried again from {time}. Nobody was suppressed; the other "
        "domains keep going.",
        domain=domain,
        count=count,
        reply=outcome.detail or "no reply",
        name=name,
        time=until.strftime("%H:%M UTC"),
    )


def repeated_refusal_note(outcome: Outcome, *, count: int, server: str, name: str) -> str:
    """The same bare 5xx at RCPT (no enhanced code naming the mailbox) for `count` recipients in a row with
    nothing delivered in between: the relay refuses everyone, so none of them is suppressed
    (bot/mail/replies.py, `Outcome.unproven`)."""
    return note(
        "Paused by itself: the mail server at {server} refused {count} recipients in a row with the same "
        "reply ({reply}) and no status code naming the mailbox, which is the server's doing, not theirs. "
        "Check the mail server. Nobody was suppressed; /campaign resume {name} continues where it stopped.",
        server=server,
        count=count,
        reply=outcome.detail or "no reply",
        name=name,
    )
