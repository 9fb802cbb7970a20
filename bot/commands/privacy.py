"""/privacy export <email> and /privacy erase <email> [--confirm] (admins): data-subject requests."""

from __future__ import annotations

import json
import os
import secrets
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

from bot import privacy
from bot.addresses import normalise
from bot.campaigns.notes import status_name
from bot.commandline import Arg, Flag, Parsed, Spec
from bot.context import Context
from bot.core import CommandTable, Request
from bot.errors import UserError, with_usage
from bot.events import Message
from bot.i18n import sentence_gap, t

EXPORT = Spec(
    ("privacy", "export"), (Arg("email"),), (), "Everything held about a contact (admins).", ("admins",)
)
ERASE = Spec(
    ("privacy", "erase"),
    (Arg("email"),),
    (Flag("confirm", takes_value=False, help="Erase for real; without it, shows what would be erased."),),
    "Erase a contact; only a hash stays, so they are never mailed again. Shows what it would erase "
    "first; --confirm erases (admins).",
    ("admins",),
)


SPECS = (EXPORT, ERASE)


class PrivacyCommands:
    def __init__(self, ctx: Context):
        self.ctx = ctx

    def register(self, table: CommandTable) -> None:
        table.command(EXPORT, partial(export, self.ctx))
        table.command(ERASE, partial(erase, self.ctx))


async def export(ctx: Context, req: Request, p: Parsed) -> Message:
    try:
        email = normalise(p.arg("email"), existing=True)
    except UserError as exc:
        raise with_usage(exc, EXPORT.usage) from None
    data = await privacy.export(ctx, email)
    path = _write_export(Path(ctx.settings.campaigns.reports_dir), ctx.now(), data)
    c = data["contact"]
    lines = [t("What Postroom holds about {email}:", email=email)]
    if c:
        consent = c["consent"]
        lines.append(
            "  "
            + t(
                "contact: {name}, attributes {attributes}",
                name=c["name"] or t("(no name)"),
                attributes=json.dumps(c["attributes"], ensure_ascii=False),
            )
        )
        how = ", ".join(part for part in (consent["source"], consent["method"]) if part)
        if consent["at"] and how:
            lines.append("  " + t("consent: {time} ({how})", time=consent["at"], how=how))
        elif consent["at"]:
            lines.append("  " + t("consent: {time}", time=consent["at"]))
        else:
            lines.append("  " + t("consent: none recorded"))
        lines.append("  " + t("lists: {names}", names=", ".join(data["lists"]) or t("none")))
    else:
        lines.append("  " + t("no contact record"))
    s = data["suppression"]
    lines.append(
        "  "
        + (
            t("suppressed: {reason} since {date}", reason=s["reason"], date=s["since"][:10])
            if s
            else t("not suppressed")
        )
    )
    lines.append(
        "  "
        + t("campaign messages: {count}", count=len(data["messages"]))
        + (
            " ("
            + ", ".join(f"{m['campaign']}: {status_name(m['status'])}" for m in data["messages"][:10])
            + ")"
            if data["messages"]
            else ""
        )
    )
    if data["events"]:
        lines.append(
            "  "
            + t("events: {counts}", counts=", ".join(f"{k} {v}" for k, v in sorted(data["events"].items())))
        )
    return Message("\n".join(lines), ephemeral=True, attachments=(str(path),))


def _write_export(folder: Path, now: datetime, data: dict[str, Any]) -> Path:
    """A new file per export: a random part makes the name unique (two exports in one second don't
    overwrite each other) and not guessable from the time; readable by the owner only (personal data)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = (folder / f"privacy-export-{now:%Y%m%d-%H%M%S}-{secrets.token_urlsafe(12)}.json").resolve()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never an existing file
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(json.dumps(data, indent=2, ensure_ascii=False))
    return path


async def erase(ctx: Context, req: Request, p: Parsed) -> Message:
    try:
        email = normalise(p.arg("email"), existing=True)
    except UserError as exc:
        raise with_usage(exc, ERASE.usage) from None
    if ctx.settings.is_internal(email):
        raise UserError(
            t(
                "{email} is a company address; erasure here is for external contacts (HR handles staff).",
                email=email,
            ),
            ERASE.usage,
        )
    if not p.switch("confirm"):
        return Message(_erase_preview_text(email, await privacy.erase_preview(ctx, email)), ephemeral=True)
    done = await privacy.erase(ctx, email, actor=req.email, via=req.via)
    if done["contact"]:
        text = t(
            "Erased {email}: the contact record and consent, {count} campaign message records anonymised. Only "
            "a hash stays on the suppression list, so no campaign or import will mail them again.",
            email=email,
            count=done["messages"],
        )
    else:
        text = t(
            "Erased {email}: no contact record (none was held), {count} campaign message records anonymised. "
            "Only a hash stays on the suppression list, so no campaign or import will mail them again.",
            email=email,
            count=done["messages"],
        )
    return Message(text)


def _erase_preview_text(email: str, would: dict[str, int]) -> str:
    values = {"email": email, "lists": would["lists"], "messages": would["messages"], "audit": would["audit"]}
    if would["contact"]:
        text = t(
            "Erasing {email} would delete the contact record with its consent and list memberships "
            "({lists}), anonymise campaign message records ({messages}) and audit entries ({audit}), and "
            "keep only a hash on the suppression list.",
            **values,
        )
    else:
        text = t(
            "Postroom holds no contact record for {email}; erasing would anonymise campaign message "
            "records ({messages}) and audit entries ({audit}), and keep only a hash on the suppression list.",
            **values,
        )
    return (
        text
        + sentence_gap()
        + t(
            "It can't be undone: to erase, repeat with --confirm (/privacy erase {email} --confirm).",
            email=email,
        )
    )
