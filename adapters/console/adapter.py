"""The console adapter: a chat in a terminal. The reference implementation of the seam.

Commands are typed as in any messenger and run as the current person (`/as <email>` switches).
Cards print with their fields and, for each button, the text command that presses it.
"""

from __future__ import annotations

import asyncio
import itertools
import sys
import threading
import uuid
from collections.abc import Callable
from typing import TextIO

from bot.adapter import Adapter, CoreHandle
from bot.events import Actor, Command, Conversation, Message, MessageRef
from bot.message_text import CONSOLE, render

PLATFORM = "console"
# The console's own commands, which never reach the core (English, like the rest of the console's words).
CONSOLE_HELP = """On this console:
  /as <email>
      Switch to another person.
  /whoami
      Who you are and your roles.
  /quit
      Leave (so does end of input)."""


def render_message(message: Message, locale: str | None = None) -> str:
    """The message as the console prints it; `locale` is the language of the console's own words
    (the picture and attachment lines), the console's unless given."""
    return render(message, CONSOLE, locale)


class ConsoleAdapter(Adapter):
    platform = PLATFORM

    def __init__(
        self,
        as_email: str,
        *,
        out: TextIO | None = None,
        prompt: bool = True,
        read_line: Callable[[], str] | None = None,
    ):
        self.as_email = as_email.lower()
        self.out = out if out is not None else sys.stdout
        self.prompt = prompt
        self._read_line = read_line
        self._ids = itertools.count(1)
        self.core: CoreHandle | None = None
        self.transcript: list[tuple[str, str, Message]] = []  # (kind, conversation, message), for tests
        self._closed = asyncio.Event()
        self.refused = 0  # lines refused or failed so far (a non-interactive run exits non-zero)

    # -- the seam ------------------------------------------------------------------------------
    async def start(self, core: CoreHandle) -> None:
        self.core = core

    async def stop(self) -> None:
        self._closed.set()

    async def send(self, conversation: Conversation, message: Message) -> MessageRef:
        ref = MessageRef(PLATFORM, conversation.id, str(next(self._ids)))
        self.transcript.append(("send", conversation.id, message))
        # No message number: the console's own counter means nothing to a reader and reads like a plan's or
        # a post's number (/plan approve 1). A card says what it is about in its title.
        header = f"[{conversation.id}] " if conversation.id != "you" else ""
        self._print(header + render_message(message, self.locale))
        return ref

    async def update(self, ref: MessageRef, message: Message) -> None:
        self.transcript.append(("update", ref.conversation_id, message))
        self._print(f"[{ref.conversation_id}] (updated) " + render_message(message, self.locale))

    async def resolve(self, actor: Actor) -> tuple[str, str | None] | None:
        return (actor.user_id, None) if "@" in actor.user_id else None

    def conversation_for(self, purpose: str) -> Conversation | None:
        return Conversation(PLATFORM, purpose, "channel") if purpose in ("approvals", "hr") else None

    # -- typing ----------------------------------------------------------------------------------
    def actor(self) -> Actor:
        return Actor(PLATFORM, self.as_email, email=self.as_email)

    async def say(self, text: str) -> Message | None:
        """Run one line as the current person and print the bot's answer."""
        assert self.core is not None, "start() the adapter first"
        stripped = text.strip()
        if stripped.split(maxsplit=1)[:1] == ["/as"]:
            from bot.addresses import normalise
            from bot.errors import UserError

            try:
                if not stripped[3:].strip():
                    raise UserError("/as needs the email address of the person to act as.")
                who = normalise(stripped[3:].strip())
            except UserError as exc:
                self._print(f"{exc.sentence}\nUsage: /as <email>")
                self.refused += 1
                return None
            self.as_email = who
            roles = ", ".join(sorted(self.core.roles_of(self.as_email))) or "no role"
            self._print(f"You are now {self.as_email} ({roles}).")
            return None
        if stripped in ("/whoami",):
            roles = ", ".join(sorted(self.core.roles_of(self.as_email))) or "no role"
            self._print(f"You are {self.as_email} ({roles}).")
            return None
        conversation = Conversation(PLATFORM, "you")
        reply = await self.core.handle_command(
            Command(self.actor(), stripped, conversation, delivery_id=f"console-{uuid.uuid4()}")
        )
        if reply is not None:
            self.refused += reply.refused
            self.transcript.append(("reply", "you", reply))
            self._print(render_message(reply, self.locale))
            if stripped.split() == ["/help"]:
                self._print(CONSOLE_HELP)
        return reply

    async def repl(self) -> None:
        """Read lines until end of input or /quit."""
        loop = asyncio.get_running_loop()
        while not self._closed.is_set():
            if self.prompt:
                self.out.write(f"{self.as_email}> ")
                self.out.flush()
            reader = self._read_line or sys.stdin.readline
            line = await _read_in_daemon_thread(loop, reader)
            if not line:
                break
            if line.strip() in ("/quit", "/exit"):
                break
            if not line.strip():
                continue
            await self.say(line)

    def _print(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()


def _read_in_daemon_thread(loop: asyncio.AbstractEventLoop, reader: Callable[[], str]) -> asyncio.Future[str]:
    """A line from a blocking reader. Not the default executor: asyncio.run waits for its threads on the
    way out, so Ctrl-C would hang until Enter; a daemon thread blocked in readline does not hold exit."""
    future: asyncio.Future[str] = loop.create_future()

    def settle(value: str | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value or "")

    def work() -> None:
        try:
            line, error = reader(), None
        except Exception as exc:
            line, error = "", exc
        try:
            loop.call_soon_threadsafe(settle, line, error)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass

    threading.Thread(target=work, name="console-stdin", daemon=True).start()
    return future
