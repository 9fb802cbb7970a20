"""Segments: a small expression language over contact attributes and engagement, compiled to SQL with
every value a bound parameter — never SQL text from the person who wrote it.

    country in ("DE", "AT") and not clicked_within(90d)
    signed_up_within(30d) or opened_count >= 3
    plan = "pro" and renewal_date < "2027-01-01"

Grammar (keywords in any case):

    expression := term ("or" term)*
    term       := factor ("and" factor)*
    factor     := "not" factor | "(" expression ")" | test
    test       := function "(" duration ")"
                | field ("=" | "!=" | "<" | "<=" | ">" | ">=") value
                | field ["not"] "in" "(" value ("," value)* ")"
                | field "is" ["not"] "empty"
    function   := clicked_within | opened_within | sent_within | signed_up_within
    duration   := digits ("d" | "w")                          90d, 2w (at most 3650 days)
    field      := email | name | domain | opened_count | clicked_count | sent_count
                | any other name: a contact attribute (letters, digits, underscore)
    value      := "text" | 'text' | number

Attributes are text: `<` and `>` compare them as text, which orders ISO dates (2027-01-31) correctly.
The counts compare as numbers. A mistake is answered with a sentence naming the column.
Bounded: 1,000 characters, 40 tests, nesting 10 deep (brackets and `not` both count), 100 values in
one `in`, numbers between -1,000,000,000 and 1,000,000,000 (a bigger one is no count anyone has, and
the databases can't bind it: SQLite takes 64-bit integers, PostgreSQL binds a count's parameter as a
32-bit one).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, func, not_, or_, true

from bot.campaigns import engagement
from bot.db.models import Contact, ListMember
from bot.errors import UserError
from bot.i18n import t

MAX_LENGTH = 1000
MAX_TESTS = 40
MAX_DEPTH = 10
MAX_VALUES = 100
MAX_DAYS = 3650
MAX_NUMBER = 10**9
FUNCTIONS = ("clicked_within", "opened_within", "sent_within", "signed_up_within")
COUNTS = ("opened_count", "clicked_count", "sent_count")
BUILT_IN = ("email", "name", "domain")
KEYWORDS = ("and", "or", "not", "in", "is", "empty")
OPS = ("=", "!=", "<", "<=", ">", ">=")
_TOKEN = re.compile(
    r"""\s*(?:(?P<dur>\d+[dw](?![A-Za-z0-9_]))|(?P<num>-?\d+(?:\.\d+)?(?![A-Za-z0-9_.]))"""
    r"""|(?P<name>[A-Za-z_][A-Za-z0-9_]*)|(?P<str>"[^"“”]*"|“[^"“”]*”|'[^']*')|(?P<op><=|>=|!=|=|<|>)"""
    r"""|(?P<punct>[(),]))""",
)


class ExpressionProblem(UserError):
    pass


def _problem(text: str, column: int, what: str) -> ExpressionProblem:
    return ExpressionProblem(
        t(
            "The expression is wrong at column {column} (after “{before}”): {what}.",
            what=what,
            column=column,
            before=text[: column - 1].strip()[-30:],
        )
        if text[: column - 1].strip()
        else t("The expression is wrong at column {column}: {what}.", what=what, column=column)
    )


@dataclass(frozen=True)
class Token:
    kind: str  # num | dur | name | str | op | punct | end
    text: str
    column: int  # 1-based


def tokenize(text: str) -> list[Token]:
    if len(text) > MAX_LENGTH:
        raise ExpressionProblem(
            t(
                "The expression is {length} characters long; the limit is {limit}.",
                length=len(text),
                limit=MAX_LENGTH,
            )
        )
    tokens: list[Token] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            start = pos + len(text[pos:]) - len(text[pos:].lstrip())
            shown = text[start : start + 1]
            if shown in "\"“'":
                raise _problem(text, start + 1, t("a quotation mark that is not closed"))
            raise _problem(
                text,
                start + 1,
                t("“{char}”, which is not part of the expression language", char=_show(shown)),
            )
        kind = m.lastgroup or ""
        value = m.group(kind)
        column = m.start(kind) + 1
        if kind == "str":
            value = value[1:-1]
            if any(not c.isprintable() for c in value):
                raise _problem(text, column, t("a control character in a text value"))
        tokens.append(Token(kind, value, column))
        pos = m.end()
    tokens.append(Token("end", "", len(text) + 1))
    return tokens


def _show(char: str) -> str:
    return char if char.isprintable() else f"\\u{ord(char):04x}"


# -- the tree ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Test:
    field: str
    op: str  # = != < <= > >= in notin empty notempty within
    values: tuple[Any, ...] = ()


@dataclass(frozen=True)
class Node:
    op: str  # and | or | not
    children: tuple[Any, ...]


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.tokens = tokenize(text)
        self.i = 0
        self.tests = 0
        self.attributes: list[tuple[str, int]] = []  # attribute fields used, with their columns

    def peek(self) -> Token:
        return self.tokens[self.i]

    def take(self) -> Token:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def word(self, tok: Token, *words: str) -> bool:
        return tok.kind == "name" and tok.text.lower() in words

    def fail(self, tok: Token, expected: str) -> ExpressionProblem:
        got = t("the end") if tok.kind == "end" else f"“{tok.text}”"
        return _problem(
            self.text, tok.column, t("{got} where {expected} should be", got=got, expected=expected)
        )

    def parse(self) -> Any:
        if self.peek().kind == "end":
            raise ExpressionProblem(t("The expression is empty."))
        tree = self.expression(0)
        if self.peek().kind != "end":
            raise self.fail(self.peek(), t("“and”, “or” or the end"))
        return tree

    def expression(self, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise _problem(self.text, self.peek().column, t("more than 10 levels of brackets or “not”"))
        parts = [self.term(depth)]
        while self.word(self.peek(), "or"):
            self.take()
            parts.append(self.term(depth))
        return parts[0] if len(parts) == 1 else Node("or", tuple(parts))

    def term(self, depth: int) -> Any:
        parts = [self.factor(depth)]
        while self.word(self.peek(), "and"):
            self.take()
            parts.append(self.factor(depth))
        return parts[0] if len(parts) == 1 else Node("and", tuple(parts))

    def factor(self, depth: int) -> Any:
        tok = self.peek()
        if self.word(tok, "not"):
            if depth + 1 > MAX_DEPTH:
                raise _problem(self.text, tok.column, t("more than 10 levels of brackets or “not”"))
            self.take()
            return Node("not", (self.factor(depth + 1),))
        if tok.kind == "punct" and tok.text == "(":
            self.take()
            inner = self.expression(depth + 1)
            close = self.take()
            if close.text != ")":
                raise self.fail(close, t("a closing bracket"))
            return inner
        return self.test()

    def test(self) -> Test:
        tok = self.take()
        if tok.kind != "name" or tok.text.lower() in KEYWORDS:
            raise self.fail(tok, t("a field or a function such as clicked_within(90d)"))
        self.tests += 1
        if self.tests > MAX_TESTS:
            raise _problem(self.text, tok.column, t("more than 40 tests"))
        name = tok.text.lower() if tok.text.lower() in (*FUNCTIONS, *COUNTS, *BUILT_IN) else tok.text
        if len(name) > 64:
            raise _problem(self.text, tok.column, t("a field name longer than 64 characters"))
        nxt = self.peek()
        if name in FUNCTIONS:
            self.expect("(")
            dur = self.take()
            if dur.kind != "dur":
                raise self.fail(dur, t("a duration such as 90d or 2w"))
            days = int(dur.text[:-1]) * (7 if dur.text.endswith("w") else 1)
            if not 0 < days <= MAX_DAYS:
                raise _problem(self.text, dur.column, t("a duration outside 1 to 3650 days"))
            self.expect(")")
            return Test(name, "within", (days,))
        if nxt.kind == "punct" and nxt.text == "(":
            raise _problem(
                self.text,
                tok.column,
                t(
                    "“{name}”, which is not a function (they are {names})",
                    name=tok.text[:40],
                    names=", ".join(FUNCTIONS),
                ),
            )
        if self.word(nxt, "is"):
            self.take()
            negate = self.word(self.peek(), "not")
            if negate:
                self.take()
            empty = self.take()
            if not self.word(empty, "empty"):
                raise self.fail(empty, t("“empty”"))
            return self.check(tok, Test(name, "notempty" if negate else "empty"))
        negate = self.word(nxt, "not")
        if negate:
            self.take()
            nxt = self.peek()
        if self.word(nxt, "in"):
            self.take()
            self.expect("(")
            values = [self.value()]
            while self.peek().text == ",":
                self.take()
                values.append(self.value())
                if len(values) > MAX_VALUES:
                    raise _problem(self.text, self.peek().column, t("more than 100 values in one list"))
            self.expect(")")
            return self.check(tok, Test(name, "notin" if negate else "in", tuple(values)))
        if negate:
            raise self.fail(nxt, t("“in”"))
        op = self.take()
        if op.kind != "op":
            raise self.fail(op, t("a comparison (=, !=, <, <=, >, >=, in, is empty)"))
        return self.check(tok, Test(name, op.text, (self.value(),)))

    def check(self, tok: Token, test: Test) -> Test:
        if test.field not in (*COUNTS, *BUILT_IN):
            self.attributes.append((test.field, tok.column))
        if test.field in COUNTS:
            if test.op in ("empty", "notempty") or any(not isinstance(v, int | float) for v in test.values):
                raise _problem(
                    self.text,
                    tok.column,
                    t("“{name}”, a count, compared with something not a number", name=tok.text),
                )
        elif test.field == "domain" and test.op not in ("=", "!=", "in", "notin"):
            raise _problem(self.text, tok.column, t("“domain”, which takes only =, != and in"))
        return test

    def expect(self, punct: str) -> None:
        tok = self.take()
        if tok.text != punct or tok.kind != "punct":
            raise self.fail(tok, f"“{punct}”")

    def value(self) -> Any:
        tok = self.take()
        if tok.kind == "str":
            return tok.text
        if tok.kind == "num":
            number = float(tok.text) if "." in tok.text else int(tok.text)
            if not -MAX_NUMBER <= number <= MAX_NUMBER:
                raise _problem(self.text, tok.column, t("a number outside -1,000,000,000 to 1,000,000,000"))
            return number
        raise self.fail(tok, t("a value in quotes or a number"))


def parse(text: str) -> Any:
    """The expression's tree; ExpressionProblem with a sentence pointing at the column."""
    return _Parser(text.strip()).parse()


def unknown_field(text: str, known: set[str], list_name: str) -> ExpressionProblem | None:
    """The sentence for the first attribute the expression names that no contact on the list has (a
    typo would otherwise match nobody, silently), with the closest field; None when all are known."""
    parser = _Parser(text.strip())
    parser.parse()
    fields = sorted(known) + list(BUILT_IN) + list(COUNTS)
    for name, column in parser.attributes:
        if name in known:
            continue
        near = difflib.get_close_matches(name, fields, n=1, cutoff=0.6) or difflib.get_close_matches(
            name.lower(), [f.lower() for f in fields], n=1, cutoff=0.6
        )
        shown = ", ".join(sorted(known)[:20]) or t("none")
        what = (
            t(
                "“{name}”, which no contact on “{list}” has — did you mean “{near}”? Fields: {builtin}; "
                "attributes: {attributes}",
                name=name[:40],
                list=list_name,
                near=next(f for f in fields if f.lower() == near[0].lower()),
                builtin=", ".join((*BUILT_IN, *COUNTS)),
                attributes=shown,
            )
            if near
            else t(
                "“{name}”, which no contact on “{list}” has. Fields: {builtin}; attributes: {attributes}",
                name=name[:40],
                list=list_name,
                builtin=", ".join((*BUILT_IN, *COUNTS)),
                attributes=shown,
            )
        )
        return _problem(parser.text, column, what)
    return None


def check(text: str) -> str:
    """The expression, normalised to one line, once it parses and compiles — every save calls this
    before anything is stored, so what is stored can always be shown and run."""
    _sql(parse(text), datetime(2000, 1, 1, tzinfo=UTC))
    return " ".join(text.split())


# -- to SQL -----------------------------------------------------------------------------------
def compile_where(text: str, now: datetime) -> ColumnElement[bool]:
    """The expression as a SQL condition over contacts (and list_members, for signed_up_within)."""
    return _sql(parse(text), now)


def _sql(node: Any, now: datetime) -> ColumnElement[bool]:
    if isinstance(node, Node):
        parts = [_sql(c, now) for c in node.children]
        if node.op == "and":
            return and_(*parts)
        if node.op == "or":
            return or_(*parts)
        return not_(parts[0])
    return _test(node, now)


def _test(test: Test, now: datetime) -> ColumnElement[bool]:
    if test.op == "within":
        since = now - timedelta(days=test.values[0])
        if test.field == "signed_up_within":
            return func.coalesce(ListMember.subscribed_at, Contact.created_at) >= since
        kind = {"clicked_within": ("click",), "opened_within": ("open",)}.get(test.field)
        if kind is not None:
            return engagement.events_of(Contact.email, kind, since)
        return engagement.sent_since(Contact.email, since)
    column: Any
    if test.field in COUNTS:
        column = {
            "opened_count": engagement.event_count(Contact.email, "open"),
            "clicked_count": engagement.event_count(Contact.email, "click"),
            "sent_count": engagement.sent_count(Contact.email),
        }[test.field]
        values = test.values
    elif test.field == "domain":
        pattern = [_domain_pattern(str(v)) for v in test.values]
        matches = or_(*(Contact.email.like(p, escape="\\") for p in pattern))
        return not_(matches) if test.op in ("!=", "notin") else matches
    else:
        if test.field == "email":
            column = Contact.email
        elif test.field == "name":
            column = Contact.name
        else:
            column = Contact.attributes[test.field].as_string()
        values = tuple(_text(v) for v in test.values)
    if test.op == "empty":
        return or_(column.is_(None), column == "")
    if test.op == "notempty":
        return and_(column.is_not(None), column != "")
    if test.op == "in":
        return column.in_(values)
    if test.op == "notin":
        return or_(column.is_(None), column.not_in(values))
    value = values[0]
    if test.op == "=":
        return column == value
    if test.op == "!=":
        return or_(column.is_(None), column != value)
    return {"<": column < value, "<=": column <= value, ">": column > value, ">=": column >= value}[test.op]


def _text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _domain_pattern(domain: str) -> str:
    escaped = domain.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%@{escaped}"


def everything() -> ColumnElement[bool]:
    return true()
