"""Email addresses as people type them: validated, normalised, and told apart as internal or not."""

from __future__ import annotations

import hashlib

from email_validator import EmailNotValidError, validate_email

from bot.errors import UserError
from bot.i18n import t


def normalise(address: str) -> str:
    """Lower-cased, validated address; UserError with a sentence when it is not one."""
    text = address.strip()
    if text.lower().startswith("mailto:"):
        text = text[7:]
    if not text or "@" not in text:
        raise UserError(t("{text} is not an email address.", text=_show(address)))
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
    return result.normalized.lower()


def is_valid(address: str) -> bool:
    try:
        normalise(address)
    except UserError:
        return False
    return True


def domain_of(address: str) -> str:
    return address.rsplit("@", 1)[-1].lower()


def email_hash(address: str) -> str:
    return hashlib.sha256(address.strip().lower().encode()).hexdigest()


def _show(text: str, limit: int = 80) -> str:
    text = text.replace("\n", " ").replace("\r", " ")
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return f"“{text}”"
