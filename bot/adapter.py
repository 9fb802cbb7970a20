"""The seam between the core and a messenger adapter. The console adapter is the reference.

`Adapter` is what every adapter implements. `CoreHandle` is all an adapter may call on the core:
hand it inbound events, ask whose roles an address has, and use the narrow `Directory` port to
remember which platform user is which person (adapters never touch the database themselves).
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Literal, Protocol

from bot import i18n
from bot.events import Action, Actor, Command, Conversation, Message, MessageRef, PersonEvent
from bot.message_text import picture_fallback

log = logging.getLogger(__name__)


class Directory(Protocol):
    """The platform identities the core keeps: (platform, user id) -> the person's email."""

    async def remember(self, platform: str, user_id: str, email: str, name: str | None = None) -> None:
        """Record or refresh who `user_id` is (UserError for an unusable address)."""

    async def known(self, platform: str, user_id: str) -> tuple[str, str | None] | None:
        """The (email, name) last recorded for `user_id`: the answer for leavers the platform can no
        longer look up."""

    async def unmapped(self, platform: str) -> list[str]:
        """Emails of active people this platform's user id is not known for yet."""


class CoreHandle(Protocol):
    @property
    def directory(self) -> Directory: ...

    async def handle_command(self, cmd: Command) -> Message | None: ...

    async def handle_action(self, action: Action) -> Message | None: ...

    async def handle_person_event(self, event: PersonEvent) -> Any: ...

    def roles_of(self, email: str) -> frozenset[str]: ...


class Adapter(ABC):
    platform: str = ""
    locale: str = "en"  # the language of this messenger's people unless they choose another (/lang)

    @abstractmethod
    async def start(self, core: CoreHandle) -> None:
        """Connect and begin delivering Commands, Actions and PersonEvents to the core."""

    @abstractmethod
    async def stop(self) -> None:
        """Disconnect; return within a few seconds."""

    @abstractmethod
    async def send(self, conversation: Conversation, message: Message) -> MessageRef:
        """Post a message; return a reference that `update` can edit."""

    @abstractmethod
    async def update(self, ref: MessageRef, message: Message) -> None:
        """Replace a message the adapter sent earlier."""

    @abstractmethod
    async def resolve(self, actor: Actor) -> tuple[str, str | None] | None:
        """The actor's (email, display name) from the platform directory, or None."""

    def web_routes(self) -> list[Any]:
        """Starlette routes this adapter serves on Postroom's web app (HTTP callbacks), if any."""
        return []

    def conversation_for(self, purpose: str) -> Conversation | None:
        """Where this adapter posts cards for a purpose ('approvals', 'hr'), if anywhere."""
        return None


PictureFault = Literal["too large", "refused"]


async def send_pictures(
    message: Message,
    *,
    platform: str,
    locale: str | None,
    max_bytes: int,
    deliver: Callable[[str, bytes], Awaitable[None]],
    tell: Callable[[str], Awaitable[None]],
    classify: Callable[[Exception], PictureFault | None],
) -> None:
    """A message's pictures, after its text went out: each read and size-checked here, then handed to
    `deliver(filename, data)` (the platform's upload and image message). A picture that fails never
    fails the send (the text stands, and a caller retrying would repeat it): the chat is told why in a
    few words, through `tell`, best effort. `classify` reads the platform's error: too large, refused,
    or (None) no usable answer."""
    for image in message.images:
        fault: str
        try:
            data = await asyncio.to_thread(Path(image.path).read_bytes)
        except OSError as exc:
            log.warning("reading the picture %s for %s failed: %s", image.path, platform, exc)
            fault = "unreadable"
        else:
            if len(data) > max_bytes:
                fault = "too large"
            else:
                try:
                    await deliver(Path(image.path).name, data)
                    continue
                except Exception as exc:
                    log.warning("sending the picture %s to %s failed: %s", image.path, platform, exc)
                    fault = classify(exc) or "no answer"
        with i18n.using(locale):
            if fault == "unreadable":
                why = i18n.t("the picture file could not be read")
            elif fault == "too large":
                why = i18n.t("file too large for {platform}", platform=platform)
            elif fault == "refused":
                why = i18n.t("{platform} refused the upload", platform=platform)
            else:
                why = i18n.t("{platform} gave no usable answer", platform=platform)
            said = picture_fallback(message, why)
        try:
            await tell(said)
        except Exception as again:
            log.warning("telling the %s conversation about the picture failed too: %s", platform, again)
