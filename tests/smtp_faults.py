"""A mail relay on loopback that fails the way real ones do when they are misconfigured: it refuses the
login (535), the sender (550/553 at MAIL FROM), every recipient for a reason that is not theirs (554 5.7.1
relay access denied), or the message (500/554 at DATA) — and can be fixed while the test runs.

It is the real aiosmtpd server with AUTH (LOGIN and PLAIN, without TLS on loopback), recording what it
accepted like tests/smtp.py. Only the replies it gives are scripted.
"""

from __future__ import annotations

import secrets
import warnings
from dataclasses import dataclass, field

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from tests.smtp import RecordingHandler, free_port

USERNAME = "postroom"
# Made per run: `postroom serve` refuses a password that is printed in Postroom's source.
PASSWORD = "right-" + secrets.token_urlsafe(12)


@dataclass
class FaultyHandler(RecordingHandler):
    mail_reply: str | None = None  # e.g. "553 5.7.1 Sender address rejected: not owned by user"
    rcpt_reply: str | None = None  # for every recipient, e.g. "554 5.7.1 Relay access denied"
    data_reply: str | None = None  # e.g. "500 5.5.1 Command unrecognized"
    rcpt_replies: dict[str, str] = field(default_factory=dict)  # one address's own reply
    domain_replies: dict[str, str] = field(default_factory=dict)  # every address of one domain (lower case)
    # One pooled connection gone bad: the first connection to reach RCPT gets this reply for every
    # recipient, every other connection is answered as usual.
    bad_connection_reply: str | None = None
    bad_session: int | None = None  # id() of that connection's session
    password: str = PASSWORD
    refused_logins: set[int] = field(default_factory=set)  # the sessions (connections) whose login failed
    refused: list[str] = field(default_factory=list)  # what each scripted refusal answered to

    def fix(self) -> None:
        """What the admin does once they read the pause sentence."""
        self.mail_reply = self.rcpt_reply = self.data_reply = self.bad_connection_reply = None
        self.domain_replies.clear()

    async def handle_MAIL(self, server, session, envelope, address, mail_options):  # type: ignore[no-untyped-def]
        if self.mail_reply:
            self.note_mail(server)
            self.refused.append(f"MAIL {address}")
            return self.mail_reply
        return await super().handle_MAIL(server, session, envelope, address, mail_options)

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # type: ignore[no-untyped-def]
        reply = (
            self.rcpt_replies.get(address.lower())
            or self.domain_replies.get(address.rsplit("@", 1)[-1].lower())
            or self.rcpt_reply
        )
        if self.bad_connection_reply and not reply:
            with self.lock:
                if self.bad_session is None:
                    self.bad_session = id(session)
                if self.bad_session == id(session):
                    reply = self.bad_connection_reply
        if reply:
            self.refused.append(f"RCPT {address}")
            return reply
        return await super().handle_RCPT(server, session, envelope, address, rcpt_options)

    async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
        if self.data_reply:
            self.refused.append(f"DATA {envelope.rcpt_tos}")
            return self.data_reply
        return await super().handle_DATA(server, session, envelope)

    def authenticate(self, server, session, envelope, mechanism, auth_data):  # type: ignore[no-untyped-def]
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login.decode() == USERNAME
            and auth_data.password.decode() == self.password
        )
        if not ok:  # aiosmtplib tries each offered mechanism in turn: count connections, not attempts
            with self.lock:
                self.refused_logins.add(id(session))
        return AuthResult(success=ok, handled=False)  # handled=False: aiosmtpd answers 235 or 535


class FaultyServer:
    """Started on `port` (a free one by default); `auth=True` makes it require a login before MAIL;
    `pipelining=False` stops it offering PIPELINING."""

    def __init__(self, port: int | None = None, *, auth: bool = False, pipelining: bool = True) -> None:
        self.handler = FaultyHandler(pipelining=pipelining)
        self.port = port or free_port()
        options: dict[str, object] = {}
        if auth:
            options = {
                "authenticator": self.handler.authenticate,
                "auth_required": True,
                "auth_require_tls": False,
            }
        self.controller = Controller(
            self.handler, hostname="127.0.0.1", port=self.port, decode_data=False, **options
        )

    def __enter__(self) -> FaultyServer:
        with warnings.catch_warnings():  # AUTH without TLS is what we want on loopback
            warnings.simplefilter("ignore", UserWarning)
            self.controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()

    @property
    def messages(self):  # type: ignore[no-untyped-def]
        return self.handler.messages
