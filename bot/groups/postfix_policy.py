"""The Postfix policy delegation service: Postfix does the fan-out (virtual_alias_maps over Postroom's
database), and asks Postroom, through `check_policy_service`, whether each post may go.

The protocol (Postfix's SMTPD_POLICY_README): a request is `name=value` lines ending in an empty line
(`request=smtpd_access_policy`, `protocol_state`, `sender`, `recipient`, `client_address`, `instance`,
`queue_id`, `size`, …); the answer is `action=<what>` and an empty line, on the same connection, which
Postfix keeps open for further requests.

- RCPT, recipient a group: the group's posting policy (bot/groups/posting.py). The recipient is read the
  way Postfix rewrites it (`group_routes`: case, quotes, a trailing dot, a source route, the percent
  hack and bang paths, a bare local part, `postfix.recipient_delimiter`), and every group it can reach is
  checked. A refusal is `REJECT <dsn> <why>`, short enough for one SMTP reply line (`reject`); a post that may go or must wait is `DUNNO` for now, remembered by
  `instance`. A recipient whose form can't be read is refused (5.1.3): Postfix might still expand it.
  Anyone who reaches the MTA can claim any envelope sender, so a company sender counts as one only when
  `client_address` is in `postfix.trusted_networks` (default loopback) or the client logged in (SMTP
  AUTH, `sasl_username`) as that mailbox (or as one of `postfix.sasl_send_as_anyone`); otherwise it is an
  outsider: refused, or held where the group holds outsiders' posts, with a reason that says why.
- END-OF-MESSAGE (`smtpd_end_of_data_restrictions`): every remembered post is logged with its size and
  Postfix's queue id; if one must wait, the answer is `HOLD` — the message stays in Postfix's hold queue
  and the moderators get a card (bot/groups/moderation.py); an approval releases it with `postsuper -H`.
  The remembered decisions are bounded (MAX_PER_CLIENT per `client_address`, its oldest forgotten first,
  MAX_INSTANCES in all), and forgetting must never permit: an END-OF-MESSAGE (or DATA) request with no
  remembered decision — evicted by a flood, or serve restarted between RCPT and the end — is decided
  afresh from its own attributes (Postfix names `recipient` there only when the message has exactly one),
  and with several recipients, which Postfix does not name, it gets `postfix.on_error`, never DUNNO. A
  request naming one recipient with `recipient_count` above 1 is not decided from that one (a group among
  the others would skip its policy), and a message whose first RCPTs were forgotten in a flood before a
  later one is deferred too (known by its name among the last MAX_EVICTED evicted, or by fewer RCPTs
  remembered than its `recipient_count`): a message is decided only from all its recipients. Every RCPT with an `instance` is remembered, groups
  or not, so ordinary mail to several people is not deferred.
- Anything else: `DUNNO` (Postroom has no opinion; Postfix goes on with its other restrictions).

Every request is bounded (`postfix.max_request_bytes`, `max_request_lines`); a malformed one is answered
and the connection closed. A request Postroom can't decide in `postfix.answer_within_s` (the database is
down, a bug) gets `postfix.on_error`, by default `DEFER_IF_PERMIT`: the client hears 450 and tries again
later. DUNNO would be the other choice and is wrong here: it lets a post through that the policy would
have refused or held (fail-open), and nothing lets it be taken back. A deferral loses nothing: mail
servers retry. Recipients that are not groups are answered from an in-memory copy of the group addresses,
so ordinary mail gets DUNNO even while the database is away.

The hot path never waits on the database: the groups, the members of `post: members` groups, the
allow lists and the addresses of people who left (outsiders to every group) are read into memory
together every `GROUPS_TTL_S` (in the background once loaded), so a membership change reaches the policy
within seconds (benchmarks/group_fanout.py: p99 under 5 ms).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import select

from bot.config import PostfixSettings, peer_in
from bot.context import Context
from bot.db.models import Group, GroupSenderAllow, Membership, Person
from bot.groups.moderation import Moderation
from bot.groups.posting import UNVERIFIED, Unreadable, decide_with, group_routes
from bot.groups.posts import add_post, member_count

log = logging.getLogger(__name__)
MAX_INSTANCES = 10_000  # messages between RCPT and END-OF-MESSAGE, in all
MAX_PER_CLIENT = 1_000  # of them from one SMTP client (client_address)
MAX_EVICTED = 50_000  # instances whose decisions a flood evicted, remembered by name only
GROUPS_TTL_S = 5.0
REPLY_LINE_MAX = 512  # RFC 5321 4.5.3.1.5: a reply line, with its code and CRLF
MIN_REASON = 40  # characters of reason kept however long Postfix's own words are
ELLIPSIS = "..."
# How Postfix words a REJECT at each stage (smtpd_check.c): what was rejected, and the name it puts in
# angle brackets (None: the recipient).
POSTFIX_REJECTED: dict[str, tuple[str, str | None]] = {
    "RCPT": ("Recipient address", None),
    "DATA": ("Data command", "DATA"),
    "END-OF-MESSAGE": ("End-of-data", "END-OF-MESSAGE"),
}
HOLD_TEXT_MAX = 400  # HOLD's text is only logged by Postfix, but one message can name many groups


class Malformed(Exception):
    pass


async def read_request(reader: asyncio.StreamReader, max_bytes: int, max_lines: int) -> dict[str, str] | None:
    """One request's attributes; None at a clean end of the connection; Malformed past a bound."""
    attrs: dict[str, str] = {}
    total = 0
    lines = 0
    while True:
        try:
            line = await reader.readline()
        except (ValueError, asyncio.LimitOverrunError):
            raise Malformed("a line is longer than the limit") from None
        if not line:
            if lines:
                raise Malformed("the connection ended inside a request")
            return None
        total += len(line)
        lines += 1
        if total > max_bytes:
            raise Malformed(f"the request is over {max_bytes} bytes")
        if lines > max_lines:
            raise Malformed(f"the request has over {max_lines} lines")
        text = line.rstrip(b"\r\n")
        if not text:
            if not attrs:
                raise Malformed("an empty request")
            return attrs
        name, eq, value = text.partition(b"=")
        if not eq or not name:
            raise Malformed("a line is not name=value")
        try:
            key = name.decode("ascii").strip().lower()
            attrs[key] = value.decode("utf-8", "replace").strip()
        except UnicodeDecodeError:
            raise Malformed("an attribute name is not ASCII") from None


def _text(reason: str) -> str:
    """One line of printable ASCII (an SMTP reply is ASCII: anything else becomes "?", as Postfix's own
    `printable()` does), runs of white space made one space."""
    printable = "".join((c if c.isascii() else "?") if c.isprintable() else " " for c in reason)
    return " ".join(printable.split())


def fit(text: str, limit: int) -> str:
    """`text` (made `_text`) in at most `limit` characters: cut after the last whole word that fits, with
    "..." (ASCII: an SMTP reply is), never in the middle of a word unless the first word alone is longer."""
    text = _text(text)
    if len(text) <= limit:
        return text
    room = max(0, limit - len(ELLIPSIS))
    head = text[:room]
    if text[room : room + 1] != " " and " " in head:
        head = head.rsplit(" ", 1)[0]
    return head.rstrip(" ,;:.-") + ELLIPSIS


def reject(state: str, dsn: str, recipient: str, reason: str) -> str:
    """`REJECT <dsn> <<recipient>>: <reason>`, short enough that the SMTP reply Postfix makes of it stays
    one reply line of at most REPLY_LINE_MAX octets (RFC 5321 4.5.3.1.5). Postfix passes the text on
    whole (3.7 sent a 5,059-octet reply line for a 5,000-character text), and puts its own words first:
    `554 5.7.1 <rcpt>: Recipient address rejected: <our text without the dsn>`. Our text keeps the
    enhanced status code first, where access(5) reads it; names the recipient again only when that fits
    (at END-OF-MESSAGE Postfix does not name it); and cuts the reason after a whole word, with "..."."""
    what, reply_name = POSTFIX_REJECTED.get(state, POSTFIX_REJECTED["RCPT"])
    theirs = f"554 {dsn} <{recipient if reply_name is None else reply_name}>: {what} rejected: "
    room = max(MIN_REASON, REPLY_LINE_MAX - len("\r\n") - len(theirs))
    ours = f"<{_text(recipient)[:320]}>: " if recipient else ""
    if len(ours) + MIN_REASON > room:
        ours = ""
    return f"REJECT {dsn} {ours}{fit(reason, room - len(ours))}"


@dataclass
class _Pending:
    sender: str
    client: str
    accepted: list[int] = field(default_factory=list)
    held: list[int] = field(default_factory=list)
    unverified: bool = False  # a company sender held because this client could claim any sender
    rcpts: int = 0  # RCPT requests seen for this message
    partial: bool = False  # begun again after a flood evicted its earlier RCPTs' decisions

    def add(self, decided: _Decided) -> None:
        self.unverified = self.unverified or decided.unverified
        for group, action in decided.groups:
            if group.id not in self.held and group.id not in self.accepted:
                (self.held if action == "hold" else self.accepted).append(group.id)


@dataclass
class _Decided:
    groups: list[tuple[Group, str]]  # every group a recipient reaches, "hold" or "accept"
    unverified: bool


def _recipient_count(req: dict[str, str]) -> int | None:
    """Postfix's `recipient_count` (DATA and END-OF-MESSAGE: the recipients it accepted); None when the
    request has none (Postfix before 2.3). Anything that is not a number counts as "several": never one."""
    value = req.get("recipient_count", "").strip()
    if not value:
        return None
    return int(value) if value.isdigit() and len(value) < 10 else 2**31


class PolicyService:
    def __init__(self, ctx: Context, moderation: Moderation):
        self.ctx = ctx
        self.moderation = moderation
        self.settings: PostfixSettings = ctx.settings.postfix
        self._server: asyncio.base_events.Server | None = None
        self._instances: OrderedDict[str, _Pending] = OrderedDict()
        self._by_client: dict[str, OrderedDict[str, None]] = {}
        self._evicted: OrderedDict[str, None] = OrderedDict()
        self._groups: dict[str, Group] = {}
        self._members: dict[int, set[str]] = {}  # members of `post: members` groups
        self._allowed: dict[int, set[str]] = {}
        self._left: set[str] = set()  # people HR says left: outsiders to every group (posting.decide_with)
        self._groups_at = -1e9
        self._refreshing: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = self.settings.policy_port

    async def start(self, host: str | None = None, port: int | None = None) -> None:
        self._server = await asyncio.start_server(
            self._client,
            host or self.settings.policy_host,
            self.port if port is None else port,
            limit=self.settings.max_request_bytes,
        )
        self.port = self._server.sockets[0].getsockname()[1]

    def listening(self) -> str | None:
        """host:port while the service listens, else None (for serve's start lines)."""
        if self._server is None or not self._server.sockets:
            return None
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"{host}:{port}"

    async def stop(self) -> None:
        for task in [*self._tasks, *([self._refreshing] if self._refreshing else [])]:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            self._server.close()
            try:
                await asyncio.wait_for(self._server.wait_closed(), 2)
            except TimeoutError:
                pass
            self._server = None

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        if not peer_in(peer[0] if isinstance(peer, tuple) else None, self.settings.policy_clients):
            log.warning("policy request from %s refused: not in postfix.policy_clients", peer)
            writer.close()
            return
        try:
            while True:
                try:
                    request = await asyncio.wait_for(
                        read_request(
                            reader, self.settings.max_request_bytes, self.settings.max_request_lines
                        ),
                        300,
                    )
                except Malformed as exc:
                    log.warning("a malformed policy request from %s: %s", peer, exc)
                    writer.write(
                        f"action={self.settings.on_error} Policy request malformed: {exc}\n\n".encode()
                    )
                    await writer.drain()
                    return
                if request is None:
                    return
                writer.write(f"action={await self.answer(request)}\n\n".encode())
                await writer.drain()
        except (TimeoutError, ConnectionError):
            return
        finally:
            writer.close()

    async def answer(self, request: dict[str, str]) -> str:
        """The action for one request; never raises, never takes longer than `answer_within_s`."""
        try:
            return await asyncio.wait_for(self._decide(request), self.settings.answer_within_s)
        except Exception as exc:  # TimeoutError too: Postfix must never wait on us
            log.exception(
                "policy request not decided (%s): answering %s", type(exc).__name__, self.settings.on_error
            )
            return f"{self.settings.on_error} Group policy temporarily unavailable, try again later"

    async def _load(self) -> None:
        async with self.ctx.sessions() as session:
            groups = {g.address: g for g in (await session.execute(select(Group))).scalars()}
            members: dict[int, set[str]] = {
                g.id: set() for g in groups.values() if g.post_policy == "members"
            }
            if members:
                rows = await session.execute(
                    select(Membership.group_id, Membership.email).where(
                        Membership.group_id.in_(list(members))
                    )
                )
                for group_id, email in rows:
                    members[group_id].add(email)
            left = set((await session.execute(select(Person.email).where(Person.status == "left"))).scalars())
            allowed: dict[int, set[str]] = {}
            for group_id, email in await session.execute(
                select(GroupSenderAllow.group_id, GroupSenderAllow.email)
            ):
                allowed.setdefault(group_id, set()).add(email)
        self._groups, self._members, self._allowed, self._left = groups, members, allowed, left
        self._groups_at = time.monotonic()

    async def _refresh(self) -> None:
        try:
            await self._load()
        except Exception:  # keep answering from the copy; the next request tries again
            log.exception("reading the groups for the policy service failed")
        finally:
            self._refreshing = None

    async def _groups_for(self, routes: list[list[str]]) -> list[Group]:
        """The group each reading of a recipient reaches (`group_routes`: the first address of each list
        that is a group, as Postfix takes the first that is in virtual_alias_maps), each once."""
        if self._groups_at < 0:
            await self._load()  # the first request waits for the first copy
        elif time.monotonic() - self._groups_at > GROUPS_TTL_S and self._refreshing is None:
            self._refreshing = asyncio.get_running_loop().create_task(self._refresh())
        found: dict[int, Group] = {}
        for route in routes:
            group = next((g for g in map(self._groups.get, route) if g is not None), None)
            if group is not None:
                found.setdefault(group.id, group)
        return list(found.values())

    async def _decide(self, req: dict[str, str]) -> str:
        if req.get("request") != "smtpd_access_policy":
            return "DUNNO"
        state = req.get("protocol_state", "").upper()
        sender = req.get("sender", "").lower()[:320]
        instance = req.get("instance", "")[:100]
        client = req.get("client_address", "")[:64]
        if state == "RCPT":
            decided = await self._for_recipient(req, sender)
            if isinstance(decided, str):
                return decided
            if instance:
                pending = self._instances.get(instance)
                if pending is None:
                    pending = self._remember(instance, _Pending(sender, client))
                    if instance in self._evicted:  # its earlier RCPTs' decisions were evicted
                        del self._evicted[instance]
                        pending.partial = True
                pending.add(decided)
                pending.rcpts += 1
            return "DUNNO"
        if state in ("DATA", "END-OF-MESSAGE"):
            pending = self._instances.get(instance) if instance else None
            count = _recipient_count(req)
            if pending is not None and (pending.partial or (count is not None and count > pending.rcpts)):
                # Its first RCPTs' decisions were forgotten (a flood) and a later RCPT started afresh — known
                # from the evicted names, or from fewer RCPTs remembered than the message has recipients —
                # so a group among the forgotten ones would go unchecked. Its recipients are not named
                # here: defer, never DUNNO.
                self._forget(instance)
                return self._unknown(state, instance, f"{pending.rcpts} of its {count} recipients checked")
            if instance:
                self._evicted.pop(instance, None)
            if pending is None:
                # Nothing remembered (evicted, a restart, RCPT checked elsewhere): decide afresh from this
                # request's own attributes, or defer. Never DUNNO by default: that would wave a post
                # through that the policy refuses or holds (fail-open). Postfix names `recipient` here only
                # when the message has exactly one (SMTPD_POLICY_README); with `recipient_count` above 1
                # the named one is not all of them (another MTA, or a forged request), and deciding from it
                # alone would let a group among the others skip its policy.
                if not req.get("recipient", "").strip() or count not in (None, 1):
                    return self._unknown(state, instance, f"{count or 'several'} recipients, none named")
                decided = await self._for_recipient(req, sender)
                if isinstance(decided, str):
                    return decided
                pending = _Pending(sender, client)
                pending.add(decided)
                if state == "DATA":  # decided and logged at the end of the message
                    if instance:
                        self._remember(instance, pending)
                    return "DUNNO"
            elif state == "DATA":
                return "DUNNO"
            else:
                self._forget(instance)
            if not pending.accepted and not pending.held:
                return "DUNNO"  # no group among the recipients: ordinary mail
            return await self._log(pending, req)
        return "DUNNO"

    def _unknown(self, state: str, instance: str, why: str) -> str:
        log.warning(
            "policy %s request for instance %r: no decision remembered for every recipient (%s); answering %s",
            state,
            instance,
            why,
            self.settings.on_error,
        )
        return (
            f"{self.settings.on_error} Group policy decision for this message is not known, try again later"
        )

    async def _for_recipient(self, req: dict[str, str], sender: str) -> str | _Decided:
        """A refusal (the whole answer), or every group the request's recipient reaches with "hold" or
        "accept" for each (none: not a group)."""
        named = req.get("recipient", "").strip()
        recipient = named[:320]
        state = req.get("protocol_state", "").upper()
        try:
            routes = group_routes(recipient, self.ctx.settings)
        except Unreadable:
            # Postfix may still rewrite it to a group address: refused, never waved through.
            return reject(
                state,
                "5.1.3",
                named,
                "the recipient address can't be read, so its group posting policy can't be checked; "
                "write it as name@domain",
            )
        # Every group the recipient can reach through Postfix's rewriting (eng+x@, "eng"@, eng@corp.
        # example., a bare eng) gets its policy checked: the strictest answer wins.
        verified = self._verified(req, sender)
        decisions: list[tuple[Group, str]] = []
        for group in await self._groups_for(routes):
            decision = decide_with(
                self.ctx.settings,
                group,
                sender,
                member=sender in self._members.get(group.id, ()),
                allowed=sender in self._allowed.get(group.id, ()),
                verified=verified,
                left=sender in self._left,
            )
            if decision.action == "refuse":
                return reject(state, "5.7.1", named, decision.reason)
            decisions.append((group, "hold" if decision.action == "hold" else "accept"))
        return _Decided(decisions, bool(decisions) and not verified and self.ctx.settings.is_internal(sender))

    def _remember(self, instance: str, pending: _Pending) -> _Pending:
        """Keep a message's decisions until its end; bounded per SMTP client (MAX_PER_CLIENT, its oldest
        go first) and in all (MAX_INSTANCES). A forgotten one is decided afresh or deferred, never let
        through."""
        mine = self._by_client.setdefault(pending.client, OrderedDict())
        while len(mine) >= MAX_PER_CLIENT:
            self._evict(next(iter(mine)))
        while len(self._instances) >= MAX_INSTANCES:
            self._evict(next(iter(self._instances)))
        self._instances[instance] = pending
        self._by_client.setdefault(pending.client, OrderedDict())[instance] = None
        return pending

    def _evict(self, instance: str) -> None:
        """Forget a message's decisions before its end, keeping its name (bounded by MAX_EVICTED): a later
        RCPT of it begins a partial record, which is deferred at its end, never decided from part."""
        self._forget(instance)
        self._evicted[instance] = None
        while len(self._evicted) > MAX_EVICTED:
            self._evicted.popitem(last=False)

    def _forget(self, instance: str) -> None:
        pending = self._instances.pop(instance, None)
        if pending is None:
            return
        mine = self._by_client.get(pending.client)
        if mine is not None:
            mine.pop(instance, None)
            if not mine:
                del self._by_client[pending.client]

    def _verified(self, req: dict[str, str], sender: str) -> bool:
        """Whether the envelope sender is believed: the client is in postfix.trusted_networks, or it logged
        in (SMTP AUTH) as that mailbox — the login is the address, or its local part on the address's
        domain — or as one of postfix.sasl_send_as_anyone. Anyone else can claim any sender."""
        if peer_in(req.get("client_address") or None, self.settings.trusted_networks):
            return True
        login = req.get("sasl_username", "").strip().lower()
        if not login or not sender:
            return False
        if login in self.settings.sasl_send_as_anyone:
            return True
        return login == sender or ("@" not in login and f"{login}@{sender.rsplit('@', 1)[-1]}" == sender)

    async def _log(self, pending: _Pending, req: dict[str, str]) -> str:
        now = self.ctx.now()
        size = int(req["size"]) if req.get("size", "").isdigit() else 0
        queue_id = req.get("queue_id", "")[:40] or None
        held: list[int] = []
        names: list[str] = []
        async with self.ctx.sessions() as session, session.begin():
            for group_id, state in [(g, "accepted") for g in pending.accepted] + [
                (g, "held") for g in pending.held
            ]:
                group = await session.get(Group, group_id)
                if group is None:
                    continue
                post = await add_post(
                    session,
                    group,
                    via="postfix",
                    state=state,
                    sender=pending.sender,
                    data=None,
                    inspected=None,
                    key=None,
                    now=now,
                    size=size,
                    queue_id=queue_id,
                    expires_at=now + self._hold_time() if state == "held" else None,
                )
                post.recipient_count = await member_count(session, group.id)
                if state == "held":
                    held.append(post.id)
                    names.append(group.address)
        if not held:
            return "DUNNO"
        for post_id in held:
            task = asyncio.get_running_loop().create_task(self._announce(post_id))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        why = f": {UNVERIFIED.format(sender=pending.sender)}" if pending.unverified else ""
        return "HOLD " + fit(f"held for a moderator of {', '.join(names)}{why}", HOLD_TEXT_MAX)

    def _hold_time(self) -> timedelta:
        return timedelta(hours=self.ctx.settings.relay.hold_hours)

    async def _announce(self, post_id: int) -> None:
        try:
            await self.moderation.announce(post_id)
        except Exception:
            log.exception("posting the moderation card of post %s failed", post_id)
