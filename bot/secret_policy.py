"""Which signing secrets a running Postroom accepts, and how to make one (invariant 9: no built-in secret).

Every link in campaign mail (unsubscribe, click, open, VERP return path) and every approver's preview
link is an HMAC made with `web.secret`; the HR and email-events webhooks are verified with their own
secrets. A secret anyone can read — the old built-in default, the demo's, the example file's, any string
in Postroom's own source — lets anyone forge those links, so `postroom serve` refuses it, as it refuses
one that is short or predictable.
"""

from __future__ import annotations

import math
import secrets
from collections import Counter
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from bot.config import SECRET_MIN_LENGTH

if TYPE_CHECKING:
    from bot.config import Settings

MIN_LENGTH = SECRET_MIN_LENGTH
HOW_TO_MAKE_ONE = (
    "run `postroom init` to write a postroom.toml with generated secrets, or set it to the output of "
    '`python -c "import secrets; print(secrets.token_urlsafe(32))"`'
)
# Values that were (or are) printed in Postroom's source, docs or examples: never a real secret.
PUBLISHED = frozenset(
    {
        "change-me-postroom-dev-secret",  # the web.secret default before 0.2
        "demo-secret-not-for-production",  # the demo's fixed secrets before 0.2
        "demo-hr-webhook-secret-not-for-production",
        "change-me-to-a-long-random-string",  # manifests/postroom.example.toml before 0.2
    }
)
# Words people type into placeholders; six letters or more, so a random 43-character token contains
# one by chance about once in thirty million.
PLACEHOLDER_WORDS = (
    "change",
    "example",
    "secret",
    "password",
    "sample",
    "replace",
    "production",
    "default",
    "postroom",
    "placeholder",
)
_SOURCE_SUFFIXES = {".py", ".toml", ".md", ".yaml", ".yml", ".json", ".html", ".txt", ".cf", ".csv", ".mako"}


def generate_secret() -> str:
    """A fresh secret that this policy accepts (43 URL-safe characters, 256 bits)."""
    while True:
        value = secrets.token_urlsafe(32)
        if _weakness(value) is None:
            return value


def _weakness(value: str) -> str | None:
    """Why `value` is unfit to sign with, as the end of a sentence; None when it is fit."""
    if value in PUBLISHED:
        return "is a value published with Postroom, so anyone could forge its links"
    lowered = value.lower()
    if any(word in lowered for word in PLACEHOLDER_WORDS):
        return "looks like a placeholder (it contains a word such as “secret” or “example”)"
    if len(value) < MIN_LENGTH:
        return f"is shorter than {MIN_LENGTH} characters"
    if len(set(value)) < 10 or _periodic(value) or _shannon_bits(value) < 100:
        return "is too predictable (repeated characters or a repeating pattern)"
    if _in_source(value):
        return "appears in Postroom's own source or examples, so anyone could forge its links"
    return None


def _periodic(value: str) -> bool:
    n = len(value)
    return any(all(value[i] == value[i + p] for i in range(n - p)) for p in range(1, n // 2 + 1))


def _shannon_bits(value: str) -> float:
    n = len(value)
    return -sum(c / n * math.log2(c / n) for c in Counter(value).values()) * n


def source_roots() -> list[Path]:
    """Postroom's installed packages, and beside them (a checkout) the examples, docs and tests."""
    package = Path(__file__).resolve().parent
    top = package.parent
    roots = [package, top / "adapters"]
    roots += [top / name for name in ("manifests", "docs", "tests", "benchmarks", "README.md")]
    return [r for r in roots if r.exists()]


@lru_cache(maxsize=1)
def _source_text() -> str:
    parts: list[str] = []
    for root in source_roots():
        files: Iterable[Path] = [root] if root.is_file() else root.rglob("*")
        for path in files:
            if path.suffix in _SOURCE_SUFFIXES and "__pycache__" not in path.parts and path.is_file():
                try:
                    parts.append(path.read_text(encoding="utf-8", errors="replace"))
                except OSError:
                    continue
    return "\n".join(parts)


def _in_source(value: str) -> bool:
    return value in _source_text()


def check_secret(key: str, value: str | None, *, required: bool) -> str | None:
    """The sentence refusing `key`'s value, or None when it is fine (or unset and not required)."""
    env = "$POSTROOM_" + "__".join(part.upper() for part in key.split("."))
    if not value:
        if not required:
            return None
        return (
            f"{key} is not set, and postroom serve signs every unsubscribe, tracking and preview link "
            f"with it: {HOW_TO_MAKE_ONE} (or put it in {env})."
        )
    why = _weakness(value)
    if why is None:
        return None
    return f"{key} {why}: {HOW_TO_MAKE_ONE} (or put it in {env})."


# Credentials a platform issues (or an administrator types into its console): Postroom cannot demand its
# own rule of them, but one printed in Postroom's source, a placeholder, or one far shorter than the
# platform makes is refused all the same. (key, the shortest the platform issues, how to get a real one)
ISSUED = (
    ("slack.signing_secret", 32, "copy the Signing Secret from the Slack app's Basic Information page"),
    (
        "slack.bot_token",
        40,
        "copy the Bot User OAuth Token (xoxb-…) from the Slack app's OAuth & Permissions page",
    ),
    ("slack.app_token", 40, "generate an app-level token (xapp-…) on the Slack app's Basic Information page"),
    # WeCom's callback Token is up to 32 letters and digits, typed or generated in the admin console; the
    # EncodingAESKey is always 43.
    ("wecom.token", 12, "press 随机获取 (generate) beside Token in the app's API receive settings"),
    (
        "wecom.encoding_aes_key",
        43,
        "press 随机获取 (generate) beside EncodingAESKey in the app's API receive settings",
    ),
    ("wecom.secret", 32, "copy the app's Secret from the WeCom admin console"),
    (
        "email_events.mailgun.signing_key",
        32,
        "copy the HTTP webhook signing key from Mailgun's Sending → Webhooks page",
    ),
    ("dingtalk.client_secret", 32, "copy the app's Client Secret from the DingTalk developer console"),
    (
        "providers.microsoft.client_secret",
        32,
        "create a client secret under the app registration's Certificates & secrets",
    ),
    ("providers.wecom.secret", 32, "copy the mail app's Secret from the WeCom admin console"),
)
# Passwords someone chose: their strength is not ours to judge, but one printed in Postroom's source is.
PASSWORDS = (
    "smtp.password",
    "providers.ldap.password",
    "providers.mailman.password",
    "email_events.postmark.password",
)


def _issued_weakness(value: str, shortest: int) -> str | None:
    if value in PUBLISHED:
        return "is a value published with Postroom, so anyone could use it"
    lowered = value.lower()
    if any(word in lowered for word in PLACEHOLDER_WORDS):
        return "looks like a placeholder (it contains a word such as “secret” or “example”)"
    if _in_source(value):
        return "appears in Postroom's own source or examples, so anyone could use it"
    if len(value) < shortest:
        return f"is shorter than the {shortest} characters the platform issues"
    if len(set(value)) < 6 or _periodic(value):
        return "is too predictable (repeated characters or a repeating pattern)"
    return None


def _password_weakness(value: str) -> str | None:
    if value in PUBLISHED or _in_source_as_word(value):
        return "appears in Postroom's own source or examples, so anyone could use it"
    return None


def _in_source_as_word(value: str) -> bool:
    """Whether `value` stands on its own (not inside a longer word) somewhere in Postroom's source."""
    text = _source_text()
    start = text.find(value)
    while start != -1:
        end = start + len(value)
        before = text[start - 1] if start else " "
        after = text[end] if end < len(text) else " "
        if not (before.isalnum() or before == "_") and not (after.isalnum() or after == "_"):
            return True
        start = text.find(value, start + 1)
    return False


def _setting(settings: Settings, key: str) -> str | None:
    value: object = settings
    for part in key.split("."):
        value = getattr(value, part)
    if value is not None and hasattr(value, "get_secret_value"):
        value = value.get_secret_value()
    return str(value) if value else None


def _env(key: str) -> str:
    return "$POSTROOM_" + "__".join(part.upper() for part in key.split("."))


def credential_problem(key: str, value: str | None) -> str | None:
    """The sentence refusing a platform credential or a password under `key`; None when fine or unset."""
    if not value:
        return None
    for issued, shortest, how in ISSUED:
        if issued == key:
            why = _issued_weakness(value, shortest)
            return None if why is None else f"{key} {why}: {how} (or put it in {_env(key)})."
    why = _password_weakness(value)
    return (
        None
        if why is None
        else f"{key} {why}: set the password the server really uses (or put it in {_env(key)})."
    )


def serving_problem(settings: Settings) -> str | None:
    """Why `postroom serve` must not start with these secrets, as one sentence; None when they are fine.

    web.secret is required; the webhook secrets, the signup API key, the messengers' credentials and the
    passwords are checked when set (unset, what they serve is off)."""
    for key, value, required in (
        ("web.secret", settings.web.secret, True),
        ("hr.webhook_secret", settings.hr.webhook_secret, False),
        ("campaigns.webhook_secret", settings.campaigns.webhook_secret, False),
        ("signup.api_key", settings.signup.api_key, False),
    ):
        problem = check_secret(key, value, required=required)
        if problem is not None:
            return problem
    for key in [k for k, _, _ in ISSUED] + list(PASSWORDS):
        problem = credential_problem(key, _setting(settings, key))
        if problem is not None:
            return problem
    for name, route in settings.smtp.routes.items():  # each SMTP route's own login
        problem = credential_problem(f"smtp.routes.{name}.password", route.password)
        if problem is not None:
            return problem
    return None
