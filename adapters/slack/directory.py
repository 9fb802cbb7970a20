"""Slack directory events to `PersonEvent`s: one dispatch table, one policy for bots and guests.

Policy (README, "Slack"):
- Bots, apps and Slackbot are not people: their events are ignored.
- Guests (single- and multi-channel) are outside the company: a guest joining changes nothing,
  and a member turned guest (or a deactivated account) is a leaver, so they drop out of every
  internal group. The core's policy keeps external addresses out of internal groups anyway.
- Everyone else: `team_join` is a joiner, `user_change` a mover (profile change) or, with
  `deleted: true`, a leaver.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

from bot.events import PersonEvent

SOURCE = "slack"
Kind = Literal["joined", "changed", "left"]


def is_bot(user: dict[str, Any]) -> bool:
    return bool(user.get("is_bot") or user.get("is_app_user") or user.get("id") == "USLACKBOT")


def is_guest(user: dict[str, Any]) -> bool:
    return bool(user.get("is_restricted") or user.get("is_ultra_restricted"))


def email_of(user: dict[str, Any]) -> str | None:
    email = (user.get("profile") or {}).get("email")
    return email if isinstance(email, str) and "@" in email else None


def name_of(user: dict[str, Any]) -> str | None:
    profile = user.get("profile") or {}
    for key in ("real_name", "display_name"):
        if profile.get(key):
            return str(profile[key])[:200]
    return str(user["real_name"])[:200] if user.get("real_name") else None


def attributes_of(user: dict[str, Any]) -> dict[str, Any]:
    profile = user.get("profile") or {}
    attrs: dict[str, Any] = {"slack_user_id": user.get("id")}
    if profile.get("title"):
        attrs["slack_title"] = str(profile["title"])[:200]
    if user.get("tz"):
        attrs["slack_tz"] = str(user["tz"])
    return attrs


def _team_join(user: dict[str, Any]) -> Kind | None:
    if is_guest(user) or user.get("deleted"):
        return None
    return "joined"


def _user_change(user: dict[str, Any]) -> Kind | None:
    if user.get("deleted") or is_guest(user):
        return "left"
    return "changed"


KINDS: dict[str, Callable[[dict[str, Any]], Kind | None]] = {
    "team_join": _team_join,
    "user_change": _user_change,
}


def person_event(body: dict[str, Any]) -> PersonEvent | None:
    """The PersonEvent an Events API envelope stands for, or None when the policy ignores it."""
    event = body.get("event") or {}
    decide = KINDS.get(event.get("type", ""))
    user = event.get("user")
    if decide is None or not isinstance(user, dict) or not user.get("id") or is_bot(user):
        return None
    kind = decide(user)
    if kind is None:
        return None
    # event_ts has microseconds; event_time only seconds, and two changes in one second must both count
    stamp = event.get("event_ts") or body.get("event_time") or user.get("updated") or 0
    try:
        at = datetime.fromtimestamp(float(stamp), UTC)
    except (TypeError, ValueError, OverflowError):
        at = datetime.now(UTC)
    event_id = str(body.get("event_id") or f"{event.get('type')}:{user['id']}:{stamp}")
    return PersonEvent(
        kind=kind,
        source=SOURCE,
        external_id=str(user["id"]),
        email=email_of(user),
        attributes=attributes_of(user),
        event_id=event_id,
        at=at,
        name=name_of(user),
    )


def fingerprint(user: dict[str, Any]) -> tuple[Any, ...]:
    """What a `changed` event can change in Postroom; status-emoji edits leave it equal."""
    return (
        email_of(user),
        name_of(user),
        bool(user.get("deleted")),
        is_guest(user),
        tuple(sorted(attributes_of(user).items())),
    )
