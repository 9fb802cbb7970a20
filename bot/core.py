"""The core: takes Commands, Actions and PersonEvents from adapters, decides who is asking, and hands
each to what handles it — a command's handler from the `CommandTable`, a button's handler, the HR
lifecycle — answering in the person's language, with one sentence for every refusal.

It answers fast (a messenger gives about 3 seconds); slow work (a campaign send) runs in the
background of the capability that owns it and reports back by updating the message it started from.
The commands are registered by the composition root (bot/app.py), not imported here.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from bot import i18n
from bot.addresses import normalise
from bot.commandline import Parsed, Spec, parse, tokenize
from bot.context import Context
from bot.db.models import Person, Preference, ProcessedEvent
from bot.db.upsert import insert_ignore
from bot.errors import PermissionDenied, UserError, error_message
from bot.events import Action, Actor, Command, Conversation, Message, PersonEvent
from bot.hr.lifecycle import Lifecycle
from bot.i18n import t
from bot.identities import Identities
from bot.messengers import Messengers

log = logging.getLogger(__name__)

ROLE_NAMES = ("hr", "senders", "approvers", "admins")


@dataclass(frozen=True)
class Request:
    """Who is asking, through what, from where.

    `colleague` is the one answer to "is this person in the company?" for every command: an address on
    one of `org.domains` whose HR record does not say they left (in their grace period or after). A
    leaver is nobody's colleague and holds no role, whatever the configuration still lists.
    """

    email: str
    roles: frozenset[str]
    via: str  # the platform: console, slack, dingtalk, wecom
    conversation: Conversation
    actor: Actor
    colleague: bool = False
    left: bool = False  # HR's record says they left

    def has(self, *roles: str) -> bool:
        return "admins" in self.roles or any(r in self.roles for r in roles)

    def owns(self, owners: list[str] | tuple[str, ...] | None) -> bool:
        """One of these owners (or moderators), and still a colleague."""
        return self.colleague and self.email in (owners or ())


Handler = Callable[[Request, Parsed], Awaitable[Message]]
ActionHandler = Callable[[Request, Action], Awaitable[Message | None]]


@dataclass
class CommandTable:
    """Every chat command (its Spec and handler) and every button's handler."""

    commands: dict[tuple[str, ...], tuple[Spec, Handler]] = field(default_factory=dict)
    actions: dict[str, ActionHandler] = field(default_factory=dict)

    def command(self, spec: Spec, handler: Handler) -> None:
        self.commands[spec.path] = (spec, handler)

    def action(self, action_id: str, handler: ActionHandler) -> None:
        self.actions[action_id] = handler

    def specs(self) -> list[Spec]:
        return [spec for _path, (spec, _handler) in sorted(self.commands.items())]

    def subcommands(self, head: str) -> list[str]:
        """The second words of the commands that share a first word (`/campaign new|edit|…`)."""
        return sorted(path[1] for path in self.commands if len(path) > 1 and path[0] == head)

    def find(self, tokens: list[str]) -> tuple[Spec, Handler, list[str]] | None:
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
        found = self.find(words)
        if found is not None:
            return found[0].usage
        head = words[0].lstrip("/").lower() if words else ""
        sub = self.subcommands(head) if head else []
        return f"/{head} {'|'.join(sub)} …" if sub else None


class Core:
    def __init__(
        self,
        ctx: Context,
        *,
        table: CommandTable,
        messengers: Messengers,
        identities: Identities,
        lifecycle: Lifecycle,
    ):
        self.ctx = ctx
        self.table = table
        self.messengers = messengers
        self.identities = identities
        self.lifecycle = lifecycle

    # -- identity ------------------------------------------------------------------------------
    @property
    def directory(self) -> Identities:
        """The port adapters use to remember who a platform user is (bot.adapter.Directory)."""
        return self.identities

    def roles_of(self, email: str) -> frozenset[str]:
        r = self.ctx.settings.roles
        return frozenset(name for name in ROLE_NAMES if email in getattr(r, name))

    async def identify(self, actor: Actor) -> str:
        if actor.email:
            return normalise(actor.email, existing=True)
        adapter = self.messengers.get(actor.platform)

        async def resolve() -> tuple[str | None, str | None] | None:
            return await adapter.resolve(actor) if adapter is not None else None

        email = await self.identities.identify(actor.platform, actor.user_id, resolve)
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
        if await self.has_left(email):
            return Request(
                email, frozenset(), actor.platform, conversation, actor, colleague=False, left=True
            )
        colleague = self.ctx.settings.is_internal(email)
        return Request(email, self.roles_of(email), actor.platform, conversation, actor, colleague=colleague)

    async def has_left(self, email: str) -> bool:
        """HR's record says this person left (their grace period may still be running)."""
        async with self.ctx.sessions() as session:
            status = (await session.execute(select(Person.status).where(Person.email == email))).scalar()
        return status == "left"

    async def locale_of(self, email: str | None, platform: str) -> str:
        """The person's own choice (/lang), else their messenger's language."""
        if email:
            async with self.ctx.sessions() as session:
                chosen = (
                    await session.execute(select(Preference.locale).where(Preference.email == email))
                ).scalar()
            if chosen:
                return i18n.normalise_locale(chosen)
        return self.messengers.locale_of(platform)

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
    async def handle_command(self, cmd: Command) -> Message | None:
        """The reply to a command; None when it is a redelivery already answered."""
        if not await self.first_time(f"{cmd.actor.platform}:command", cmd.delivery_id):
            return None
        with i18n.using(self.messengers.locale_of(cmd.actor.platform)):
            return await self._command(cmd)

    async def _use_person_locale(self, actor: Actor) -> None:
        try:
            email = await self.identify(actor)
        except UserError:
            return  # answered later, in the messenger's language
        i18n.set_locale(await self.locale_of(email, actor.platform))

    def _unknown(self, tokens: list[str]) -> UserError:
        head = tokens[0].lstrip("/").lower()
        names = self.table.subcommands(head)
        if not names:
            return UserError(
                t("I don't know the command “{name}”. /help lists what I can do.", name=tokens[0][:40])
            )
        usage = self.table.usage_for(tokens[:1])
        if len(tokens) > 1:
            return UserError(
                t(
                    "/{command} has no subcommand “{sub}”; it takes {names}.",
                    command=head,
                    sub=tokens[1][:40],
                    names=", ".join(names),
                ),
                usage,
            )
        return UserError(
            t("/{command} needs a subcommand: {names}.", command=head, names=", ".join(names)), usage
        )

    async def _command(self, cmd: Command) -> Message | None:
        await self._use_person_locale(cmd.actor)
        try:
            try:
                tokens = tokenize(cmd.text.strip())
            except UserError as exc:
                raise UserError(exc.sentence, self.table.usage_for(cmd.text.split()[:2])) from None
            if not tokens:
                return Message(t("Type /help to see what I can do."))
            found = self.table.find(tokens)
            if found is None:
                raise self._unknown(tokens)
            spec, handler, rest = found
            request = await self._request(cmd.actor, cmd.conversation)
            if spec.roles and request.left:
                raise PermissionDenied(
                    t(
                        "HR's record says you have left the company, so /{command} is not open to you.",
                        command=spec.name,
                    )
                )
            if spec.roles and "owners" not in spec.roles and not request.has(*spec.roles):
                raise PermissionDenied(_role_sentence(spec))
            return await handler(request, parse(spec, rest))
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
                ),
                refused=True,
            )

    async def handle_action(self, action: Action) -> Message | None:
        if not await self.first_time(f"{action.actor.platform}:action", action.delivery_id):
            return None
        with i18n.using(self.messengers.locale_of(action.actor.platform)):
            return await self._action(action)

    async def _action(self, action: Action) -> Message | None:
        await self._use_person_locale(action.actor)
        handler = self.table.actions.get(action.action_id)
        try:
            if handler is None:
                raise UserError(t("That button is no longer active."))
            request = await self._request(action.actor, action.conversation)
            return await handler(request, action)
        except UserError as exc:
            return error_message(exc)
        except Exception:
            ref = secrets.token_hex(4)
            log.exception("action failed (ref %s): %s", ref, action.action_id)
            return Message(
                t("Something went wrong on my side (reference {ref}); nothing was changed.", ref=ref),
                refused=True,
            )

    async def handle_person_event(self, event: PersonEvent) -> Any:
        """A joiner, mover or leaver from any source (HR webhook, CSV, a messenger's directory).

        Returns the lifecycle outcome (`.status`: applied, duplicate, stale or queued).
        """
        return await self.lifecycle.apply(event)


def outsider(req: Request, command: str) -> PermissionDenied:
    """The refusal for someone who is not a colleague (bot.core.Request.colleague)."""
    if req.left:
        return PermissionDenied(
            t(
                "HR's record says you have left the company, so /{command} is not open to you.",
                command=command,
            )
        )
    return PermissionDenied(t("/{command} is for people in the company.", command=command))


def _role_sentence(spec: Spec) -> str:
    """Who may run it, every role that may: the spec's roles, and admins, who may run everything."""
    names = {
        "hr": t("HR"),
        "senders": t("campaign senders"),
        "approvers": t("approvers"),
        "admins": t("admins"),
    }
    roles = [r for r in spec.roles if r not in ("owners", "admins")] + ["admins"]
    wanted = i18n.any_of([names.get(r, r) for r in roles])
    if len(roles) == 1:
        return t(
            "/{command} is for {roles}; you don't have that role. An admin can grant it in the configuration.",
            command=spec.name,
            roles=wanted,
        )
    return t(
        "/{command} is for {roles}; you have none of these roles. An admin can grant one in the configuration.",
        command=spec.name,
        roles=wanted,
    )
