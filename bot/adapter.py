"""What every messenger adapter implements. The console adapter is the reference."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

from bot.events import Actor, Conversation, Message, MessageRef

if TYPE_CHECKING:
    from bot.core import Core


class Adapter(ABC):
    platform: str = ""
    locale: str = "en"  # the language of this messenger's people unless they choose another (/lang)

    @abstractmethod
    async def start(self, core: Core) -> None:
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
