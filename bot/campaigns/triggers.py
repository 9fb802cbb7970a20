"""What starts an automation's message (its trigger), its delay and its daily cap: parsed from what a
person types, described in their language, and written canonically into what the approval is bound to
(`Campaign.bound`), so any change is a new hash."""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass
from typing import Any

from bot.errors import UserError
from bot.i18n import t

_DATE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]{0,63})\s*(?:([+-])\s*(\d{1,4})\s*([dw]))?$")
_SPAN = re.compile(r"^(\d{1,5})\s*([mhdw])$")


@dataclass(frozen=True)
class Trigger:
    kind: str  # confirmed | date | joined | inactive
    list_name: str | None = None
    attribute: str | None = None
    offset_days: int = 0
    inactive_days: int | None = None

    def canonical(self) -> str:
        if self.kind == "confirmed":
            return f"confirmed:{self.list_name}"
        if self.kind == "date":
            return f"date:{self.attribute}{self.offset_days:+d}d"
        if self.kind == "inactive":
            return f"inactive:{self.inactive_days}d"
        return "joined"

    def describe(self) -> str:
        if self.kind == "confirmed":
            return t("a contact confirms on the list “{list}”", list=self.list_name)
        if self.kind == "date":
            if self.offset_days < 0:
                return t(
                    "{days} days before a contact's {attribute}",
                    days=-self.offset_days,
                    attribute=self.attribute,
                )
            if self.offset_days > 0:
                return t(
                    "{days} days after a contact's {attribute}",
                    days=self.offset_days,
                    attribute=self.attribute,
                )
            return t("on a contact's {attribute}", attribute=self.attribute)
        if self.kind == "inactive":
            return t("a contact has not opened or clicked for {days} days", days=self.inactive_days)
        return t("a new employee joins (from the HR lifecycle)")


KINDS = ("confirmed", "joined", "inactive")


def closest_kind(word: str) -> str | None:
    """The trigger word a typo such as `joind` or `confirmd` was meant to be, if one is close."""
    found = difflib.get_close_matches(word.lower(), KINDS, n=1, cutoff=0.75)
    return found[0] if found else None


def not_a_trigger(raw: str) -> UserError:
    head, sep, rest = raw.partition(":")
    near = closest_kind(head.strip())
    if near is not None:
        meant = near if near == "joined" or not sep else f"{near}:{rest.strip()}"
        return UserError(
            t(
                "“{text}” is not a trigger — did you mean “{near}”? Triggers: confirmed:<list>, joined, "
                "inactive:<N>d, or a date attribute such as “renewal_date - 14d”.",
                text=raw[:60],
                near=meant[:80],
            )
        )
    return UserError(
        t(
            "“{text}” is not a trigger: use confirmed:<list>, joined, inactive:<N>d, or a date attribute such "
            "as “renewal_date - 14d”.",
            text=raw[:60],
        )
    )


def parse_trigger(text: str) -> Trigger:
    raw = " ".join(text.split())
    if raw.lower().startswith("date:"):  # the canonical spelling (Trigger.canonical)
        raw = raw[5:]
    low = raw.lower()
    if low == "joined":
        return Trigger("joined")
    if low.startswith("confirmed"):
        name = raw[len("confirmed") :].lstrip(": ").strip()
        if not name:
            raise UserError(t("--on confirmed needs the list: --on confirmed:customers."))
        return Trigger("confirmed", list_name=name)
    if low.startswith("inactive"):
        span = low[len("inactive") :].lstrip(": ").strip()
        m = re.fullmatch(r"(\d{1,4})\s*([dw])", span)
        if m is None:
            raise UserError(t("--on inactive needs a number of days: --on inactive:180d."))
        days = int(m.group(1)) * (7 if m.group(2) == "w" else 1)
        if not 1 <= days <= 3650:
            raise UserError(t("--on inactive takes 1 to 3650 days."))
        return Trigger("inactive", inactive_days=days)
    m = _DATE.match(raw)
    if m is None:
        raise not_a_trigger(raw)
    offset = int(m.group(3) or 0) * (7 if m.group(4) == "w" else 1) * (-1 if m.group(2) == "-" else 1)
    if abs(offset) > 3650:
        raise UserError(t("A date trigger's offset is at most 3650 days."))
    return Trigger("date", attribute=m.group(1), offset_days=offset)


def parse_delay(text: str | None) -> int:
    if not text or text.strip() == "0":
        return 0
    m = _SPAN.match(text.strip().lower())
    if m is None:
        raise UserError(t("--delay “{text}” is not a delay such as 30m, 12h, 2d or 1w.", text=text[:20]))
    seconds = int(m.group(1)) * {"m": 60, "h": 3600, "d": 86400, "w": 604800}[m.group(2)]
    if seconds > 365 * 86400:
        raise UserError(t("--delay is at most a year."))
    return seconds


def parse_cap(text: str | None) -> int:
    if text is None:
        return 0
    if not text.isdigit() or not 1 <= int(text) <= 1_000_000:
        raise UserError(t("--cap takes a number of messages a day, 1 to 1,000,000."))
    return int(text)


def delay_text(seconds: int) -> str:
    if not seconds:
        return t("none: at once")
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def bound_text(trigger: Trigger, delay_s: int, cap: int) -> str:
    """What an approval is bound to beside the campaign's content (canonical: any change is a new hash)."""
    return json.dumps({"trigger": trigger.canonical(), "delay_s": delay_s, "cap": cap}, sort_keys=True)


def from_bound(bound: str | None) -> tuple[Trigger, int, int] | None:
    """The trigger, delay and cap an automation's campaign is bound to, or None for a campaign."""
    if not bound:
        return None
    try:
        data: dict[str, Any] = json.loads(bound)
        return parse_trigger(data["trigger"]), int(data["delay_s"]), int(data["cap"])
    except (ValueError, KeyError, TypeError, UserError):
        return None
