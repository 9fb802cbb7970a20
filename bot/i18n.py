"""One translation layer for every text a person reads: replies, errors, cards, reports.

Texts are written in English with named placeholders and passed through `t()`:

    raise UserError(t("There is no group {name}.", name=name))

The locale is a context variable: the core sets it for each command, click and background task
from the adapter's locale (config; DingTalk and WeCom default to zh_CN) or the person's own choice
(`/lang`). Catalogs are JSON files in `bot/locale/<locale>/*.json` mapping the English text to its
translation; a test fails when a `t()` text has no zh_CN entry.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import cache
from pathlib import Path
from typing import Any

LOCALES = ("en", "zh_CN")
NAMES = {"en": "English", "zh_CN": "Chinese"}
DEFAULT = "en"
_current: ContextVar[str] = ContextVar("postroom_locale", default=DEFAULT)
CATALOG_DIR = Path(__file__).parent / "locale"


@cache
def catalog(locale: str) -> dict[str, str]:
    merged: dict[str, str] = {}
    folder = CATALOG_DIR / locale
    if folder.is_dir():
        for path in sorted(folder.glob("*.json")):
            merged.update(json.loads(path.read_text(encoding="utf-8")))
    return merged


def match_locale(value: str) -> str | None:
    """A known locale for what a person typed (zh, zh-CN, zh_cn, 中文, English…), or None."""
    v = value.replace("-", "_").strip().lower()
    aliases = {"中文": "zh_CN", "chinese": "zh_CN", "english": "en", "英文": "en"}
    if v in aliases:
        return aliases[v]
    for known in LOCALES:
        if v == known.lower() or v.split("_")[0] == known.lower().split("_")[0]:
            return known
    return None


def normalise_locale(value: str | None) -> str:
    return (match_locale(value) if value else None) or DEFAULT


def current() -> str:
    return _current.get()


def set_locale(locale: str | None) -> None:
    _current.set(normalise_locale(locale))


def any_of(items: list[str]) -> str:
    """“a, b or c” (Chinese: “a、b或c”): a list where any one will do."""
    if len(items) <= 1:
        return "".join(items)
    zh = current().startswith("zh")
    head = ("、" if zh else ", ").join(items[:-1])
    return head + ("或" if zh else " or ") + items[-1]


def sentence_gap() -> str:
    """What separates two whole sentences in the current language (Chinese puts no space after 。)."""
    return "" if current().startswith("zh") else " "


def sentences(*parts: str) -> str:
    """Sentences one after another, `sentence_gap()` between them."""
    return sentence_gap().join(p for p in parts if p)


@contextmanager
def using(locale: str | None) -> Iterator[None]:
    token = _current.set(normalise_locale(locale))
    try:
        yield
    finally:
        _current.reset(token)


def t(text: str, /, **values: Any) -> str:
    """`text` in the current locale, with `{placeholders}` filled in."""
    locale = _current.get()
    if locale != DEFAULT:
        text = catalog(locale).get(text, text)
    return text.format(**values) if values else text
