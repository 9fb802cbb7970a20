"""`postroom init`: a starter postroom.toml with generated secrets and the organisation's own values.

The file holds secrets, so it is created readable by its owner only (0600) and never overwrites an
existing file unless asked to.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bot.config import ConfigError
from bot.secret_policy import generate_secret


@dataclass(frozen=True)
class Starter:
    org_name: str | None = None
    domains: tuple[str, ...] = ()
    base_url: str | None = None
    postal_address: str | None = None


def _q(value: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's)."""
    return json.dumps(value, ensure_ascii=False)


def render(starter: Starter, *, web_secret: str, hr_secret: str, events_secret: str) -> str:
    domains = [d.strip().lower().lstrip("@") for d in starter.domains if d.strip()]
    lines = [
        "# Postroom configuration, written by `postroom init`. Every key: manifests/postroom.example.toml.",
        "# It holds secrets: keep it private (it was created with mode 0600) and out of version control.",
        "",
        "[database]",
        'url = "sqlite+aiosqlite:///postroom.db"',
        '# url = "postgresql+asyncpg://postroom@db.example/postroom"   # production, several processes',
        "",
        "[org]",
        "# postroom serve and postroom chat refuse to start until name, domains and postal_address are set.",
    ]
    if starter.org_name:
        lines.append(f"name = {_q(starter.org_name)}")
    else:
        lines.append('# name = "Your Organisation"           # set it: the From name of campaign mail')
    if domains:
        lines.append(f"domains = [{', '.join(_q(d) for d in domains)}]")
    else:
        lines.append(
            '# domains = ["your-company.example"]   # set it: the company\'s mail domains (internal)'
        )
    if starter.postal_address:
        lines.append(f"postal_address = {_q(starter.postal_address)}")
    else:
        lines.append(
            '# postal_address = "Your street, postcode and city"   # set it: in every campaign message (CAN-SPAM)'
        )
    lines += [
        "",
        "[roles]                          # email addresses",
        "hr = []",
        "senders = []",
        "approvers = []",
        "admins = []",
        "",
        "[web]",
        'host = "127.0.0.1"',
        "port = 8080",
        f"base_url = {_q(starter.base_url or 'http://127.0.0.1:8080')}"
        + ("" if starter.base_url else "   # how recipients reach unsubscribe links: your https URL"),
        f"secret = {_q(web_secret)}   # signs every link in mail and every preview link",
        "",
        "[campaigns]",
    ]
    if domains:
        name = starter.org_name or "org.name"
        lines += [
            f"# Unset, the sender follows [org]: From {name} <news@{domains[0]}>, unsubscribe@{domains[0]},",
            f"# return path bounces+…@{domains[0]}. Set from_address, from_name, unsubscribe_mailbox or",
            "# bounce_domain here to choose otherwise.",
        ]
    else:
        lines.append("# Unset, from_address, from_name, unsubscribe_mailbox and bounce_domain follow [org].")
    lines += [
        f"# webhook_secret = {_q(events_secret)}   # uncomment to accept an email service's bounces",
        "",
        "[hr]",
        f"# webhook_secret = {_q(hr_secret)}   # uncomment to turn on the HR webhook (POST /hooks/hr)",
        "",
    ]
    return "\n".join(lines)


def write_private(path: Path, text: str, *, force: bool) -> None:
    """Write `text` to `path` with mode 0600; refuse an existing file unless `force`."""
    exists = f"{path} already exists: choose another file with -o, or overwrite it with --force."
    if path.exists() and not force:
        raise ConfigError(exists)
    if not path.parent.is_dir():
        raise ConfigError(f"{path.parent} is not a folder that exists.")
    if not force:
        try:  # O_EXCL: never overwrite a file that appeared meanwhile
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise ConfigError(exists) from None
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        return
    # A temporary file (created 0600) renamed over the target: no moment where the secret is readable.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def init(path: Path, starter: Starter, *, force: bool) -> None:
    text = render(
        starter, web_secret=generate_secret(), hr_secret=generate_secret(), events_secret=generate_secret()
    )
    write_private(path, text, force=force)
