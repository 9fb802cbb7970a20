"""Email addresses as people type them: validated, normalised, and told apart as internal or not.

The one place an address typed by someone (signup, /contacts add, a CSV import, HR, chat) becomes the
form Postroom stores, compares and mails: an internationalised domain is kept in its ASCII (IDNA,
`xn--`) form, which is what SMTP without SMTPUTF8 carries, so `bob@müller.de` is stored and mailed as
`bob@xn--mller-kva.de`. A domain label mixing scripts — a Cyrillic "а" among Latin letters, the way
look-alike domains are made — is refused. A non-ASCII local part is refused: our outbound SMTP does
not use SMTPUTF8, so such an address can't be mailed.

Which addresses are the company's is `bot.config.internal_address` (below this module in the layers, so
`Settings.is_internal` uses the same rule): the domain is exactly one of `org.domains`, and the local part
is plain. `normalise` keeps `x%gmail.com@corp.example` (a valid address, possibly an outside person's),
but it is never internal: `routing_refusal` says why, for the places that take group members.
"""

from __future__ import annotations

import hashlib
import unicodedata
from typing import Any

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import ColumnElement, and_, false, func, not_, or_

from bot.config import Settings, routing_form
from bot.errors import UserError
from bot.i18n import t

MAX_LOCAL_OCTETS = 64  # RFC 5321 §4.5.3.1.1: a server may refuse a longer local part


def normalise(address: str, *, existing: bool = False) -> str:
    """Lower-cased, validated address; UserError with a sentence when it is not one. A new address
    (a contact, a group) keeps RFC 5321's 64-octet local part; `existing` looks up one stored already
    (to show, erase or suppress it), which an older, longer one must still find."""
    text = address.strip()
    if text.lower().startswith("mailto:"):
        text = text[7:]
    if not text or "@" not in text:
        raise UserError(t("{text} is not an email address.", text=_show(address)))
    if text.startswith("@") and ":" in text:  # the validator would say "nothing before the @-sign"
        raise UserError(
            t(
                "{text} is not a plain email address: a source route (“@host:”) before the @-sign can make "
                "mail servers pass it on to another domain.",
                text=_show(address),
            )
        )
    try:
        result = validate_email(text, check_deliverability=False, allow_smtputf8=False)
    except EmailNotValidError as exc:
        reason = str(exc).rstrip(".")
        raise UserError(
            t(
                "{text} is not a valid email address: {reason}.",
                text=_show(address),
                reason=reason[0].lower() + reason[1:],
            )
        ) from None
    if not existing and len(result.local_part.encode("utf-8")) > MAX_LOCAL_OCTETS:
        raise UserError(
            t(
                "{text} is not a valid email address: the part before the @ is longer than 64 characters "
                "(RFC 5321), and mail to it may be refused.",
                text=_show(address),
            )
        )
    mixed = _mixed_scripts(result.domain)
    if mixed:
        raise UserError(
            t(
                "{text} mixes letters from different scripts in its domain ({scripts}), the way look-alike "
                "domains do; check the address.",
                text=_show(address),
                scripts=" and ".join(mixed),
            )
        )
    return str(result.ascii_email or result.normalized).lower()


# Scripts that one label may mix: Japanese writes kanji with kana, Korean hangul with hanja.
_MIXES = ({"CJK", "HIRAGANA", "KATAKANA"}, {"CJK", "HANGUL"})


def _script(char: str) -> str | None:
    if char.isascii() and not char.isalpha():
        return None  # digits and hyphens go with every script
    name = unicodedata.name(char, "")
    if name.startswith(("KATAKANA-HIRAGANA", "IDEOGRAPHIC")):
        return None
    return name.split(" ", 1)[0] or "UNKNOWN"


def _mixed_scripts(domain: str) -> list[str]:
    """The scripts one label of the (Unicode) domain mixes, when they are not a usual mix; else []."""
    for label in domain.split("."):
        scripts = {s for s in map(_script, label) if s}
        if len(scripts) > 1 and not any(scripts <= allowed for allowed in _MIXES):
            return sorted(s.title() for s in scripts)
    return []


def is_valid(address: str) -> bool:
    try:
        normalise(address)
    except UserError:
        return False
    return True


def routing_refusal(address: str, settings: Settings) -> str | None:
    """Why `address`, on one of the company's domains, still is not a company address (its local part can
    route mail elsewhere: x%gmail.com@corp.example goes to gmail.com), as a clause to end a sentence with
    or go on from; None when that is not why (a plain address, or another domain)."""
    form = routing_form(address)
    if form is None or "@" not in address or address.rsplit("@", 1)[1].lower() not in settings.org.domains:
        return None
    what = {
        "%": t("a “%” before the @-sign"),
        "!": t("a “!” before the @-sign"),
        "a quoted part": t("a quoted part before the @-sign"),
        "a source route": t("a source route (“@host:”) before the @-sign"),
    }.get(form, t("a character other than letters, digits and . _ - + before the @-sign"))
    return t(
        "{email} is not a company address ({what} can make mail servers pass it on to another domain)",
        email=address,
        what=what,
    )


def domain_of(address: str) -> str:
    return address.rsplit("@", 1)[-1].lower()


def email_hash(address: str) -> str:
    return hashlib.sha256(address.strip().lower().encode()).hexdigest()


def _show(text: str, limit: int = 80) -> str:
    text = text.replace("\n", " ").replace("\r", " ")
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return f"“{text}”"


_ROUTING_CHARS = '!"%(),:;<>@[\\]'


def internal_clause(settings: Settings, column: Any) -> ColumnElement[bool]:
    """`settings.is_internal` in SQL, for a stored (normalised) address: it ends with `@domain` (exactly a listed domain) and
    the part before has none of `_ROUTING_CHARS`. (A domain with an `@` in it can never match the text
    after the last `@`, so it is left out, as Python finds it.)"""
    ends = []
    for d in settings.org.domains:
        if "@" in d:
            continue
        suffix = "@" + d
        local = func.substr(column, 1, func.length(column) - len(suffix))
        ends.append(
            and_(
                func.length(column) > len(suffix),
                func.substr(column, func.length(column) - len(suffix) + 1) == suffix,
                *(not_(local.contains(c, autoescape=True)) for c in _ROUTING_CHARS),
            )
        )
    return or_(false(), *ends)
