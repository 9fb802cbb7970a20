"""A campaign's status note (why it paused, failed, was rejected), stored so each reader sees it in their language.

`Campaign.status_note` holds the English text with its values as JSON — `{"t": text, "v": {values}}` —
written by `note()`. `show()` translates it when it is displayed, in the current locale (each messenger
gets its own). A plain string (a row written before this) is shown as it is.
"""

from __future__ import annotations

import json
from typing import Any

from bot import i18n
from bot.i18n import t


def note(text: str, /, **values: Any) -> str:
    """What to store in `status_note`: an English text from the zh_CN catalog and its values."""
    return json.dumps({"t": text, "v": {k: str(v) for k, v in values.items()}}, ensure_ascii=False)


def show(stored: str | None) -> str:
    """The note in the current locale ("" when there is none)."""
    if not stored:
        return ""
    if stored.startswith("{"):
        try:
            data = json.loads(stored)
        except ValueError:
            return stored
        if isinstance(data, dict) and isinstance(data.get("t"), str) and isinstance(data.get("v", {}), dict):
            try:
                return t(data["t"], **data.get("v", {}))
            except (KeyError, IndexError, ValueError):
                return str(data["t"])
    return stored


def english(stored: str | None) -> str:
    """The note in English (for the audit trail and logs)."""
    with i18n.using("en"):
        return show(stored)


def state_name(state: str) -> str:
    """A campaign state as a person reads it (“pending approval”)."""
    names = {
        "draft": t("draft"),
        "pending_approval": t("pending approval"),
        "approved": t("approved"),
        "scheduled": t("scheduled"),
        "sending": t("sending"),
        "paused": t("paused"),
        "completed": t("completed"),
        "failed": t("failed"),
        "cancelled": t("cancelled"),
        "rejected": t("rejected"),
    }
    return names.get(state, state.replace("_", " "))


def status_name(status: str) -> str:
    """A delivery status as a person reads it."""
    names = {
        "pending": t("pending"),
        "sending": t("sending"),
        "sent": t("sent"),
        "bounced": t("bounced"),
        "failed": t("failed"),
        "suppressed": t("suppressed"),
        "cancelled": t("cancelled"),
        "capped": t("capped"),
    }
    return names.get(status, status)


def decision_name(decision: str) -> str:
    """An approver's decision: approved or rejected."""
    return {"approved": t("approved"), "rejected": t("rejected")}.get(decision, decision)
