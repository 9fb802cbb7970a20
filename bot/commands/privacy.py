"""/privacy export <email> and /privacy erase <email> (admins): data-subject requests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from bot import privacy
from bot.addresses import normalise
from bot.commands.parser import Arg, Parsed, Spec
from bot.errors import UserError
from bot.events import Message

if TYPE_CHECKING:
    from bot.core import Core, Request

EXPORT = Spec(("privacy", "export"), (Arg("email"),), (), "Everything held about a contact (admins).", ("admins",))
ERASE = Spec(("privacy", "erase"), (Arg("email"),), (),
             "Erase a contact; only a hash stays, so they are never mailed again (admins).", ("admins",))


def register(core: Core) -> None:
    core.command(EXPORT)(export)
    core.command(ERASE)(erase)


async def export(core: Core, req: Request, p: Parsed) -> Message:
    try:
        email = normalise(p.arg("email"))
    except UserError as exc:
        raise UserError(exc.sentence, EXPORT.usage) from None
    data = await privacy.export(core.ctx, email)
    folder = Path(core.ctx.settings.campaigns.reports_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = (folder / f"privacy-export-{core.ctx.now():%Y%m%d-%H%M%S}.json").resolve()
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False))
    c = data["contact"]
    lines = [f"What Postroom holds about {email}:"]
    if c:
        consent = c["consent"]
        lines.append(f"  contact: {c['name'] or '(no name)'}, attributes {json.dumps(c['attributes'], ensure_ascii=False)}")
        lines.append(f"  consent: {consent['at'] or 'none recorded'}" +
                     (f" via {consent['source']}" if consent["source"] else "") +
                     (f" ({consent['method']})" if consent["method"] else ""))
        lines.append(f"  lists: {', '.join(data['lists']) or 'none'}")
    else:
        lines.append("  no contact record")
    s = data["suppression"]
    lines.append(f"  suppressed: {s['reason']} since {s['since'][:10]}" if s else "  not suppressed")
    lines.append(f"  campaign messages: {len(data['messages'])}"
                 + (" (" + ", ".join(f"{m['campaign']}: {m['status']}" for m in data["messages"][:10]) + ")"
                    if data["messages"] else ""))
    if data["events"]:
        lines.append("  events: " + ", ".join(f"{k} {v}" for k, v in sorted(data["events"].items())))
    return Message("\n".join(lines), ephemeral=True, attachments=(str(path),))


async def erase(core: Core, req: Request, p: Parsed) -> Message:
    try:
        email = normalise(p.arg("email"))
    except UserError as exc:
        raise UserError(exc.sentence, ERASE.usage) from None
    if core.ctx.settings.is_internal(email):
        raise UserError(f"{email} is a company address; erasure here is for external contacts (HR handles staff).",
                        ERASE.usage)
    done = await privacy.erase(core.ctx, email, actor=req.email, via=req.via)
    what = "the contact record and consent" if done["contact"] else "no contact record (none was held)"
    return Message(f"Erased {email}: {what}, {done['messages']} campaign message records anonymised. Only a hash "
                   "stays on the suppression list, so no campaign or import will mail them again.")
