"""Credentials never reach a log line: a mask applied to every log record the process creates.

Platform APIs take credentials in URLs (WeCom's `gettoken?corpsecret=…`, `?access_token=…` on every
WeCom and DingTalk call, DingTalk's stream `?ticket=…`), and httpx logs each request's URL at INFO,
which `postroom -v` shows. The mask rewrites known credential parameters, Slack tokens, bearer
tokens and the configured secret values themselves, in the message, its arguments and any traceback.

It is installed as the log record factory (not a handler filter) so that it covers every handler,
including those libraries attach to their own loggers (uvicorn's) and pytest's capture.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterable
from typing import Any

MASK = "***"
_PARAM = re.compile(
    r"(?i)(?<![A-Za-z0-9_])(corpsecret|corp_secret|access_token|accesstoken|client_secret|clientsecret|"
    r"app_secret|appsecret|secret|ticket|token|password|passwd|signing_secret|sign|refresh_token|"
    r"suite_ticket|encoding_aes_key)=([^&\s'\"<>]+)"
)
_QUOTED = re.compile(
    r"(?i)([\"']?(?:corp_?secret|access_?token|client_?secret|app_?secret|secret|ticket|token|password|"
    r"signing_?secret|refresh_?token|encoding_?aes_?key)[\"']?\s*[:=]\s*[\"'])([^\"']+)"
)
_SLACK = re.compile(r"\b(?:xox[abpersco]|xapp)-[A-Za-z0-9-]{6,}")
_BEARER = re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]{8,}")

_lock = threading.Lock()
_values: tuple[str, ...] = ()  # configured secrets, longest first
_installed: Callable[..., logging.LogRecord] | None = None


def mask(text: str) -> str:
    """`text` with every credential it contains replaced by ***."""
    for value in _values:
        if value in text:
            text = text.replace(value, MASK)
    text = _PARAM.sub(lambda m: f"{m.group(1)}={MASK}", text)
    text = _QUOTED.sub(lambda m: f"{m.group(1)}{MASK}", text)
    text = _SLACK.sub(MASK, text)
    return _BEARER.sub(lambda m: f"{m.group(1)}{MASK}", text)


def remember_secrets(values: Iterable[Any]) -> None:
    """Mask these exact values too (the configured secrets); short or empty ones are skipped, since
    masking a 3-character string would garble unrelated text while hiding little."""
    global _values
    found = set(_values)
    for value in values:
        if value is None:
            continue
        raw = value.get_secret_value() if hasattr(value, "get_secret_value") else str(value)
        if len(raw) >= 6:
            found.add(raw)
    with _lock:
        _values = tuple(sorted(found, key=len, reverse=True))


def mask_record(record: logging.LogRecord) -> None:
    try:
        message = record.getMessage()
    except Exception:  # a malformed call: leave it to logging's own error report
        return
    masked = mask(message)
    if masked != message:
        record.msg, record.args = masked, None
    if record.exc_info and not record.exc_text:
        text = logging.Formatter().formatException(record.exc_info)
        masked_exc = mask(text)
        if masked_exc != text:
            record.exc_text = masked_exc


class SecretMaskFilter(logging.Filter):
    """The same mask as a filter, for a handler that is set up apart from this process's factory."""

    def filter(self, record: logging.LogRecord) -> bool:
        mask_record(record)
        return True


def install() -> None:
    """Mask every log record created from now on (idempotent)."""
    global _installed
    with _lock:
        if _installed is not None:
            return
        previous = logging.getLogRecordFactory()

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            mask_record(record)
            return record

        logging.setLogRecordFactory(factory)
        _installed = previous


def settings_secrets(settings: Any) -> list[Any]:
    """Every credential in the settings, to pass to `remember_secrets`."""
    return [
        settings.web.secret,
        settings.smtp.password,
        settings.hr.webhook_secret,
        settings.campaigns.webhook_secret,
        settings.signup.api_key,
        settings.slack.bot_token,
        settings.slack.signing_secret,
        settings.slack.app_token,
        settings.dingtalk.client_secret,
        settings.wecom.secret,
        settings.wecom.token,
        settings.wecom.encoding_aes_key,
        *(route.password for route in settings.smtp.routes.values()),
    ]
