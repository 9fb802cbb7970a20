"""The core: takes Commands, Actions and PersonEvents from adapters, decides, and answers.

It answers fast (a messenger gives about 3 seconds) and does slow work — a campaign send —
in background tasks that report back by updating the message they started from.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from bot import i18n, identities
from bot.adapter import Adapter
from bot.addresses import normalise
from bot.background import Background
from bot.commands.parser import Parsed, Spec, parse, tokenize
from bot.context import Context
from bot.db.models import MessageRecord, Preference, ProcessedEvent
from bot.db.upsert import insert_ignore
from bot.errors import PermissionDenied, UserError
from bot.events import Action, Actor, Command, Conversation, Message, MessageRef, PersonEvent
from bot.i18n import t

log = logging.getLogger(__name__)

ROLE_NAMES = ("hr", "senders", "approvers", "admins")


@dataclass(frozen=True)
class Request:
    """Who is asking, through what, from where."""

    email: str
    roles: frozenset[str]
    via: str  # the platform: console, slack, dingtalk, wecom
    conversation: Conversation
    actor: Actor

    def has(self, *roles: str) -> bool:
        return "admins" in self.roles or any(r in self.roles for r in roles)


Handler = Callable[["Core", Request, Parsed], Awaitable[Message]]
ActionHandler = Callable[["Core", Request, Action], Awaitable[Message | None]]


class Core:
    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.adapters: dict[str, Adapter] = {}
        self.commands: dict[tuple[str, ...], tuple[Spec, Handler]] = {}
        self.actions: dict[str, ActionHandler] = {}
        self.groups_of_commands: dict[str, list[tuple[str, ...]]] = {}
        self.background = Background("core", log)
        self.worker_id = f"{ctx.settings.org.name[:10]}-{secrets.token_hex(3)}"
        self.services: dict[str, Any] = {}
        from bot.commands import register_all

        register_all(self)

    # -- wiring ---------------------------------------------------------------------------------
    def attach(self, adapter: Adapter) -> None:
        self.adapters[adapter.platform] = adapter

    def command(self, spec: Spec) -> Callable[[Handler], Handler]:
        def register(fn: Handler) -> Handler:
            self.commands[spec.path] = (spec, fn)
            return fn

        return register

    def action(self, action_id: str) -> Callable[[ActionHandler], ActionHandler]:
        def register(fn: ActionHandler) -> ActionHandler:
            self.actions[action_id] = fn
            return fn

        return register

    # -- background work -------------------------------------------------------------------------
    def spawn(self, coro: Coroutine[Any, Any, Any], name: str = "") -> asyncio.Task[Any]:
        return self.background.spawn(coro, name)

    async def drain(self, timeout: float | None = None) -> None:
        """Wait for background work (a send) to finish; used by `postroom chat` and tests."""
        await self.background.settle(timeout)

    async def shutdown(self) -> None:
        await self.background.cancel()

    # -- identity ------------------------------------------------------------------------------
    def roles_of(self, email: str) -> frozenset[str]:
        r = self.ctx.settings.roles
        return frozenset(name for name in ROLE_NAMES if email in getattr(r, name))

    async def identify(self, actor: Actor) -> str:
        if actor.email:
            return normalise(actor.email)
        adapter = self.adapters.get(actor.platform)

        async def resolve() -> tuple[str | None, str | None] | None:
            return await adapter.resolve(actor) if adapter is not None else None

        email = await identities.identify(self.ctx, actor.platform, actor.user_id, resolve)
        if not email:
            raise UserError(
                t(
                    "I can't tell who you are: your account has no email address I can read. Ask an admin to check "
                    "the bot's directory permissions."
                )
            )
        return email

    async def _request(self, actor: Actor, conversation: Conversation) -> Request:
        email = await self.identify(actor)
        return Request(email, self.roles_of(email), actor.platform, conversation, actor)

    def platform_locale(self, platform: str) -> str:
        adapter = self.adapters.get(platform)
        return adapter.locale if adapter is not None else i18n.DEFAULT

    async def locale_of(self, email: str | None, platform: str) -> str:
        """The person's own choice (/lang), else their messenger's language."""
        if email:
            async with self.ctx.sessions() as session:
                chosen = (
                    await session.execute(select(Preference.locale).where(Preference.email == email))
                ).scalar()
            if chosen:
                return i18n.normalise_locale(chosen)
        return self.platform_locale(platform)

    async def first_time(self, source: str, event_id: str | None) -> bool:
        """Record an inbound delivery id; False when it was seen before (a redelivery)."""
        if not event_id:
            return True
        async with self.ctx.sessions() as session, session.begin():
            return (
                await insert_ignore(
                    session,
                    ProcessedEvent,
                    [{"source": source, "event_id": event_id[:300]}],
                    ["source", "event_id"],
                )
                == 1
            )

    # -- inbound -------------------------------------------------------------------------------
    def find_command(self, tokens: list[str]) -> tuple[Spec, Handler, list[str]] | None:
        if not tokens:
            return None
        head = tokens[0].lstrip("/").lower()
        if len(tokens) > 1 and (head, tokens[1].lower()) in self.commands:
            spec, fn = self.commands[(head, tokens[1].lower())]
            return spec, fn, tokens[2:]
        if (head,) in self.commands:
            spec, fn = self.commands[(head,)]
            return spec, fn, tokens[1:]
        return None

    def usage_for(self, words: list[str]) -> str | None:
        """The usage line of the command these first words name, if any."""
        found = self.find_command(words)
        if found is not None:
            return found[0].usage
        sub = self.groups_of_commands.get(words[0].lstrip("/").lower()) if words else None
        return f"/{words[0].lstrip('/').lower()} {'|'.join(sorted(p[1] for p in sub))} …" if sub else None

    async def handle_command(self, cmd: Command) -> Message | None:
        """The reply to a command; None when it is a redelivery already answered."""
        if not await self.first_time(f"{cmd.actor.platform}:command", cmd.delivery_id):
            return None
        with i18n.using(self.platform_locale(cmd.actor.platform)):
            return await self._command(cmd)

    async def _use_person_locale(self, actor: Actor) -> None:
        try:
            email = await self.identify(actor)
        except UserError:
            return  # answered later, in the messenger's language
        i18n.set_locale(await self.locale_of(email, actor.platform))

    async def _command(self, cmd: Command) -> Message | None:
        await self._use_person_locale(cmd.actor)
        try:
            try:
                tokens = tokenize(cmd.text.strip())
            except UserError as exc:
                raise UserError(exc.sentence, self.usage_for(cmd.text.split()[:2])) from None
            if not tokens:
                return Message(t("Type /help to see what I can do."))
            found = self.find_command(tokens)
            if found is None:
                head = tokens[0].lstrip("/").lower()
                sub = self.groups_of_commands.get(head)
                if sub:
                    names = sorted(p[1] for p in sub)
                    usage = self.usage_for(tokens[:1])
                    if len(tokens) > 1:
                        raise UserError(
                            t(
                                "/{command} has no subcommand “{sub}”; it takes {names}.",
                                command=head,
                                sub=tokens[1][:40],
                                names=", ".join(names),
                            ),
                            usage,
                        )
                    raise UserError(
                        t("/{command} needs a subcommand: {names}.", command=head, names=", ".join(names)),
                        usage,
                    )
                raise UserError(
                    t("I don't know the command “{name}”. /help lists what I can do.", name=tokens[0][:40])
                )
            spec, handler, rest = found
            request = await self._request(cmd.actor, cmd.conversation)
            if spec.roles and "owners" not in spec.roles and not request.has(*spec.roles):
                raise PermissionDenied(_role_sentence(spec))
            parsed = parse(spec, rest)
            return await handler(self, request, parsed)
        except UserError as exc:
            return error_message(exc)
        except Exception:
            ref = secrets.token_hex(4)
            log.exception("command failed (ref %s): %r", ref, cmd.text[:200])
            return Message(
                t(
                    "Something went wrong on my side (reference {ref}); nothing was changed. "
                    "An admin can find the details in the log.",
                    ref=ref,
                )
            )

    async def handle_action(self, action: Action) -> Message | None:
        if not await self.first_time(f"{action.actor.platform}:action", action.delivery_id):
            return None
        with i18n.using(self.platform_locale(action.actor.platform)):
            return await self._action(action)

    async def _action(self, action: Action) -> Message | None:
        await self._use_person_locale(action.actor)
        handler = self.actions.get(action.action_id)
        try:
            if handler is None:
                raise UserError(t("That button is no longer active."))
            request = await self._request(action.actor, action.conversation)
            return await handler(self, request, action)
        except UserError as exc:
            return error_message(exc)
        except Exception:
            ref = secrets.token_hex(4)
            log.exception("action failed (ref %s): %s", ref, action.action_id)
            return Message(
                t("Something went wrong on my side (reference {ref}); nothing was changed.", ref=ref)
            )

    async def handle_person_event(self, event: PersonEvent) -> Any:
        """A joiner, mover or leaver from any source (HR webhook, CSV, a messenger's directory).

        Returns the lifecycle outcome (`.status`: applied, duplicate or stale).
        """
        from bot.hr.lifecycle import apply_person_event

        return await apply_person_event(self, event)

    # -- outbound ------------------------------------------------------------------------------
    async def post(self, purpose: str, message: Outgoing, subject: str | None = None) -> list[MessageRef]:
        """Send to every attached adapter's conversation for `purpose`; remember refs under `subject`.

        Pass a function that builds the message to have it written in each messenger's language.
        """
        refs: list[MessageRef] = []
        for adapter in list(self.adapters.values()):
            conversation = adapter.conversation_for(purpose)
            if conversation is None:
                continue
            try:
                ref = await adapter.send(conversation, _build(message, adapter.locale))
            except Exception:
                log.exception("posting to %s failed", adapter.platform)
                continue
            refs.append(ref)
        if subject and refs:
            async with self.ctx.sessions() as session, session.begin():
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
        """Replace every message posted about `subject` on the adapters attached here."""
        async with self.ctx.sessions() as session:
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
                await adapter.update(ref, _build(message, adapter.locale))
                updated += 1
            except Exception:
                log.exception("updating a %s message failed", rec.platform)
        return updated


Outgoing = Message | Callable[[], Message]


def _build(message: Outgoing, locale: str) -> Message:
    if isinstance(message, Message):
        return message
    with i18n.using(locale):
        return message()


def _role_sentence(spec: Spec) -> str:
    names = {
        "hr": t("HR"),
        "senders": t("campaign senders"),
        "approvers": t("approvers"),
        "admins": t("admins"),
    }
    wanted = t(" or ").join(names.get(r, r) for r in spec.roles if r != "owners")
    return t(
        "/{command} is for {roles}; you don't have that role. An admin can grant it in the configuration.",
        command=spec.name,
        roles=wanted,
    )


def error_message(exc: UserError) -> Message:
    text = visible(exc.sentence)
    if exc.usage:
        text += "\n" + t("Usage: {usage}", usage=exc.usage)
    return Message(text, ephemeral=True)


# Control characters and bidirectional overrides a person typed are echoed as visible escapes,
# so an answer can't clear a terminal or reverse the rest of a line in a messenger.
_INVISIBLE = {
    c: f"\\u{c:04x}"
    for c in [
        *range(0, 10),
        *range(11, 32),
        127,
        *range(0x80, 0xA0),
        0x200E,
        0x200F,
        *range(0x202A, 0x202F),
        *range(0x2066, 0x206A),
    ]
}


def visible(text: str) -> str:
    return text.translate(_INVISIBLE)
