"""/privacy export <email> and /privacy erase <email> (admins): data-subject requests."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

from bot import privacy
from bot.addresses import normalise
from bot.campaigns.notes import status_name
from bot.commandline import Arg, Parsed, Spec
from bot.context import Context
from bot.core import CommandTable, Request
from bot.errors import UserError
from bot.events import Message
from bot.i18n import t

EXPORT = Spec(
    ("privacy", "export"), (Arg("email"),), (), "Everything held about a contact (admins).", ("admins",)
)
ERASE = Spec(
    ("privacy", "erase"),
    (Arg("email"),),
    (),
    "Erase a contact; only a hash stays, so they are never mailed again (admins).",
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
        email = normalise(p.arg("email"))
    except UserError as exc:
        raise UserError(exc.sentence, EXPORT.usage) from None
    data = await privacy.export(ctx, email)
    folder = Path(ctx.settings.campaigns.reports_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = (folder / f"privacy-export-{ctx.now():%Y%m%d-%H%M%S}.json").resolve()
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False))
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


async def erase(ctx: Context, req: Request, p: Parsed) -> Message:
    try:
        email = normalise(p.arg("email"))
    except UserError as exc:
        raise UserError(exc.sentence, ERASE.usage) from None
    if ctx.settings.is_internal(email):
        raise UserError(
            t(
                "{email} is a company address; erasure here is for external contacts (HR handles staff).",
                email=email,
            ),
            ERASE.usage,
        )
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
