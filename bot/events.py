"""The seam between the core and the adapters.

Inbound (adapter to core): `Command`, `Action`, `PersonEvent`. Each carries the platform's
delivery id so that a redelivered event has one effect.
Outbound (core to adapter): `Message`, optionally with a `Card` of fields and `Button`s.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal


@dataclass(frozen=True)
class Actor:
    """Who did something: a user id on one platform. The core resolves it to an email."""

    platform: str
    user_id: str
    email: str | None = None  # set when the platform already told us (console, some events)
    name: str | None = None


@dataclass(frozen=True)
class Conversation:
    """Where to answer: a channel, a chat, a user's DM, or the console."""

    platform: str
    id: str
    kind: Literal["direct", "group", "channel"] = "direct"


@dataclass(frozen=True)
class MessageRef:
    """What `Adapter.send` returns, so the core can `update` the same message later."""

    platform: str
    conversation_id: str
    id: str
    extra: tuple[tuple[str, str], ...] = ()

    def get(self, key: str, default: str | None = None) -> str | None:
        return dict(self.extra).get(key, default)


@dataclass(frozen=True)
class Command:
    actor: Actor
    text: str
    conversation: Conversation
    delivery_id: str | None = None


@dataclass(frozen=True)
class Action:
    actor: Actor
    action_id: str
    value: str
    conversation: Conversation
    message: MessageRef | None = None
    delivery_id: str | None = None


PersonKind = Literal["joined", "changed", "left"]


@dataclass(frozen=True)
class Joiner:
    """A joiner the HR lifecycle has applied (what an onboarding automation listens for)."""

    person_id: int
    email: str
    name: str | None
    attributes: dict[str, Any]
    event_id: str


@dataclass(frozen=True)
class PersonEvent:
    kind: PersonKind
    source: str
    external_id: str
    email: str | None
    attributes: dict[str, Any]
    event_id: str
    at: datetime
    name: str | None = None


@dataclass(frozen=True)
class Button:
    action_id: str
    label: str
    value: str
    style: Literal["primary", "danger", "default"] = "default"
    confirm: str | None = None
    text_command: str | None = None  # the typed twin of the click, e.g. "/approve spring"


@dataclass(frozen=True)
class Card:
    title: str
    fields: tuple[tuple[str, str], ...] = ()
    buttons: tuple[Button, ...] = ()
    progress: float | None = None  # 0.0 .. 1.0
    link: tuple[str, str] | None = None  # (label, url)
    footer: str | None = None


@dataclass(frozen=True)
class Image:
    """A picture shown beside a message's text (a report's chart): a PNG file the core wrote. Each
    adapter uploads it the platform's way (Slack files upload, DingTalk and WeCom media upload) or,
    where it can't, names the path."""

    path: str
    title: str  # the file's title and the picture's alternative text


@dataclass(frozen=True)
class Message:
    text: str
    card: Card | None = None
    ephemeral: bool = False
    attachments: tuple[str, ...] = field(default=())  # paths of files (an export), if any
    images: tuple[Image, ...] = field(default=())  # pictures shown beside the text
    # The command was refused or failed, nothing changed (a script driving `postroom chat` exits non-zero).
    refused: bool = False
