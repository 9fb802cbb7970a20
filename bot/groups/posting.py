"""Who may post to a group, and whose post waits for a moderator: one decision for the embedded relay and
the Postfix policy service alike.

`post:` (the rules file) is `members`, `company` (anyone at the company's domains), `anyone`, or
`moderated` (every post waits, whoever sends it). `moderate: nonmembers` holds, instead of refusing, a
post from someone `post:` does not let in. A group's moderators (its owners unless the rules name
`moderators`) and the senders a moderator chose to "always allow" are never held.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.config import Settings
from bot.db.models import Group, GroupSenderAllow, Membership, Person

Action = Literal["accept", "hold", "refuse"]


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str = ""  # why a post is refused or held, in English (an SMTP reply's text)


class Unreadable(ValueError):
    """A recipient in a form `group_candidates` can't take apart (an open quote, a source route without
    its colon, an @ in the domain): it might still reach a group through the MTA, so it is refused."""


def group_candidates(address: str, settings: Settings) -> list[str]:
    """Every group address `address` (a recipient as an SMTP client wrote it) can reach through Postfix's
    rewriting, in the order Postfix would try them; Unreadable when the form can't be taken apart.

    Postfix's lookups fold case; it drops the quotes around a local part (`"eng"@corp.example`), a trailing
    dot of the domain and a source route (`@relay:eng@corp.example`); it turns `site!user` (swap_bangpath)
    and `user%site` (allow_percent_hack) into `user@site`; it appends a domain to a bare local part
    (`eng`: every org domain here, since myorigin is Postfix's); and with `recipient_delimiter`
    (`postfix.recipient_delimiter`, which must equal main.cf's) it tries `eng@` for `eng+anything@` after
    the address itself. One normaliser for the policy service and the embedded relay."""
    return [c for route in group_routes(address, settings) for c in route]


def group_routes(address: str, settings: Settings) -> list[list[str]]:
    """`group_candidates` by reading: each list is one way Postfix may take the address (as written, after
    the percent hack, with this org domain appended…) and holds the address, then its form without the
    recipient delimiter's extension; Postfix delivers to the first of a list that is an address it
    knows. Which reading applies depends on Postfix's own settings, so the policy service checks the
    group of every list."""
    text = address.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1].strip()
    if not text:
        return []
    if any(not c.isprintable() for c in text):
        raise Unreadable(address)
    if text.startswith("@"):  # a source route: @a,@b:user@domain
        _route, colon, rest = text.partition(":")
        if not colon or not rest:
            raise Unreadable(address)
        text = rest
    local, domain = _parts(text, address)
    routes: list[list[str]] = []
    for loc, dom in _rewritten(local.lower(), domain, settings, 0):
        route = _with_delimiter(loc, dom, settings.postfix.recipient_delimiter)
        if route not in routes:
            routes.append(route)
    return routes


def _parts(text: str, address: str) -> tuple[str, str | None]:
    """The local part (unquoted: quoted-pairs and quotes removed) and the domain (lower case, ASCII, no
    trailing dot; None when there is no @)."""
    local: list[str] = []
    quoted = False
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\" and quoted:
            if i + 1 >= len(text):
                raise Unreadable(address)
            local.append(text[i + 1])
            i += 2
            continue
        if c == '"':
            quoted = not quoted
        elif c == "@" and not quoted:
            break
        else:
            local.append(c)
        i += 1
    if quoted:
        raise Unreadable(address)
    if i >= len(text):
        return "".join(local), None
    domain = text[i + 1 :].lower().rstrip(".")
    if not domain or any(c in domain for c in '@"\\ ') or domain.startswith("["):
        if domain.startswith("[") and domain.endswith("]"):  # an address literal: no group lives there
            return "".join(local), domain
        raise Unreadable(address)
    if not domain.isascii():
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            raise Unreadable(address) from None
    return "".join(local), domain


def _rewritten(local: str, domain: str | None, settings: Settings, depth: int) -> list[tuple[str, str]]:
    """(local part, domain) pairs the address may become: as it is, and after the bang path, percent
    hack or appended domain Postfix applies (each read again, to a few levels)."""
    if depth > 5:
        return []
    out: list[tuple[str, str]] = []
    if domain is not None:
        out.append((local, domain))
    else:
        out.extend((local, d) for d in settings.org.domains)
    if "!" in local:  # site!user -> user@site
        site, _, user = local.partition("!")
        if site and user:
            out.extend(_rewritten(user, site.rstrip("."), settings, depth + 1))
    if "%" in local:  # user%site -> user@site (the rightmost %)
        user, _, site = local.rpartition("%")
        if site and user:
            out.extend(_rewritten(user, site.rstrip("."), settings, depth + 1))
    return out


def _with_delimiter(local: str, domain: str, delimiters: str) -> list[str]:
    out = [f"{local}@{domain}"]
    cut = min((local.find(d) for d in delimiters if local.find(d) > 0), default=-1)
    if cut > 0:
        out.append(f"{local[:cut]}@{domain}")
    return out


def moderators_of(group: Group) -> list[str]:
    return list(group.moderators or group.owners or [])


async def decide(session: AsyncSession, settings: Settings, group: Group, sender: str) -> Decision:
    """Whether `sender` (an envelope sender, "" or "<>" for none) may post to `group` now."""
    sender = sender.lower()
    allowed = member = left = False
    if sender and sender != "<>" and group.post_policy != "anyone" and settings.is_internal(sender):
        left = await has_left(session, sender)
    if sender and group.post_policy != "anyone":
        allowed = (
            await session.execute(
                select(GroupSenderAllow.id).where(
                    GroupSenderAllow.group_id == group.id, GroupSenderAllow.email == sender
                )
            )
        ).first() is not None
        if group.post_policy == "members" and not allowed:
            member = (
                await session.execute(
                    select(Membership.id).where(Membership.group_id == group.id, Membership.email == sender)
                )
            ).first() is not None
    return decide_with(settings, group, sender, member=member, allowed=allowed, left=left)


async def has_left(session: AsyncSession, email: str) -> bool:
    """Whether HR (an import, a webhook, a directory) says the person with this address left."""
    row = await session.execute(select(Person.id).where(Person.email == email, Person.status == "left"))
    return row.first() is not None


NO_SENDER = (
    "this group takes no mail without a sender: a bounce or an automatic reply is not a post "
    "(bounces go to the return path the message was sent with)"
)


UNVERIFIED = (
    "{sender} is a company address, but mail from this client is taken as its sender only from "
    "postfix.trusted_networks or after SMTP AUTH as that mailbox"
)


def decide_with(
    settings: Settings,
    group: Group,
    sender: str,
    *,
    member: bool,
    allowed: bool,
    verified: bool = True,
    left: bool = False,
) -> Decision:
    """The decision once it is known whether the sender is a member and on the group's allow list.

    `verified=False`: the client could claim any sender (Postfix, a client outside
    `postfix.trusted_networks` without SMTP AUTH as the sender). A company sender is then an outsider: not
    a member, moderator, owner or allowed sender, and not "at the company" — held or refused as the
    group's policy says for outsiders, with the reason saying why.

    `left`: HR says the sender left the company. "Anyone at the company" is its current people, so a
    leaver is an outsider too (held or refused like one), whatever an allow list or an owner list from
    before still says.

    A message without a sender (`MAIL FROM:<>`: a bounce, an auto-reply) is refused for every group,
    `post: anyone` too — never held: nobody could be told of a rejection, and a list server discards
    bounces sent to its posting address (Mailman takes them at its -bounces address only). Refusing it
    during the SMTP conversation sends nothing back: no server bounces a bounce (RFC 5321 §4.5.5)."""
    sender = sender.lower()
    if not sender or sender == "<>":
        return Decision("refuse", NO_SENDER)
    if group.post_policy == "anyone":
        return Decision("accept")
    if not verified and settings.is_internal(sender):
        return _outsider(settings, group, UNVERIFIED.format(sender=sender))
    if left:
        return _outsider(settings, group, f"{sender} has left the company")
    if sender in moderators_of(group) or sender in (group.owners or []):
        return Decision("accept")
    if group.post_policy == "moderated":
        return (
            Decision("accept")
            if allowed
            else Decision("hold", "every post to this group waits for a moderator")
        )
    if group.post_policy == "members":
        refusal = "" if member else "only members of this group may post to it"
    else:  # company, and anything unknown: the safe middle
        refusal = (
            ""
            if settings.is_internal(sender)
            else f"only people at {', '.join(settings.org.domains)} may post to this group"
        )
    if not refusal or allowed:
        return Decision("accept")
    if group.moderation == "nonmembers":
        return Decision("hold", f"{refusal}: the post waits for a moderator")
    return Decision("refuse", refusal)


def _outsider(settings: Settings, group: Group, why: str) -> Decision:
    """The decision for a sender who counts as nobody the group knows (`why` says why, in English)."""
    if group.post_policy == "moderated":
        return Decision("hold", f"every post to this group waits for a moderator ({why})")
    if group.post_policy == "members":
        refusal = f"only members of this group may post to it, and {why}"
    else:
        refusal = f"only people at {', '.join(settings.org.domains)} may post to this group, and {why}"
    if group.moderation == "nonmembers":
        return Decision("hold", f"{refusal}: the post waits for a moderator")
    return Decision("refuse", refusal)
