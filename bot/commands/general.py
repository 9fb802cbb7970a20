"""/help"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bot.commands.parser import Arg, Parsed, Spec
from bot.errors import UserError
from bot.events import Message

if TYPE_CHECKING:
    from bot.core import Core, Request

HELP = Spec(("help",), (Arg("command", required=False, rest=True),), summary="What I can do, or how to use one command.")


def register(core: Core) -> None:
    core.command(HELP)(help_command)


async def help_command(core: Core, req: Request, p: Parsed) -> Message:
    wanted = p.opt("command")
    if wanted:
        words = [w.lstrip("/").lower() for w in wanted.split()]
        matches = [(path, spec) for path, (spec, _) in core.commands.items() if list(path[: len(words)]) == words]
        if not matches:
            raise UserError(f"There is no command /{' '.join(words)[:40]}. /help lists them.")
        lines = []
        for _path, spec in sorted(matches):
            lines.append(f"{spec.usage}\n    {spec.summary}")
            for f in spec.flags:
                if f.help:
                    lines.append(f"    --{f.name}: {f.help}")
        return Message("\n".join(lines), ephemeral=True)
    lines = ["Email groups (internal) and campaigns (external), from chat. Commands:"]
    for _path, (spec, _) in sorted(core.commands.items()):
        allowed = not spec.roles or req.has(*spec.roles) or "owners" in spec.roles
        mark = "" if allowed else "  (needs a role you don't have)"
        lines.append(f"  {spec.usage}{mark}\n      {spec.summary}")
    lines.append("/help <command> shows one in full.")
    return Message("\n".join(lines), ephemeral=True)
