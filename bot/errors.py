"""Errors that reach people. Each is one sentence; the core adds the usage line where it helps."""

from __future__ import annotations

from bot.events import Message
from bot.i18n import t


class UserError(Exception):
    """Bad input or a refused action. Nothing was changed."""

    def __init__(self, sentence: str, usage: str | None = None):
        super().__init__(sentence)
        self.sentence = sentence
        self.usage = usage


class Refusal(UserError):
    """A well-formed command that is refused — by a role, the guard, the state of things (no such group,
    already a member). Its answer never carries the usage line: only a malformed command gets that."""


class PermissionDenied(Refusal):
    pass


def with_usage(exc: UserError, usage: str) -> UserError:
    """The error to raise for `exc` met while running a command with this usage line: a refusal as it
    is, any other problem of the input with the usage line."""
    if isinstance(exc, Refusal):
        return exc
    return UserError(exc.sentence, exc.usage or usage)


def error_message(exc: UserError) -> Message:
    """The answer to a refusal: its sentence, then the usage line for a malformed command."""
    text = visible(exc.sentence)
    if exc.usage and not isinstance(exc, Refusal):
        text += "\n" + t("Usage: {usage}", usage=exc.usage)
    return Message(text, ephemeral=True, refused=True)


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
