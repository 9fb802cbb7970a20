"""What a value from outside may hold before Postroom stores it: text without control characters,
text-direction overrides or broken surrogates, and attributes that are finite JSON scalars (or short
lists of them). One validator for every input — the HR webhook, both CSV importers, chat arguments
that are stored, messengers' directory events — so they refuse the same things with the same words.

Why: a NUL or a vertical tab in a name reaches the `To:` and `Subject:` of campaign mail and the chat
notes HR reads; PostgreSQL can't store a NUL or an unpaired surrogate at all (the write fails, and a
webhook would answer "retry" to input that can never succeed); NaN and Infinity are not JSON, so a
JSON column holding them can't be read back by other tools; an override (U+202E) makes a name read
backwards in a messenger.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from bot.errors import UserError
from bot.i18n import t

MAX_NAME = 200
MAX_ID = 200
MAX_ATTRIBUTE_KEY = 100
MAX_ATTRIBUTE_VALUE = 500
MAX_ATTRIBUTES = 100
MAX_LIST_ITEMS = 50
# JSON numbers are exact in every reader only within ±2^53; anything larger is an id written as a number.
MAX_INT = 2**53

# C0 and C1 controls (NUL, tab, newline, VT, ESC, DEL, …), the bidirectional overrides and isolates
# (U+202A–U+202E, U+2066–U+2069), and unpaired surrogates (what JSON "\ud800" decodes to).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_OVERRIDES = re.compile("[\u202a-\u202e\u2066-\u2069]")


# In a person's name only: characters that show nothing — zero-width space and joiner, word joiner,
# byte-order mark — and the bidirectional marks (LRM, RLM, ALM), so that two names that look alike in
# chat are alike. (U+200C, the zero-width non-joiner, is spelling in Persian and stays.)
_INVISIBLE = re.compile("[\u200b\u200d\u200e\u200f\u061c\u2060\ufeff]")


def check_name(text: str, what: str, limit: int | None = MAX_NAME) -> str:
    """A person's name: what `check_text` refuses, and invisible formatting characters too."""
    check_text(text, what, limit)
    found = _INVISIBLE.search(text)
    if found is not None:
        raise UserError(
            t(
                "{what} contains an invisible character ({code}); remove it.",
                what=what,
                code=f"U+{ord(found.group()):04X}",
            )
        )
    return text


def clean_name(text: str) -> str:
    """A name from a source nobody corrects through Postroom: `clean_text`, without invisible characters."""
    return _INVISIBLE.sub("", clean_text(text))


def visible(text: str) -> str:
    """`text` with each control, direction or broken character shown as its escape (`\\u202e`): for
    echoing what someone typed or sent (a path) without letting it reorder or hide the page's text."""
    return _UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def is_clean(text: str) -> bool:
    return _UNSAFE.search(text) is None


def problem(text: str, what: str, *, multiline: bool = False) -> str | None:
    """The sentence that refuses `text` for holding a character no stored value may hold, or None.
    `multiline` lets tabs and line breaks through (a reason, a subject's source)."""
    for found in _UNSAFE.finditer(text):
        ch = found.group()
        if multiline and ch in "\t\n\r":
            continue
        code = f"U+{ord(ch):04X}"
        if _OVERRIDES.match(ch):
            return t("{what} contains a text-direction override ({code}); remove it.", what=what, code=code)
        if "\ud800" <= ch <= "\udfff":
            return t(
                "{what} contains a broken character ({code}, half a surrogate pair); remove it.",
                what=what,
                code=code,
            )
        return t("{what} contains a control character ({code}); remove it.", what=what, code=code)
    return None


def check_text(text: str, what: str, limit: int | None = None, *, multiline: bool = False) -> str:
    """`text` unchanged, or UserError with one sentence naming `what`."""
    sentence = problem(text, what, multiline=multiline)
    if sentence is not None:
        raise UserError(sentence)
    if limit is not None and len(text) > limit:
        raise UserError(t("{what} is longer than {limit} characters.", what=what, limit=limit))
    return text


def clean_text(text: str) -> str:
    """`text` without the characters `check_text` refuses (control characters become spaces, the rest
    goes). For data Postroom is told but nobody can correct through it, such as a messenger's directory."""
    if _UNSAFE.search(text) is None:
        return text
    return " ".join(_UNSAFE.sub(lambda m: " " if m.group() < "\x80" else "", text).split())


def _scalar_problem(value: Any, what: str) -> str | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, str):
        if len(value) > MAX_ATTRIBUTE_VALUE:
            return t("{what} is longer than {limit} characters.", what=what, limit=MAX_ATTRIBUTE_VALUE)
        return problem(value, what)
    if isinstance(value, int):
        if abs(value) > MAX_INT:
            return t("{what} is a number too large to keep exactly; send it as a string.", what=what)
        return None
    if isinstance(value, float):
        if not math.isfinite(value):
            return t("{what} is not a finite number (NaN and Infinity are not allowed).", what=what)
        return None
    return t(
        "{what} must be a string, a number, true, false or null, or a list of those.",
        what=what,
    )


def attribute_problem(key: Any, value: Any, prefix: str = "attributes") -> str | None:
    """The sentence that refuses one attribute, or None: keys are short text, values finite JSON scalars
    or lists of at most MAX_LIST_ITEMS of them."""
    if not isinstance(key, str) or not key.strip():
        return t("{what} has an empty or non-text key.", what=prefix or t("The row"))
    shown = _UNSAFE.sub("?", key)[:40]
    if prefix:  # "employee.attributes.department"; a CSV column is named alone
        shown = f"{prefix}.{shown}"
    if len(key) > MAX_ATTRIBUTE_KEY:
        return t("{what} is a key longer than {limit} characters.", what=shown, limit=MAX_ATTRIBUTE_KEY)
    sentence = problem(key, t("The key {key}", key=shown))
    if sentence is not None:
        return sentence
    if isinstance(value, list | tuple):
        if len(value) > MAX_LIST_ITEMS:
            return t("{what} is a list of more than {count} items.", what=shown, count=MAX_LIST_ITEMS)
        for item in value:
            if isinstance(item, list | tuple | dict):
                return t(
                    "{what} must be a string, a number, true, false or null, or a list of those.",
                    what=shown,
                )
            sentence = _scalar_problem(item, shown)
            if sentence is not None:
                return sentence
        return None
    return _scalar_problem(value, shown)


def check_attributes(attributes: Mapping[Any, Any], prefix: str = "attributes") -> dict[str, Any]:
    """A plain dict of the attributes, or UserError with the sentence for the first bad one."""
    if len(attributes) > MAX_ATTRIBUTES:
        raise UserError(
            t("{what} has more than {count} keys.", what=prefix or t("The row"), count=MAX_ATTRIBUTES)
        )
    for key, value in attributes.items():
        sentence = attribute_problem(key, value, prefix)
        if sentence is not None:
            raise UserError(sentence)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in attributes.items()}


def clean_attributes(attributes: Mapping[Any, Any]) -> dict[str, Any]:
    """What `check_attributes` would accept, keeping what can be kept: text cleaned, lists cut, values
    that are no JSON scalar (or NaN) dropped. For a messenger's directory, which Postroom can't correct."""
    kept: dict[str, Any] = {}
    for key, value in list(attributes.items())[:MAX_ATTRIBUTES]:
        if not isinstance(key, str):
            continue
        key = clean_text(key)[:MAX_ATTRIBUTE_KEY]
        if not key:
            continue
        if isinstance(value, list | tuple):
            items = [
                _clean_scalar(v) for v in value[:MAX_LIST_ITEMS] if not isinstance(v, list | tuple | dict)
            ]
            kept[key] = [v for v in items if v is not _DROP]
            continue
        cleaned = _clean_scalar(value)
        if cleaned is not _DROP:
            kept[key] = cleaned
    return kept


_DROP = object()


def _clean_scalar(value: Any) -> Any:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return clean_text(value)[:MAX_ATTRIBUTE_VALUE]
    if isinstance(value, int):
        return value if abs(value) <= MAX_INT else str(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else _DROP
    return _DROP
