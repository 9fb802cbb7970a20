"""CSV files people hand to Postroom (contacts, staff snapshots): read whole, as UTF-8, or a sentence;
and the CSV Postroom writes, with no cell a spreadsheet would run."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
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


def refuse_unclosed_quote(text: str) -> None:
    """A UserError naming the line where a quoted field opens and never closes. Python's csv (not strict)
    reads such a field on to the end of the file, so one stray quote made the rest of the file a single
    value and the sentence came out as a wrong email address on the quote's line, quoting later rows.
    Only that fault is looked for here (a strict pass); anything else strict csv dislikes is left to the
    tolerant reader, as before."""
    reader = csv.reader(io.StringIO(text), strict=True)
    start = 1
    try:
        for _row in reader:
            start = reader.line_num + 1
    except csv.Error as exc:
        if "unexpected end of data" in str(exc):
            raise UserError(
                t(
                    'Line {line}: a field opens a quote (") that is never closed, so every line after it '
                    "would be read into that field. Close the quote, or remove it.",
                    line=start,
                )
            ) from None


# A spreadsheet runs a cell that starts like a formula (=, +, -, @, or a tab or carriage return before
# them), also after leading spaces: every text cell Postroom writes goes through `safe_cell`, which
# keeps such a cell text with a leading apostrophe; `unguard` takes it off again when a file is read
# back (a value that itself starts with apostrophes and then a formula gets one more, so it survives).
_FORMULA_STARTS = ("=", "+", "-", "@")


def _runs(text: str) -> bool:
    if text[:1] in ("\t", "\r"):
        return True
    return text.lstrip()[:1] in _FORMULA_STARTS


def safe_cell(value: object) -> str:
    """`value` as a CSV cell no spreadsheet runs as a formula (CSV injection)."""
    text = "" if value is None else str(value)
    return "'" + text if _runs(text.lstrip("'")) else text


def unguard(text: str) -> str:
    """A cell as `safe_cell` wrote it, back to the value it was."""
    return text[1:] if text.startswith("'") and _runs(text[1:].lstrip("'")) else text


def write_rows(header: list[str], rows: Iterable[Iterable[object]]) -> str:
    """CSV text of `header` and `rows`, every cell through `safe_cell`: the one way Postroom writes CSV."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow([safe_cell(h) for h in header])
    for row in rows:
        writer.writerow([safe_cell(cell) for cell in row])
    return out.getvalue()
