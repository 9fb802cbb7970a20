"""Commands are parsed, not split: quoted values, `--flag value`, `--flag=value`, boolean flags.

Each command declares a `Spec`; `parse` turns the text into named arguments or raises a
UserError whose sentence says what is wrong and whose usage is the command's usage line.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from bot.errors import UserError, with_usage
from bot.i18n import t

MAX_COMMAND_LENGTH = 4000


@dataclass(frozen=True)
class Arg:
    name: str
    required: bool = True
    many: bool = False  # takes every remaining positional (at least one when required)
    rest: bool = False  # takes the rest of the text as one value (a reason, a display name)


@dataclass(frozen=True)
class Flag:
    name: str  # without the dashes
    takes_value: bool = True
    help: str = ""
    required: bool = False  # the command can't run without it (shown without brackets in the usage line)


@dataclass(frozen=True)
class Spec:
    path: tuple[str, ...]  # ("addgroup",) or ("campaign", "new")
    args: tuple[Arg, ...] = ()
    flags: tuple[Flag, ...] = ()
    summary: str = ""
    roles: tuple[str, ...] = ()  # who may run it; () means anyone
    usage_override: str | None = None

    @property
    def name(self) -> str:
        return " ".join(self.path)

    @property
    def usage(self) -> str:
        if self.usage_override:
            return self.usage_override
        parts = ["/" + self.name]
        for a in self.args:
            label = f"<{a.name}>" + (" [...]" if a.many else "")
            parts.append(label if a.required else f"[{label}]")
        for f in self.flags:
            label = f"--{f.name}{' <' + f.name + '>' if f.takes_value else ''}"
            parts.append(label if f.required else f"[{label}]")
        return " ".join(parts)


@dataclass
class Parsed:
    spec: Spec
    args: dict[str, str | list[str] | None] = field(default_factory=dict)
    flags: dict[str, str | bool | None] = field(default_factory=dict)

    def arg(self, name: str) -> str:
        value = self.args.get(name)
        assert isinstance(value, str)
        return value

    def opt(self, name: str) -> str | None:
        value = self.args.get(name)
        return value if isinstance(value, str) else None

    def many(self, name: str) -> list[str]:
        value = self.args.get(name)
        return list(value) if isinstance(value, list) else []

    def flag(self, name: str) -> str | None:
        value = self.flags.get(name)
        return value if isinstance(value, str) else None

    def switch(self, name: str) -> bool:
        return bool(self.flags.get(name))


_DOUBLE = '"“”'  # messengers turn straight quotes into curly ones; accept both
_SINGLE_OPEN = "'‘"
_SINGLE_CLOSE = "'’"


def tokenize(text: str) -> list[str]:
    """Split a command into words. "Double quotes" group words anywhere (`--subject="Hi there"`);
    'single quotes' only when they open a word, so an apostrophe (it's, it’s) is just a letter.
    Inside double quotes a backslash escapes a quote or a backslash; elsewhere it is a letter.
    """
    if len(text) > MAX_COMMAND_LENGTH:
        raise UserError(
            t(
                "That command is {length} characters long; the limit is {limit}.",
                length=len(text),
                limit=MAX_COMMAND_LENGTH,
            )
        )
    if "\x00" in text:
        raise UserError(t("That command contains a NUL character."))
    tokens: list[str] = []
    word: list[str] = []
    in_word = False
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch.isspace():
            if in_word:
                tokens.append("".join(word))
                word, in_word = [], False
            i += 1
        elif ch in _DOUBLE:
            i += 1
            while True:
                if i >= n:
                    raise UserError(t("A quotation mark in that command is not closed."))
                c = text[i]
                if c == "\\" and i + 1 < n and (text[i + 1] in _DOUBLE or text[i + 1] == "\\"):
                    word.append(text[i + 1])
                    i += 2
                elif c in _DOUBLE:
                    i += 1
                    break
                else:
                    word.append(c)
                    i += 1
            in_word = True
        elif ch in _SINGLE_OPEN and (not in_word or (word and word[-1] == "=")):
            end = min((j for j in (text.find(q, i + 1) for q in _SINGLE_CLOSE) if j != -1), default=-1)
            if end == -1:  # no closing quote: it was an apostrophe
                word.append(ch)
                i += 1
            else:
                word.append(text[i + 1 : end])
                i = end + 1
            in_word = True
        else:
            word.append(ch)
            in_word = True
            i += 1
    if in_word:
        tokens.append("".join(word))
    return tokens


def quote(value: str) -> str:
    """The text that `tokenize` reads back as the single word `value`."""
    if value and not any(c.isspace() or c in _DOUBLE or c in _SINGLE_OPEN or c == "\\" for c in value):
        return value
    escaped = "".join("\\" + c if c in _DOUBLE or c == "\\" else c for c in value)
    return f'"{escaped}"'


def _a(noun: str) -> str:
    return ("an " if noun[:1].lower() in "aeiou" else "a ") + noun


def parse(spec: Spec, tokens: list[str]) -> Parsed:
    """`tokens` are what follows the command's path."""
    flags_by_name = {f.name: f for f in spec.flags}
    positionals: list[str] = []
    flags: dict[str, str | bool | None] = {}
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok.startswith("--") and len(tok) > 2:
            name, eq, value = tok[2:].partition("=")
            f = flags_by_name.get(name)
            if f is None:
                known = ", ".join("--" + n for n in flags_by_name) or t("no options")
                raise UserError(
                    t(
                        "/{command} has no option --{option} (it takes {known}).",
                        command=spec.name,
                        option=name,
                        known=known,
                    ),
                    spec.usage,
                )
            if name in flags:
                raise UserError(t("--{option} is given twice.", option=name), spec.usage)
            if f.takes_value:
                if not eq:
                    if i + 1 >= len(tokens) or (tokens[i + 1].startswith("--") and len(tokens[i + 1]) > 2):
                        raise UserError(t("--{option} needs a value.", option=name), spec.usage)
                    i += 1
                    value = tokens[i]
                if not value.strip():
                    raise UserError(t("--{option} needs a value.", option=name), spec.usage)
                flags[name] = value
            else:
                if eq:
                    raise UserError(t("--{option} is a switch and takes no value.", option=name), spec.usage)
                flags[name] = True
        else:
            positionals.append(tok)
        i += 1

    args: dict[str, str | list[str] | None] = {}
    pos = 0
    for a in spec.args:
        if a.many:
            taken = positionals[pos:]
            pos = len(positionals)
            if a.required and not taken:
                raise UserError(
                    t("/{command} needs at least one {what}.", command=spec.name, what=t(a.name)), spec.usage
                )
            args[a.name] = taken
        elif a.rest:
            taken = positionals[pos:]
            pos = len(positionals)
            if a.required and not taken:
                raise UserError(
                    t("/{command} needs {what}.", command=spec.name, what=t(_a(a.name))), spec.usage
                )
            args[a.name] = " ".join(taken) if taken else None
        elif pos < len(positionals):
            args[a.name] = positionals[pos]
            pos += 1
        elif a.required:
            raise UserError(t("/{command} needs {what}.", command=spec.name, what=t(_a(a.name))), spec.usage)
        else:
            args[a.name] = None
    if pos < len(positionals):
        extra = positionals[pos]
        raise UserError(
            t("/{command} does not take “{text}” here.", command=spec.name, text=extra[:60]), spec.usage
        )
    missing = ["--" + f.name for f in spec.flags if f.required and f.name not in flags]
    if missing:
        what = (
            missing[0]
            if len(missing) == 1
            else t("{first} and {last}", first=", ".join(missing[:-1]), last=missing[-1])
        )
        raise UserError(t("/{command} needs {what}.", command=spec.name, what=what), spec.usage)
    return Parsed(spec=spec, args=args, flags=flags)


@contextmanager
def usage_of(spec: Spec) -> Iterator[None]:
    """Problems of the input raised inside carry the command's usage line; refusals (a role, the guard, the
    state of things) do not: they are not a usage problem."""
    try:
        yield
    except UserError as exc:
        raised = with_usage(exc, spec.usage)
        if raised is exc:
            raise
        raise raised from None
