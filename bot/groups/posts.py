"""The post store: a message posted to a group is written (the message, its log entry, one delivery row
per member) before the SMTP client hears 250, and the fan-out (bot/groups/fanout.py) delivers from here.

Also what a post is, read once: who wrote it, its subject and Message-ID, whether it carries links or an
unsubscribe-like footer (the post log), its first lines (the moderation card); and the copy members
get: `List-Id`, `List-Post`, `Sender`, `Precedence: list`, a loop marker, a `Message-ID`/`Date` when the
original lacks them, and — for a sender whose domain publishes DMARC reject or quarantine — the
`From` rewritten to "Name via Group" with `Reply-To` the original author; a `From` naming a company
mailbox the envelope sender is not (`impersonates`) is rewritten to "<envelope sender> via Group". The
headers written here are ASCII (RFC 2047 encoded words, folded: bot/mail/compose.py); the ones read for
the log take raw 8-bit text as UTF-8 (Latin-1 when it is not).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from email import message_from_bytes, policy
from email.header import decode_header, make_header
from email.message import EmailMessage, Message
from email.parser import BytesHeaderParser
from email.utils import getaddresses, make_msgid
from typing import Any, cast

from sqlalchemy import CursorResult, exists, func, insert, literal, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from bot.db.models import Group, GroupPost, GroupPostDelivery, Membership
from bot.mail.compose import address, date_header

MAX_RECEIVED = 30  # more Received: lines than this is a loop (Postfix's hopcount_limit is 50)
_LINK = re.compile(rb"https?://", re.I)
# A link that counts its clicks for a mailing service: Mailchimp's mc_cid, HubSpot's _hsenc, a click
# redirect, or a host whose first label is a mailing service's click host (click., clicks., track., trk.,
# email., links.: click.mailer.example, track.customer.io). Not tracking.: that is a parcel's tracking page
# (tracking.dhl.example), no marketing. Read once per post for the usage review (bot/usage/).
TRACKING = re.compile(
    r"https?://(?:(?:click|clicks|track|trk|email|links)\.[^\s\"'<>/]*\.[a-z]"
    r"|[^\s\"'<>]*(?:[?&](?:mc_[ce]id|_hsenc|_hsmi)="
    r"|list-manage\.com/track|/ls/click|/wf/click|/track/click|mailchi\.mp/|hubspotlinks\.com"
    r"|sendgrid\.net/))",
    re.I,
)
# utm_ parameters: one link pasted from elsewhere (?utm_source=twitter) is a colleague's link, not a
# campaign's tracking; two or more such links, or one tagged for mail (utm_medium=email), are.
_UTM = re.compile(r"https?://[^\s\"'<>]*[?&]utm_[a-z]+=[^\s\"'<>]*", re.I)
_UTM_MAIL = re.compile(r"[?&]utm_medium=(?:e-?mail|newsletter)\b", re.I)
# A link shortener hides where a link goes and counts its clicks: marketing's tracking links too.
SHORTENER = re.compile(
    r"https?://(?:www\.)?(?:bit\.ly|t\.co|tinyurl\.com|goo\.gl|ow\.ly|lnkd\.in|buff\.ly|is\.gd|rebrand\.ly"
    r"|t\.cn|dwz\.cn|url\.cn)/",
    re.I,
)
_UNSUBSCRIBE = re.compile(r"unsubscribe|退订|取消订阅", re.I)
_OPT_OUT = re.compile(r"opt[ -]?out", re.I)
# "Reply STOP to opt out": the bulk sender's opt-out, in a footer.
_REPLY_STOP = re.compile(r"\breply\s+[\"'“‘]?STOP\b|回复\s*[\"“]?(?:TD|T|退订)\b", re.I)
FOOTER_LINES = 6  # an unsubscribe footer is among a message's last lines


def _links_count_clicks(text: str) -> bool:
    if TRACKING.search(text) or SHORTENER.search(text):
        return True
    tagged = {m[0] for m in _UTM.finditer(text)}
    return len(tagged) >= 2 or any(_UTM_MAIL.search(link) for link in tagged)


def _has_unsubscribe(text: str) -> bool:
    """An unsubscribe footer: unsubscribe or "Reply STOP" wording among the last lines, or opt-out
    wording there beside a link ("If you want to opt out of the beta, just tell me" is no footer)."""
    lines = [line for line in text[-4000:].splitlines() if line.strip()][-FOOTER_LINES:]
    for n, line in enumerate(lines):
        if _UNSUBSCRIBE.search(line) or _REPLY_STOP.search(line):
            return True
        near = " ".join(lines[n : n + 2])  # the link on its line or the next
        if _OPT_OUT.search(line) and ("http://" in near or "https://" in near):
            return True
    return False


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\u202a-\u202e\u2066-\u2069]")


class BadMessage(Exception):
    """A message the relay refuses whole; `reply` is the SMTP answer."""

    def __init__(self, reply: str):
        super().__init__(reply)
        self.reply = reply


def list_id(group: Group) -> str:
    """The `List-Id` header line: the group's name as its phrase — quoted when ASCII (a `<`, `,` or `"`
    in a name can't end the phrase early), RFC 2047 encoded words otherwise — then `<local.domain>`."""
    return address(group.display_name or group.local_part, list_id_value(group), "List-Id", quoted=True)


def list_id_value(group: Group) -> str:
    return f"{group.local_part}.{group.address.split('@', 1)[1]}"


def _clean(text: str | None, limit: int) -> str | None:
    if text is None:
        return None
    text = " ".join(_CONTROL.sub(" ", str(text)).split())
    return text[:limit] or None


def split(data: bytes) -> tuple[bytes, bytes]:
    """(header block with its last line end, the rest from the blank line on)."""
    for sep in (b"\r\n\r\n", b"\n\n"):
        end = data.find(sep)
        if end >= 0:
            cut = end + len(sep) // 2
            return data[:cut], data[cut:]
    return data if data.endswith(b"\n") else data + b"\r\n", b"\r\n"


@dataclass(frozen=True)
class Inspected:
    author: str | None  # the From header as written
    author_address: str | None
    author_name: str | None
    subject: str | None
    message_id: str | None
    has_links: bool
    has_unsubscribe: bool
    has_tracking: bool  # links that count clicks (TRACKING, SHORTENER)
    first_lines: tuple[str, ...]
    markers: frozenset[str]  # the groups this message already passed through (X-Postroom-Group)
    received: int
    has_date: bool
    has_reply_to: bool


def inspect(data: bytes, max_header_bytes: int) -> Inspected:
    """Read what the log and the card need; BadMessage for a header block over the bound."""
    headers, body = split(data)
    if len(headers) > max_header_bytes:
        raise BadMessage(
            f"552 5.3.4 The message's header is {len(headers)} bytes; this server takes at most {max_header_bytes}"
        )
    parsed = BytesHeaderParser(policy=policy.compat32).parsebytes(headers)
    author = _clean(_decoded(_raw(parsed, "From")), 500)  # raw 8-bit text read as UTF-8 (_decoded)
    pairs = getaddresses([author or ""])
    name, address = pairs[0] if pairs else ("", "")
    markers = frozenset(
        m.strip().strip("<>").lower() for m in parsed.get_all("X-Postroom-Group") or [] if isinstance(m, str)
    )
    text = _plain_text(data)
    lines = tuple(line.strip()[:200] for line in text.splitlines() if line.strip())[:5]
    return Inspected(
        author=author,
        author_address=address.lower() or None if "@" in address else None,
        author_name=_clean(name, 200),
        subject=_clean(_decoded(_raw(parsed, "Subject")), 500),
        message_id=_clean(parsed.get("Message-ID"), 300),
        has_links=bool(_LINK.search(body[:1_000_000])) or "http://" in text or "https://" in text,
        has_unsubscribe=bool(parsed.get("List-Unsubscribe")) or _has_unsubscribe(text),
        has_tracking=_links_count_clicks(_raw_text(data)) or _links_count_clicks(text),
        first_lines=lines,
        markers=markers,
        received=len(parsed.get_all("Received") or []),
        has_date=parsed.get("Date") is not None,
        has_reply_to=parsed.get("Reply-To") is not None,
    )


def _raw(parsed: Message, name: str) -> str | None:
    """The first `name` header's value as received (8-bit bytes as surrogate escapes, not compat32's
    `Header` object, whose text is replacement characters)."""
    wanted = name.lower()
    return next((v for k, v in parsed.raw_items() if k.lower() == wanted), None)


def _decoded(value: object) -> str | None:
    """A header value as text: encoded words decoded, and raw 8-bit bytes (a client that wrote UTF-8
    headers, RFC 6532, with or without SMTPUTF8) read as UTF-8, or Latin-1 when they are not UTF-8 —
    the parser hands those over as surrogate escapes, which would show as "������"."""
    if value is None:
        return None
    text = str(value)
    if any("\udc80" <= c <= "\udcff" for c in text):
        raw = text.encode("ascii", "surrogateescape")
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw.decode("latin-1")
    try:
        return str(make_header(decode_header(text)))
    except (ValueError, LookupError, UnicodeError):
        return text


def _plain_text(data: bytes) -> str:
    """The text a person reads first: the plain part (or the HTML's text), bounded."""
    try:
        msg = message_from_bytes(data[:2_000_000], policy=policy.default)
        assert isinstance(msg, EmailMessage)
        part = msg.get_body(preferencelist=("plain", "html"))
        if part is None:
            return ""
        content = part.get_content()
    except Exception:  # a broken MIME structure still gets relayed; it just has no preview
        return ""
    if not isinstance(content, str):
        return ""
    if part.get_content_subtype() == "html":
        content = re.sub(r"<[^>]+>", " ", content)
    return content[:20000]


def _raw_text(data: bytes) -> str:
    """The message's first megabyte as text (an HTML part's hrefs, which the plain text loses)."""
    return split(data)[1][:1_000_000].decode("utf-8", "replace").replace("=\r\n", "").replace("=\n", "")


def loops_through(inspected: Inspected, group: Group) -> bool:
    return group.address in inspected.markers or inspected.received > MAX_RECEIVED


_DROP = {b"list-id", b"list-post", b"sender", b"precedence", b"return-path"}


def impersonates(inspected: Inspected, sender: str, internal: Callable[[str], bool]) -> bool:
    """The From names a company mailbox (`internal`: Settings.is_internal) that the envelope sender is not:
    the posting check read the envelope, so the copy must not show members that colleague."""
    author = inspected.author_address
    return bool(author) and internal(author or "") and author != (sender or "").lower()


def relayed_copy(
    data: bytes,
    group: Group,
    inspected: Inspected,
    *,
    munge: bool,
    domain: str,
    impersonated_by: str | None = None,
) -> bytes:
    """The bytes every member of `group` gets (the envelope's return path is each member's own).

    `munge` (the author's domain publishes DMARC reject/quarantine): From "Name via Group <group@…>",
    Reply-To the author. `impersonated_by` (an envelope sender whose From names a colleague it is not,
    `impersonates`): From "<envelope sender> via Group <group@…>", Reply-To the envelope sender — the
    identity the posting check let in, never the colleague the From claims. Every header written here is
    ASCII: names RFC 2047 encoded, lines folded (bot/mail/compose.py)."""
    rewrite = munge or impersonated_by is not None
    headers, body = split(data)
    kept: list[bytes] = []
    dropping = False
    for line in headers.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t"):  # a folded continuation belongs to the header before it
            if not dropping:
                kept.append(_crlf(line))
            continue
        name = line.split(b":", 1)[0].strip().lower()
        dropping = name in _DROP or (rewrite and name == b"from")
        if not dropping:
            kept.append(_crlf(line))
    label = group.display_name or group.local_part
    added = [
        f"X-Postroom-Group: {group.address}",
        list_id(group),
        f"List-Post: <mailto:{group.address}>",
        f"Sender: {group.address}",
        "Precedence: list",
    ]
    if impersonated_by is not None:
        added.append(address(f"{impersonated_by} via {label}", group.address, "From"))
        if not inspected.has_reply_to and impersonated_by.isascii():
            added.append(address(None, impersonated_by, "Reply-To"))
    elif munge:
        who = inspected.author_name or (inspected.author_address or "").split("@")[0] or "Someone"
        added.append(address(f"{who} via {label}", group.address, "From"))
        author = inspected.author_address
        if not inspected.has_reply_to and author and author.isascii():
            added.append(address(inspected.author_name, author, "Reply-To"))
    if inspected.message_id is None:
        added.append(f"Message-ID: {make_msgid(domain=domain)}")
    if not inspected.has_date:
        added.append(f"Date: {date_header()}")
    head = "".join(h + "\r\n" for h in added).encode("ascii")
    return head + b"".join(kept) + body


def _crlf(line: bytes) -> bytes:
    return line if line.endswith(b"\r\n") else line.rstrip(b"\n") + b"\r\n"


def dedupe_key(group_id: int, sender: str, message_id: str | None, data: bytes) -> str:
    """The same group, envelope sender and Message-ID (or, without one, the same bytes) is the same post."""
    ident = message_id or "sha256:" + hashlib.sha256(data).hexdigest()
    return hashlib.sha256(f"{group_id}\0{sender}\0{ident}".encode()).hexdigest()


async def duplicate_of(session: AsyncSession, key: str, window: timedelta, now: datetime) -> int | None:
    """The post `key` names if it came within `window`; an older one gives its key up (a new post)."""
    row = (
        await session.execute(select(GroupPost.id, GroupPost.received_at).where(GroupPost.dedupe_key == key))
    ).first()
    if row is None:
        return None
    if row.received_at >= now - window:
        return int(row.id)
    await session.execute(update(GroupPost).where(GroupPost.id == row.id).values(dedupe_key=None))
    return None


async def add_post(
    session: AsyncSession,
    group: Group,
    *,
    via: str,
    state: str,
    sender: str,
    data: bytes | None,
    inspected: Inspected | None,
    key: str | None,
    now: datetime,
    size: int,
    queue_id: str | None = None,
    expires_at: datetime | None = None,
) -> GroupPost:
    post = GroupPost(
        group_id=group.id,
        group_address=group.address,
        via=via,
        state=state,
        sender=sender,
        author=inspected.author if inspected else None,
        subject=inspected.subject if inspected else None,
        message_id=inspected.message_id if inspected else None,
        dedupe_key=key,
        queue_id=queue_id,
        size=size,
        recipient_count=0,
        has_links=bool(inspected and inspected.has_links),
        has_unsubscribe=bool(inspected and inspected.has_unsubscribe),
        has_tracking_links=bool(inspected and inspected.has_tracking),
        moderated=state == "held",
        received_at=now,
        expires_at=expires_at,
        body=data,
    )
    session.add(post)
    await session.flush()
    return post


async def member_count(session: AsyncSession, group_id: int) -> int:
    return (
        await session.execute(
            select(func.count()).select_from(Membership).where(Membership.group_id == group_id)
        )
    ).scalar_one()


async def snapshot_members(session: AsyncSession, post: GroupPost, window: timedelta | None = None) -> int:
    """One pending delivery per current member of the post's group (the relay reads membership, never
    changes it), leaving out group addresses and the members a sibling post of the same message
    (`siblings_of`, over `window`) has a copy for — the groups stored before this one in the same SMTP
    transaction among them. `post.recipient_count` becomes the group's members this message reaches,
    through this post or a sibling's: the number the log shows. Returns the deliveries made here.

    One INSERT … SELECT in the database: the members never pass through Python (for 10,000 members that
    was most of the time between the DATA and the 250, which the client waits for)."""
    members = (Membership.group_id == post.group_id) & Membership.email.not_in(select(Group.address))
    post.recipient_count = (
        await session.execute(select(func.count()).select_from(Membership).where(members))
    ).scalar_one()
    siblings = await siblings_of(session, post, window)
    wanted = select(
        literal(post.id, GroupPostDelivery.post_id.type),
        Membership.email,
        literal("pending", GroupPostDelivery.status.type),
        literal(0, GroupPostDelivery.attempts.type),
    ).where(members)
    if siblings:
        had = aliased(GroupPostDelivery)
        wanted = wanted.where(~exists().where(had.post_id.in_(siblings), had.email == Membership.email))
    made = await session.execute(
        insert(GroupPostDelivery).from_select(
            ["post_id", "email", "status", "attempts"], wanted.order_by(Membership.email)
        )
    )
    return int(cast(CursorResult[Any], made).rowcount or 0)


async def siblings_of(session: AsyncSession, post: GroupPost, window: timedelta | None = None) -> list[int]:
    """The other posts of the same message. The relay stores all groups of one SMTP transaction together,
    with the same envelope sender, Message-ID and time; with `window` (relay.duplicate_window_hours), the
    same envelope sender and Message-ID within that time either side is the same message too, stored in
    another transaction (a client that retried a deferred recipient, or one that splits recipients). A
    message without a Message-ID is one only within its transaction."""
    same_time = GroupPost.received_at == post.received_at
    if post.message_id is not None and window is not None:
        same_time = GroupPost.received_at.between(post.received_at - window, post.received_at + window)
    rows = await session.execute(
        select(GroupPost.id).where(
            GroupPost.id != post.id,
            GroupPost.via == post.via,
            GroupPost.sender == post.sender,
            same_time,
            GroupPost.message_id.is_(None)
            if post.message_id is None
            else GroupPost.message_id == post.message_id,
        )
    )
    return list(rows.scalars())
