"""CSV files people hand to Postroom (contacts, staff snapshots): read whole, as UTF-8, or a sentence."""

from __future__ import annotations

from pathlib import Path

from bot.errors import UserError
from bot.i18n import t


def read_utf8(path: str | Path) -> tuple[bytes, str]:
    """The file's bytes and its text (a UTF-8 byte-order mark is dropped)."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise UserError(t("Can't read {path}: {error}.", path=p, error=exc.strerror or exc)) from None
    try:
        return data, data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UserError(t("{path} is not UTF-8 text; save it as UTF-8 CSV.", path=p)) from None
