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

from jinja2 import StrictUndefined, TemplateSyntaxError, UndefinedError
from jinja2.exceptions import SecurityError
from jinja2.sandbox import SandboxedEnvironment

from bot.errors import UserError

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
MAX_RENDERED_BYTES = 2_000_000  # the sandbox does not stop 'a' * 10**9; the size cap does


class TemplateProblem(UserError):
    pass


class _Env(SandboxedEnvironment):
    """A sandbox that also refuses to build huge strings and ranges."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "*" and isinstance(right, int) and isinstance(left, str | list | tuple):
            if len(left) * right > MAX_RENDERED_BYTES:
                raise SecurityError("the template builds a value too large to send")
        if operator == "*" and isinstance(left, int) and isinstance(right, str | list | tuple):
            if len(right) * left > MAX_RENDERED_BYTES:
                raise SecurityError("the template builds a value too large to send")
        if operator == "**" and isinstance(right, int) and right > 1000:
            raise SecurityError("the template raises a number to too large a power")
        return super().call_binop(context, operator, left, right)


def make_environment(autoescape: bool) -> SandboxedEnvironment:
    env = _Env(undefined=StrictUndefined, autoescape=autoescape, keep_trailing_newline=True)
    env.globals = {"range": _safe_range}
    return env


def _safe_range(*args: int) -> range:
    r = range(*args)
    if len(r) > 10_000:
        raise SecurityError("the template asks for a range longer than 10,000")
    return r


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
        raise UserError(f"“{name[:60]}” is not a template name (letters, digits, dot, dash, underscore).")
    base = Path(templates_dir)
    html_path = base / f"{name}.html"
    if not html_path.is_file():
        available = sorted(p.stem for p in base.glob("*.html")) if base.is_dir() else []
        hint = f" Templates available: {', '.join(available)}." if available else ""
        raise UserError(f"There is no template “{name}” in {base}.{hint}")
    text_path = base / f"{name}.txt"
    try:
        return TemplateSource(
            name=name,
            html=html_path.read_text(encoding="utf-8"),
            text=text_path.read_text(encoding="utf-8") if text_path.is_file() else None,
        )
    except UnicodeDecodeError:
        raise UserError(f"Template “{name}” is not UTF-8 text.") from None


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

    def __init__(self, source: TemplateSource, subject: str):
        self.source = source
        self.subject_source = subject
        html_env = make_environment(autoescape=True)
        text_env = make_environment(autoescape=False)
        try:
            self._subject = text_env.from_string(subject)
        except TemplateSyntaxError as exc:
            raise TemplateProblem(f"The subject is not a valid template: {exc.message}.") from None
        try:
            self._html = html_env.from_string(source.html)
        except TemplateSyntaxError as exc:
            raise TemplateProblem(
                f"Template {source.name}.html has an error on line {exc.lineno}: {exc.message}."
            ) from None
        text_src = source.text if source.text is not None else html_to_text_template(source.html)
        try:
            self._text = text_env.from_string(text_src)
        except TemplateSyntaxError as exc:
            where = f"{source.name}.txt" if source.text is not None else f"the text derived from {source.name}.html"
            raise TemplateProblem(f"Template {where} has an error on line {exc.lineno}: {exc.message}.") from None

    def render(self, context: dict[str, Any]) -> Rendered:
        try:
            subject = self._subject.render(context)
            body_html = self._html.render(context)
            body_text = self._text.render(context)
        except UndefinedError as exc:
            raise TemplateProblem(f"The template uses a value this recipient does not have: {exc.message}.") from None
        except SecurityError as exc:
            raise TemplateProblem(f"The template was stopped by the sandbox: {exc}.") from None
        except Exception as exc:  # a template can raise anything (division by zero, bad filter args)
            raise TemplateProblem(f"The template failed to render: {type(exc).__name__}: {exc}.") from None
        if len(body_html) + len(body_text) > MAX_RENDERED_BYTES:
            raise TemplateProblem("The rendered message is larger than 2 MB; that is too large to send.")
        subject = " ".join(subject.split())
        if len(subject) > 500:
            raise TemplateProblem("The rendered subject is longer than 500 characters.")
        return Rendered(subject=subject, html=body_html, text=body_text)
