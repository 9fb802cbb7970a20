"""The messengers attached to this process, as the core's capabilities see them: post a message to
the conversation each keeps for a purpose ("approvals", "hr"), and later replace every message posted
about one subject (an approval card that turns into its outcome, a progress card).

A message meant for several messengers is passed as a function that builds it, so that each gets it
in its own language.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy import select
from sqlalchemy.ext.asyncio import async_sessionmaker

from bot import i18n
from bot.adapter import Adapter
from bot.db.models import MessageRecord
from bot.events import Message, MessageRef

log = logging.getLogger(__name__)

Outgoing = Message | Callable[[], Message]


def build(message: Outgoing, locale: str) -> Message:
    """The message itself, or what the function builds in `locale`."""
    if isinstance(message, Message):
        return message
    with i18n.using(locale):
        return message()


class Messengers:
    def __init__(self, sessions: async_sessionmaker):
        self.sessions = sessions
        self.adapters: dict[str, Adapter] = {}

    def attach(self, adapter: Adapter) -> None:
        self.adapters[adapter.platform] = adapter

    def get(self, platform: str) -> Adapter | None:
        return self.adapters.get(platform)

    def locale_of(self, platform: str) -> str:
        """The language of a messenger's people unless they chose another (/lang)."""
        adapter = self.adapters.get(platform)
        return adapter.locale if adapter is not None else i18n.DEFAULT

    async def post(self, purpose: str, message: Outgoing, subject: str | None = None) -> list[MessageRef]:
        """Send to every attached messenger's conversation for `purpose`; remember the refs under `subject`."""
        refs: list[MessageRef] = []
        for adapter in list(self.adapters.values()):
            conversation = adapter.conversation_for(purpose)
            if conversation is None:
                continue
            try:
                ref = await adapter.send(conversation, build(message, adapter.locale))
            except Exception:
                log.exception("posting to %s failed", adapter.platform)
                continue
            refs.append(ref)
        if subject and refs:
            async with self.sessions() as session, session.begin():
                for ref in refs:
                    session.add(
                        MessageRecord(
                            subject=subject,
                            platform=ref.platform,
                            conversation_id=ref.conversation_id,
                            ref_id=ref.id,
                            extra=dict(ref.extra),
                        )
                    )
        return refs

    async def update_subject(self, subject: str, message: Outgoing) -> int:
        """Replace every message posted about `subject` on the messengers attached here."""
        async with self.sessions() as session:
            records = (
                (await session.execute(select(MessageRecord).where(MessageRecord.subject == subject)))
                .scalars()
                .all()
            )
        updated = 0
        for rec in records:
            adapter = self.adapters.get(rec.platform)
            if adapter is None:
                continue
            ref = MessageRef(
                rec.platform, rec.conversation_id, rec.ref_id, tuple(sorted((rec.extra or {}).items()))
            )
            try:
                await adapter.update(ref, build(message, adapter.locale))
                updated += 1
            except Exception:
                log.exception("updating a %s message failed", rec.platform)
        return updated

    async def posted_about(self, subjects: list[str]) -> set[str]:
        """Which of these subjects have a message posted already (in any process)."""
        if not subjects:
            return set()
        async with self.sessions() as session:
            rows = await session.execute(
                select(MessageRecord.subject).where(MessageRecord.subject.in_(subjects))
            )
            return set(rows.scalars())
