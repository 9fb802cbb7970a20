"""Core messages to Block Kit, and the reason modal. Pure functions: payload in, payload out.

Every render gets fresh `block_id`s, so Slack redraws a replaced message instead of keeping
stale interactive state. Button values carry only the core's opaque value (a campaign id).
"""

from __future__ import annotations

import json
import secrets
from typing import Any

from bot.events import Button, Card, Message

SECTION_LIMIT = 3000  # characters of text in one section block
FIELD_LIMIT = 2000  # characters of one section field
FIELDS_PER_SECTION = 10
TEXT_LIMIT = 39_000  # a message's top-level text (Slack truncates at 40,000)
REASON_CALLBACK = "postroom.reason"
REASON_BLOCK = "reason"
REASON_INPUT = "reason_input"


def escape(text: str) -> str:
    """Slack's three control characters; everything else is literal in mrkdwn and plain text."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _plain(text: str, limit: int = 150) -> dict[str, Any]:
    return {"type": "plain_text", "text": _cut(text, limit) or " ", "emoji": True}


def progress_bar(fraction: float, width: int = 20) -> str:
    fraction = min(1.0, max(0.0, fraction))
    filled = int(round(fraction * width))
    return "▓" * filled + "░" * (width - filled) + f" {fraction:.0%}"


def _button(b: Button, block_token: str) -> dict[str, Any]:
    out: dict[str, Any] = {
        "type": "button",
        "action_id": b.action_id,
        "text": _plain(b.label, 75),
        "value": b.value[:2000],
    }
    if b.style in ("primary", "danger"):
        out["style"] = b.style
    if b.confirm:
        out["confirm"] = {
            "title": _plain(f"{b.label}?", 100),
            "text": {"type": "plain_text", "text": _cut(b.confirm, 300)},
            "confirm": _plain(b.label, 30),
            "deny": _plain("Cancel", 30),
        }
        if b.style == "danger":
            out["confirm"]["style"] = "danger"
    return out


def card_blocks(card: Card, text: str = "") -> list[dict[str, Any]]:
    token = secrets.token_hex(4)
    n = iter(range(1000))

    def bid() -> str:
        return f"pr-{token}-{next(n)}"

    blocks: list[dict[str, Any]] = [{"type": "header", "block_id": bid(), "text": _plain(card.title)}]
    if text:
        blocks.append(
            {
                "type": "section",
                "block_id": bid(),
                "text": {"type": "mrkdwn", "text": _cut(escape(text), SECTION_LIMIT)},
            }
        )
    fields = [
        {"type": "mrkdwn", "text": _cut(f"*{escape(name)}*\n{escape(str(value))}", FIELD_LIMIT)}
        for name, value in card.fields
    ]
    for i in range(0, len(fields), FIELDS_PER_SECTION):
        blocks.append({"type": "section", "block_id": bid(), "fields": fields[i : i + FIELDS_PER_SECTION]})
    if card.progress is not None:
        blocks.append(
            {
                "type": "context",
                "block_id": bid(),
                "elements": [{"type": "mrkdwn", "text": progress_bar(card.progress)}],
            }
        )
    if card.link:
        label, url = card.link
        blocks.append(
            {
                "type": "section",
                "block_id": bid(),
                "text": {
                    "type": "mrkdwn",
                    "text": f"<{url}|{escape(label)}> (opens a sample in your browser)",
                },
            }
        )
    if card.buttons:
        blocks.append(
            {"type": "actions", "block_id": bid(), "elements": [_button(b, token) for b in card.buttons[:25]]}
        )
    if card.footer:
        blocks.append(
            {
                "type": "context",
                "block_id": bid(),
                "elements": [{"type": "mrkdwn", "text": _cut(escape(card.footer), SECTION_LIMIT)}],
            }
        )
    return blocks


def message_payload(message: Message) -> dict[str, Any]:
    """`text` (the notification and fallback) and, for a card, `blocks`."""
    text = message.text or (message.card.title if message.card else "")
    payload: dict[str, Any] = {"text": _cut(escape(text), TEXT_LIMIT)}
    if message.card is not None:
        payload["blocks"] = card_blocks(message.card, message.text)
    return payload


def reason_modal(*, title: str, action_id: str, value: str, channel: str, ts: str) -> dict[str, Any]:
    """The modal a reject click opens; its submission carries the click's context back."""
    metadata = json.dumps({"a": action_id, "v": value, "c": channel, "t": ts})
    return {
        "type": "modal",
        "callback_id": REASON_CALLBACK,
        "private_metadata": metadata[:3000],
        "title": _plain(title, 24),
        "submit": _plain("Reject", 24),
        "close": _plain("Cancel", 24),
        "blocks": [
            {
                "type": "input",
                "block_id": REASON_BLOCK,
                "label": _plain("Why? The sender will see this.", 2000),
                "element": {
                    "type": "plain_text_input",
                    "action_id": REASON_INPUT,
                    "multiline": True,
                    "min_length": 1,
                    "max_length": 1000,
                },
            }
        ],
    }


def read_reason_submission(view: dict[str, Any]) -> tuple[dict[str, str], str] | None:
    """(the click's context, the reason) from a submitted reason modal, or None if malformed."""
    try:
        meta = json.loads(view.get("private_metadata") or "")
        reason = view["state"]["values"][REASON_BLOCK][REASON_INPUT]["value"] or ""
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(meta, dict) or not all(isinstance(meta.get(k), str) for k in ("a", "v", "c", "t")):
        return None
    return meta, reason.strip()
