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


class PermissionDenied(UserError):
    pass


def error_message(exc: UserError) -> Message:
    """The answer to a refusal: its sentence, then the usage line where there is one."""
    text = visible(exc.sentence)
    if exc.usage:
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
