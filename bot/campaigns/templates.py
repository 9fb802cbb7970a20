"""Campaign templates: Jinja2's sandbox, compiled once per campaign, strict about missing values.

A template is `<name>.html` and an optional `<name>.txt` in `campaigns.templates_dir`; the
subject is a template too. When the text part is absent it is derived from the HTML once per
campaign (as a template, so personalisation survives), never per recipient.
"""

from __future__ import annotations

import hashlib
import html
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError, UndefinedError, nodes
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment, SandboxedEnvironment

from bot import values
from bot.campaigns import render_time
from bot.errors import Refusal, UserError
from bot.i18n import t

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
MAX_RENDERED_BYTES = 2_000_000  # the sandbox does not stop 'a' * 10**9; the size cap does


class TemplateProblem(UserError):
    pass


class TemplateTimeout(TemplateProblem):
    """The render ran past its time budget and was stopped."""


def timed_out(name: str, seconds: float) -> TemplateTimeout:
    """The answer to a render of template `name` stopped at its budget of `seconds`."""
    return TemplateTimeout(
        t(
            "Template {name} took longer than {seconds} s to render and was stopped (a loop that runs "
            "too long?).",
            name=name,
            seconds=f"{seconds:g}",
        )
    )


DEFAULT_TIME_BUDGET_S = 0.5  # campaigns.render_timeout_s; a real message renders in about 0.1 ms


_BIG_WIDTH = re.compile(r"%[-#0 +]*(\*|\d{5,})|%[-#0 +]*\d*\.(\*|\d{5,})|\{[^{}]*?(\d{5,})[^{}]*\}")


def _too_large(size: int) -> None:
    if size > MAX_RENDERED_BYTES:
        raise SecurityError("the template builds a value too large to send")


def _check_width(fmt: str) -> None:
    if _BIG_WIDTH.search(fmt):
        raise SecurityError("the template pads a value to too large a width")


def _size(value: Any) -> int:
    return len(value) if isinstance(value, str | list | tuple | dict) else 0


class _Env(ImmutableSandboxedEnvironment):
    """A sandbox (immutable: no list.append to accumulate state) that also refuses to build huge values.

    The sandbox stops attribute escapes but not memory exhaustion ('a' * 10**9, padding to a
    huge width, replace/join amplification); these checks run before the value is built.
    """

    intercepted_binops = frozenset({"*", "**", "%"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and isinstance(n, int):
                    _too_large(len(seq) * n)
            if isinstance(left, int) and isinstance(right, int):
                _too_large((left.bit_length() + right.bit_length()) // 8)
        if operator == "**" and isinstance(left, int) and isinstance(right, int):
            if right > 1000 or (abs(left) > 1 and left.bit_length() * max(right, 0) > 100_000):
                raise SecurityError("the template raises a number to too large a power")
        if operator == "%" and isinstance(left, str):
            _check_width(left)
        return super().call_binop(context, operator, left, right)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        for value in (*args, *kwargs.values()):
            _too_large(_size(value))
        owner = getattr(__obj, "__self__", None)
        if isinstance(owner, str):
            _check_str_method(owner, getattr(__obj, "__name__", ""), args)
        result = super().call(__context, __obj, *args, **kwargs)
        _too_large(_size(result))
        return result


def _check_str_method(text: str, name: str, args: tuple[Any, ...]) -> None:
    """Estimate what a str method would build, before it builds it."""
    if name in ("center", "ljust", "rjust", "zfill") and args and isinstance(args[0], int):
        _too_large(args[0])
    elif name == "expandtabs":
        _too_large(len(text) + text.count("\t") * (args[0] if args and isinstance(args[0], int) else 8))
    elif name == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
        hits = text.count(args[0]) if args[0] else len(text) + 1
        _too_large(len(text) + hits * len(args[1]))
    elif name == "join" and args and isinstance(args[0], list | tuple):
        _too_large(len(text) * len(args[0]) + sum(_size(v) for v in args[0]))
    elif name in ("format", "format_map"):
        _check_width(text)


def _guard_filters(env: SandboxedEnvironment) -> None:
    """Filters are called directly (and folded at compile time): check the amplifying ones."""
    originals = dict(env.filters)

    def center(value: Any, width: int = 80) -> Any:
        _too_large(int(width))
        return originals["center"](value, width)

    def indent(value: Any, width: Any = 4, *a: Any, **kw: Any) -> Any:
        w = len(width) if isinstance(width, str) else int(width)
        _too_large(w * (str(value).count("\n") + 1) + len(str(value)))
        return originals["indent"](value, width, *a, **kw)

    def format_(value: Any, *a: Any, **kw: Any) -> Any:
        _check_width(str(value))
        return originals["format"](value, *a, **kw)

    def replace(eval_ctx: Any, s: Any, old: Any, new: Any, count: int | None = None) -> Any:
        _check_str_method(str(s), "replace", (str(old), str(new)))
        return originals["replace"](eval_ctx, s, old, new, count)

    def join(eval_ctx: Any, value: Any, d: str = "", attribute: Any = None) -> Any:
        items = list(value) if not isinstance(value, str) else [value]
        _too_large(len(str(d)) * len(items) + sum(_size(v) for v in items))
        return originals["join"](eval_ctx, items, d, attribute)

    from jinja2.utils import pass_eval_context

    env.filters.update(
        center=center,
        indent=indent,
        format=format_,
        replace=pass_eval_context(replace),
        join=pass_eval_context(join),
    )


def make_environment(autoescape: bool) -> SandboxedEnvironment:
    env = _Env(undefined=StrictUndefined, autoescape=autoescape, keep_trailing_newline=True)
    env.globals = {"range": _safe_range}
    _guard_filters(env)
    return env


def _safe_range(*args: int) -> range:
    r = range(*args)
    if len(r) > 10_000:
        raise SecurityError("the template asks for a range longer than 10,000")
    return r


# A subject is typed in chat, so it may only show values: names, attributes, items, a few filters,
# `if` and `~`. No calls, loops, macros or arithmetic — nothing that can run away.
_SUBJECT_NODES = (
    nodes.Template,
    nodes.Output,
    nodes.TemplateData,
    nodes.Name,
    nodes.Getattr,
    nodes.Getitem,
    nodes.Const,
    nodes.Filter,
    nodes.Test,
    nodes.CondExpr,
    nodes.If,
    nodes.Compare,
    nodes.Operand,
    nodes.And,
    nodes.Or,
    nodes.Not,
    nodes.Concat,
    nodes.Keyword,
    nodes.Slice,
    nodes.List,
    nodes.Tuple,
)
SUBJECT_FILTERS = frozenset(
    {
        "default",
        "d",
        "upper",
        "lower",
        "title",
        "capitalize",
        "trim",
        "e",
        "escape",
        "truncate",
        "replace",
        "striptags",
        "string",
    }
)


# One bound for a subject, typed (/campaign new and edit) and rendered: a subject accepted when typed
# that could never be sent would only fail later, at preview or submit.
MAX_SUBJECT = 500


def check_subject(env: SandboxedEnvironment, subject: str) -> None:
    """Refuse, with a sentence, a subject that does more than show values."""
    if len(subject) > MAX_SUBJECT:
        raise TemplateProblem(
            t(
                "The subject is longer than {limit} characters (it has {count}).",
                limit=MAX_SUBJECT,
                count=len(subject),
            )
        )
    # Line breaks fold into spaces when it is rendered; a NUL or an override would reach the header.
    unsafe = values.problem(subject, t("The subject"), multiline=True)
    if unsafe is not None:
        raise TemplateProblem(unsafe)
    try:
        tree = env.parse(subject)
    except TemplateSyntaxError as exc:
        raise TemplateProblem(t("The subject is not a valid template: {error}.", error=exc.message)) from None
    allowed = ", ".join(sorted(SUBJECT_FILTERS - {"d", "e"}))
    for node in [tree, *tree.find_all(nodes.Node)]:
        if not isinstance(node, _SUBJECT_NODES):
            raise TemplateProblem(
                t(
                    "The subject can only show values (with if and the filters {allowed}); “{what}” is not allowed there.",
                    allowed=allowed,
                    what=type(node).__name__.lower(),
                )
            )
        if isinstance(node, nodes.Filter) and node.name not in SUBJECT_FILTERS:
            raise TemplateProblem(
                t(
                    "The subject can only use the filters {allowed}; “{name}” is not one.",
                    allowed=allowed,
                    name=node.name,
                )
            )
        if isinstance(node, nodes.Getattr | nodes.Name) and str(
            getattr(node, "attr", getattr(node, "name", ""))
        ).startswith("_"):
            raise TemplateProblem(t("The subject cannot use names that start with an underscore."))


@dataclass(frozen=True)
class TemplateSource:
    name: str
    html: str
    text: str | None

    def digest(self) -> str:
        h = hashlib.sha256()
        for part in (self.name, self.html, self.text or ""):
            h.update(part.encode())
            h.update(b"\x00")
        return h.hexdigest()


def load_source(templates_dir: str | Path, name: str) -> TemplateSource:
    if not NAME_RE.match(name):
        raise UserError(
            t("“{name}” is not a template name (letters, digits, dot, dash, underscore).", name=name[:60])
        )
    base = Path(templates_dir)
    html_path = base / f"{name}.html"
    if not html_path.is_file():
        available = sorted(p.stem for p in base.glob("*.html")) if base.is_dir() else []
        if available:
            raise Refusal(
                t(
                    "There is no template “{name}” in {folder}. Templates available: {names}.",
                    name=name,
                    folder=base,
                    names=", ".join(available),
                )
            )
        raise Refusal(t("There is no template “{name}” in {folder}.", name=name, folder=base))
    text_path = base / f"{name}.txt"
    try:
        return TemplateSource(
            name=name,
            html=html_path.read_text(encoding="utf-8"),
            text=text_path.read_text(encoding="utf-8") if text_path.is_file() else None,
        )
    except UnicodeDecodeError:
        raise UserError(t("Template “{name}” is not UTF-8 text.", name=name)) from None


def html_title(source: str) -> str | None:
    m = re.search(r"<title[^>]*>(.*?)</title>", source, re.S | re.I)
    return html.unescape(m.group(1)).strip() if m and m.group(1).strip() else None


_BLOCK_TAGS = re.compile(r"</?(p|div|br|tr|h[1-6]|li|ul|ol|table|section|header|footer)\b[^>]*>", re.I)


def html_to_text_template(source: str) -> str:
    """A text-part template derived from the HTML one: tags out, links kept as 'label (url)'.

    Runs once per campaign on the template source, so Jinja expressions pass through untouched.
    """
    body = re.sub(r"<(head|style|script)\b.*?</\1>", "", source, flags=re.S | re.I)
    body = re.sub(
        r"<a\b[^>]*href=\"([^\"]+)\"[^>]*>(.*?)</a>",
        lambda m: f"{m.group(2).strip()} ({m.group(1)})",
        body,
        flags=re.S | re.I,
    )
    body = _BLOCK_TAGS.sub("\n", body)
    body = re.sub(r"<[^>]+>", "", body)
    body = html.unescape(body)
    lines = [re.sub(r"[ \t]+", " ", line).strip() for line in body.splitlines()]
    text = "\n".join(lines)
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


@dataclass
class Rendered:
    subject: str
    html: str
    text: str


class CompiledTemplate:
    """Subject, HTML and text compiled once; `render` per recipient."""

    def __init__(self, source: TemplateSource, subject: str, *, time_budget_s: float = DEFAULT_TIME_BUDGET_S):
        self.source = source
        self.subject_source = subject
        self.time_budget_s = time_budget_s
        html_env = make_environment(autoescape=True)
        text_env = make_environment(autoescape=False)
        check_subject(text_env, subject)
        try:
            self._subject = text_env.from_string(subject)
        except TemplateSyntaxError as exc:
            raise TemplateProblem(
                t("The subject is not a valid template: {error}.", error=exc.message)
            ) from None
        try:
            self._html = html_env.from_string(source.html)
        except TemplateSyntaxError as exc:
            raise TemplateProblem(
                t(
                    "Template {file} has an error on line {line}: {error}.",
                    file=f"{source.name}.html",
                    line=exc.lineno,
                    error=exc.message,
                )
            ) from None
        text_src = source.text if source.text is not None else html_to_text_template(source.html)
        try:
            self._text = text_env.from_string(text_src)
        except TemplateSyntaxError as exc:
            if source.text is not None:
                raise TemplateProblem(
                    t(
                        "Template {file} has an error on line {line}: {error}.",
                        file=f"{source.name}.txt",
                        line=exc.lineno,
                        error=exc.message,
                    )
                ) from None
            raise TemplateProblem(
                t(
                    "The text derived from template {file} has an error on line {line}: {error}.",
                    file=f"{source.name}.html",
                    line=exc.lineno,
                    error=exc.message,
                )
            ) from None

    def render(self, context: dict[str, Any]) -> Rendered:
        """Subject, HTML and text for one recipient; TemplateProblem (TemplateTimeout past the time
        budget) with a sentence when it can't be rendered."""
        try:
            return self.render_within(context, self.time_budget_s)
        except render_time.OutOfTime:
            raise timed_out(self.source.name, self.time_budget_s) from None

    def render_within(self, context: dict[str, Any], seconds: float) -> Rendered:
        """As `render`, but render_time.OutOfTime when it takes longer than `seconds`."""
        return render_time.run_within(lambda: self._render(context), seconds)

    def _render(self, context: dict[str, Any]) -> Rendered:
        try:
            subject = _render_capped(self._subject, context, MAX_RENDERED_BYTES)
            body_html = _render_capped(self._html, context, MAX_RENDERED_BYTES)
            body_text = _render_capped(self._text, context, MAX_RENDERED_BYTES - len(body_html))
        except TemplateProblem:
            raise
        except UndefinedError as exc:
            raise TemplateProblem(
                t("The template uses a value this recipient does not have: {error}.", error=exc.message)
            ) from None
        except SecurityError as exc:
            raise TemplateProblem(
                t("The template was stopped by the sandbox: {error}.", error=str(exc).rstrip("."))
            ) from None
        except Exception as exc:  # a template can raise anything (division by zero, bad filter args)
            raise TemplateProblem(
                t("The template failed to render: {error}.", error=f"{type(exc).__name__}: {str(exc)[:200]}")
            ) from None
        subject = " ".join(subject.split())
        if len(subject) > MAX_SUBJECT:
            raise TemplateProblem(
                t("The rendered subject is longer than {limit} characters.", limit=MAX_SUBJECT)
            )
        return Rendered(subject=subject, html=body_html, text=body_text)


def _render_capped(template: Any, context: dict[str, Any], budget: int) -> str:
    """Render chunk by chunk, stopping as soon as the output passes the budget (a loop can't run away)."""
    parts: list[str] = []
    size = 0
    for chunk in template.generate(context):
        size += len(chunk)
        if size > budget:
            raise TemplateProblem(t("The rendered message is larger than 2 MB; that is too large to send."))
        parts.append(chunk)
    return "".join(parts)
