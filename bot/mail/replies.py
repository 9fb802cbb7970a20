"""Whose fault an SMTP failure is (invariant 8): only the recipient's own permanent failure suppresses.

Postroom always talks to one relay (`smtp.host`), never to recipients' servers, so most refusals are
about us — the login, the sender, the relay's policy, the message — and would hit every recipient alike.
Suppressing on those would empty the audience for good; they pause the send instead.

`fault` says what a failure means for the send:

| fault        | meaning                                             | the delivery                  | the campaign |
|--------------|-----------------------------------------------------|-------------------------------|--------------|
| `recipient`  | this address is permanently undeliverable           | `bounced`, address suppressed | goes on      |
| `rejected`   | this message to this recipient refused, address not | `failed`, nobody suppressed   | goes on      |
|              | shown to be bad (policy, routing, too big for them)  |                               |              |
| `transient`  | 4xx, or a full mailbox: may work later              | retried with backoff          | goes on (*)  |
| `sender`     | the envelope sender or the message itself refused   | stays `pending`, not counted  | pauses now   |
| `auth`       | login refused, or the relay won't relay for us      | stays `pending`, not counted  | pauses now   |
| `server`     | the relay misbehaves or is misconfigured            | stays `pending`, not counted  | pauses now   |
| `connection` | no SMTP conversation (refused, reset, timeout, TLS) | stays `pending`, not counted  | pauses now   |

(*) A transient failure not about the recipient (a 4xx at connect, login, MAIL or DATA, or a 421) that outlasts
`max_attempts` pauses the campaign rather than failing the recipient; the error window pauses on a
high share of failures of any kind.

How a reply is read, by stage and RFC 3463 enhanced status code (used when its class matches the reply
code), else by the reply's basic code and words; the first matching row wins. Addresses in the reply are
ignored when reading its words (<password@example.com> is not about a password).

| stage                   | reply                                                              | fault        |
|-------------------------|--------------------------------------------------------------------|--------------|
| any                     | no reply at all (refused, reset, timed out, TLS failed)            | `connection` |
| any                     | 4xx (421 never counts against the recipient)                       | `transient`  |
| connect, EHLO, STARTTLS | 5xx; STARTTLS or AUTH not offered when the settings ask for it      | `server`/`auth` |
| AUTH                    | 5xx (535 5.7.8 bad credentials, 534, 538, 504 mechanism)           | `auth`       |
| MAIL, RCPT, DATA        | 530, 534, 535, 538; 5.7.8/9/11/12/13/14; "authentication" words    | `auth`       |
| MAIL                    | 500–504, 5.5.x, 5.3.x but 5.3.4                                    | `server`     |
| MAIL                    | any other 5xx (550/553 sender refused, 5.1.7/5.1.8, 5.3.4 size)    | `sender`     |
| RCPT                    | 5.1.7, 5.1.8, 5.7.20–5.7.27 (our sender; SPF/DKIM/DMARC)           | `sender`     |
| RCPT                    | 5.1.x (unknown user, bad domain, syntax, moved, null MX), 5.2.0,   | `recipient`  |
|                         | 5.2.1 disabled, 5.7.17/5.7.18 owner changed — even when the text   |              |
|                         | says "relay" (Postfix: "User unknown in relay recipient table")    |              |
| RCPT                    | 5.2.2 mailbox full                                                 | `transient`  |
| RCPT                    | 5.3.x, 5.5.x, 500–504                                              | `server`     |
| RCPT                    | words naming the sender ("Sender address rejected", the return path)| `sender`     |
| RCPT                    | "Client host rejected", "Helo command rejected"                    | `server`     |
| RCPT                    | 5.2.3/5.2.4, 5.4.x routing, 5.6.x content                          | `rejected`   |
| RCPT                    | 5.7.x with "relay" (Relay access denied, Unable to relay)          | `auth`       |
| RCPT                    | other 5.7.x (policy)                                               | `rejected`   |
| RCPT, no usable code    | "relay" without words of a missing user                            | `auth`       |
| RCPT, no usable code    | words of a missing user; 550, 551, 553, 521, 556 (unproven: below) | `recipient`  |
| RCPT, no usable code    | 552 storage exceeded                                               | `transient`  |
| RCPT, no usable code    | 554 and the rest                                                   | `rejected`   |
| DATA                    | 5.1.7, 5.1.8                                                       | `sender`     |
| DATA                    | other 5.1.x, 5.2.1 (a late verdict on the address)                 | `recipient`  |
| DATA                    | 5.2.2                                                              | `transient`  |
| DATA                    | 5.2.3 (too big for this mailbox)                                   | `rejected`   |
| DATA                    | 5.3.4, 5.6.x, 5.7.x (size, content, SPF/DKIM/DMARC)                | `sender`     |
| DATA                    | the rest (500 misconfigured relay, 554, a bare 550, 5.3.x, 5.5.x)  | `server`     |

An RCPT refusal read as `recipient` without an enhanced code (`Outcome.unproven`: "550 Requested action
not taken: mailbox unavailable") is what a relay that refuses everyone says too, so the campaign engine
counts it against the recipient only once it is shown to be theirs: a later message to the same domain
over the same connection (`Outcome.connection`) was delivered, in that batch or a later one. The same
reply (addresses aside) over one connection for `campaigns.same_refusal_limit` distinct recipients in a
row at more than one domain (or before anything was delivered), with no delivery in between, is the
server's: the campaign pauses at once and none of them is suppressed (they go back to `pending`). One
that no delivery proves is retried, and after `max_attempts` fails unsuppressed (bot/campaigns/engine.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Fault = Literal["recipient", "rejected", "transient", "sender", "auth", "server", "connection"]
Stage = Literal["connect", "ehlo", "starttls", "auth", "mail", "rcpt", "data"]

STOPS_SEND: frozenset[str] = frozenset({"sender", "auth", "server", "connection"})
STAGE_NAMES = {
    "connect": "connect",
    "ehlo": "EHLO",
    "starttls": "STARTTLS",
    "auth": "AUTH",
    "mail": "MAIL FROM",
    "rcpt": "RCPT TO",
    "data": "DATA",
}
MAX_DETAIL = 300  # a server's reply can be long; what is stored and shown is bounded

_ENHANCED = re.compile(r"(?:^|\s)([245])\.(\d{1,3})\.(\d{1,3})(?=\s|$|[;:,.)\]])")
_ADDRESS = re.compile(r"<[^>]*>|[^\s<>]+@[^\s<>]+")
_AUTH_WORDS = ("authenticat", "credential", "not logged in", "password", "login")
_RECIPIENT_WORDS = (
    "user unknown",
    "unknown user",
    "no such user",
    "no such mailbox",
    "no such recipient",
    "unknown recipient",
    "recipient unknown",
    "mailbox unavailable",
    "mailbox not found",
    "does not exist",
    "doesn't exist",
    "invalid recipient",
    "recipient address rejected",
)
_SERVER_WORDS = ("client host rejected", "helo command rejected", "helo ")


@dataclass(frozen=True)
class Outcome:
    """What became of one message to one recipient."""

    ok: bool
    fault: Fault | None = None  # None when ok
    stage: Stage | None = None  # where in the SMTP conversation it failed
    code: int | None = None  # the reply code; None when there was no reply
    status: str = ""  # the RFC 3463 enhanced status code the server gave, e.g. "5.1.1"
    detail: str = ""  # the reply as the server wrote it ("550 5.1.1 no such user"), bounded
    # Which of the transport's connections answered (numbered as opened; None: none was open). A bare
    # refusal is proven only by a delivery over the same connection (bot/campaigns/engine.py).
    connection: int | None = None

    @property
    def transient(self) -> bool:
        """Another try may work (a 4xx, or the connection broke)."""
        return self.fault in ("transient", "connection")

    @property
    def stops_send(self) -> bool:
        """A failure of the send itself (server, login, sender, connection): pause, change nobody."""
        return self.fault in STOPS_SEND

    @property
    def unproven(self) -> bool:
        """A refusal at RCPT read as the recipient's only from its basic code or words (a bare "550
        mailbox unavailable", no enhanced code naming the mailbox): a relay that refuses everyone says
        the same. It counts against the recipient only once shown to be theirs (bot/campaigns/engine.py)."""
        return self.fault == "recipient" and self.stage == "rcpt" and self.status in ("", "5.0.0")

    def same_reply(self) -> str:
        """The reply without the addresses in it, to tell one reply repeated for everyone."""
        return reply_key(self.detail)

    @property
    def about_recipient(self) -> bool:
        """The failure concerns this recipient, not every message (it may count against them)."""
        if self.fault in ("recipient", "rejected"):
            return True
        if self.fault != "transient" or self.code == 421:  # 421: the server is closing the channel
            return False
        return self.stage == "rcpt" or (self.stage == "data" and self.status[2:4] in ("1.", "2."))


def reply_key(detail: str) -> str:
    """A reply without the addresses in it, lower case: the same for a reply repeated for everyone."""
    return " ".join(_ADDRESS.sub("<>", detail.lower()).split())


def sent(code: int = 250, connection: int | None = None) -> Outcome:
    return Outcome(ok=True, code=code, connection=connection)


def no_reply(stage: Stage, error: BaseException | str) -> Outcome:
    """The connection failed before or while talking: refused, reset, timed out, TLS."""
    text = " ".join("".join(c if c.isprintable() else " " for c in str(error)).split())[:MAX_DETAIL]
    text = text or type(error).__name__
    return Outcome(ok=False, fault="connection", stage=stage, detail=f"connection failed: {text}")


def enhanced_status(code: int, message: str) -> str:
    """The enhanced status code in a reply, if its class matches the reply code's ("" otherwise)."""
    m = _ENHANCED.search(message[:200])
    if m is None or m.group(1) != str(code)[:1]:
        return ""
    return ".".join(m.groups())


def classify(stage: Stage, code: int, message: str, *, sender: str = "") -> Outcome:
    """Read a reply that refused something at `stage`; `sender` is the envelope sender (MAIL FROM)."""
    # A reply is shown in chat and stored as evidence: one line, nothing that could steer a terminal.
    message = " ".join("".join(c if c.isprintable() else " " for c in message).split())
    detail = f"{code} {message}".strip()[:MAX_DETAIL]
    status = enhanced_status(code, message)
    if 200 <= code < 400:
        return Outcome(ok=True, code=code, detail=detail)
    # Words are read without the addresses in the reply: <password@example.com> is not about a password.
    words = _ADDRESS.sub(" ", message.lower())
    names_sender = "sender" in words or (bool(sender) and sender.lower() in message.lower())
    fault = _fault(stage, code, status, words, names_sender)
    return Outcome(ok=False, fault=fault, stage=stage, code=code, status=status, detail=detail)


def _fault(stage: Stage, code: int, status: str, text: str, names_sender: bool) -> Fault:
    if code < 500:
        return "transient"
    subject = status[2:].partition(".")[0]
    sd = status[2:]  # subject.detail, e.g. "1.1"
    if stage in ("connect", "ehlo", "starttls"):
        return "server"
    if stage == "auth" or _about_auth(code, sd, text):
        return "auth"
    if stage == "mail":
        if 500 <= code <= 504 or subject == "5" or (subject == "3" and sd != "3.4"):
            return "server"
        return "sender"
    if stage == "rcpt":
        return _rcpt_fault(code, subject, sd, text, names_sender)
    # DATA: one recipient per transaction, so a code about the address is a late verdict on it;
    # anything else is about the message or the relay, the same for every recipient.
    if sd in ("1.7", "1.8"):
        return "sender"
    if subject == "1" or sd == "2.1":
        return "recipient"
    if sd == "2.2":
        return "transient"
    if sd == "2.3":
        return "rejected"
    if sd == "3.4" or subject in ("6", "7"):
        return "sender"
    return "server"


def _about_auth(code: int, sd: str, text: str) -> bool:
    if code in (530, 534, 535, 538):
        return True
    if sd in ("7.8", "7.9", "7.11", "7.12", "7.13", "7.14"):
        return True
    return (sd in ("", "0.0", "7.0", "7.1")) and any(w in text for w in _AUTH_WORDS)


def _rcpt_fault(code: int, subject: str, sd: str, text: str, names_sender: bool) -> Fault:
    if sd in ("1.7", "1.8") or sd in {f"7.{n}" for n in range(20, 28)}:
        return "sender"
    if subject == "1" or sd in ("2.0", "2.1", "7.17", "7.18"):
        return "recipient"  # the relay's own verdict on the address, even if its text says "relay"
    if sd == "2.2":
        return "transient"
    if subject in ("3", "5") or (500 <= code <= 504):
        return "server"
    if names_sender:
        return "sender"
    if any(w in text for w in _SERVER_WORDS):
        return "server"
    if subject in ("2", "4", "6"):
        return "rejected"
    if subject == "7":
        return "auth" if "relay" in text else "rejected"
    # No usable enhanced code (or 5.0.0): the basic code and the words.
    if "relay" in text and not any(w in text for w in _RECIPIENT_WORDS):
        return "auth"
    if any(w in text for w in _RECIPIENT_WORDS) or code in (550, 551, 553, 521, 556):
        return "recipient"
    if code == 552:
        return "transient"
    return "rejected"
