"""/help and /lang"""

from __future__ import annotations

from bot import i18n
from bot.commandline import Arg, Parsed, Spec
from bot.context import Context
from bot.core import CommandTable, Request
from bot.db.models import Preference
from bot.db.upsert import insert_ignore
from bot.errors import UserError
from bot.events import Message
from bot.i18n import t

HELP = Spec(
    ("help",),
    (Arg("command", required=False, rest=True),),
    summary="What I can do, or how to use one command.",
)
LANG = Spec(
    ("lang",),
    (Arg("language", required=False),),
    summary="The language I answer you in: en or zh_CN (中文). Without a value, shows the current one.",
)


SPECS = (HELP, LANG)


class GeneralCommands:
    def __init__(self, ctx: Context, table: CommandTable):
        self.ctx = ctx
        self.table = table

    def register(self, table: CommandTable) -> None:
        table.command(HELP, self.help)
        table.command(LANG, self.lang)

    async def help(self, req: Request, p: Parsed) -> Message:
        return describe_commands(self.table, req, p.opt("command"))

    async def lang(self, req: Request, p: Parsed) -> Message:
        return await choose_language(self.ctx, req, p.opt("language"))


def describe(spec: Spec) -> str:
    """A command's summary in the current language."""
    return t(spec.summary)


def describe_commands(table: CommandTable, req: Request, wanted: str | None) -> Message:
    if wanted:
        words = [w.lstrip("/").lower() for w in wanted.split()]
        matches = [
            (path, spec) for path, (spec, _) in table.commands.items() if list(path[: len(words)]) == words
        ]
        if not matches:
            raise UserError(t("There is no command /{name}. /help lists them.", name=" ".join(words)[:40]))
        lines = []
        for _path, spec in sorted(matches):
            lines.append(f"{spec.usage}\n    {describe(spec)}")
            for f in spec.flags:
                if f.help:
                    lines.append(f"    --{f.name}: {t(f.help)}")
        return Message("\n".join(lines), ephemeral=True)
    lines = [t("Email groups (internal) and campaigns (external), from chat. The commands you may use:")]
    hidden = 0
    for spec in table.specs():
        if not may_use(spec, req):
            hidden += 1
            continue
        lines.append(f"  {spec.usage}\n      {describe(spec)}")
    if hidden:
        lines.append(
            t("1 more command is for other roles (HR, campaign senders, approvers, admins).")
            if hidden == 1
            else t(
                "{count} more commands are for other roles (HR, campaign senders, approvers, admins).",
                count=hidden,
            )
        )
    lines.append(t("/help <command> shows one in full, any command."))
    return Message("\n".join(lines), ephemeral=True)


def may_use(spec: Spec, req: Request) -> bool:
    """Whether /help lists the command for this person: open to all, a role they hold, or (a group's
    owners' commands) a colleague, who may own a group."""
    if not spec.roles:
        return True
    if req.left:
        return False
    return req.has(*spec.roles) or ("owners" in spec.roles and req.colleague)


async def choose_language(ctx: Context, req: Request, wanted: str | None) -> Message:
    if wanted is None:
        return Message(
            t(
                "I answer you in {language}. /lang en or /lang zh_CN changes it.",
                language=t(i18n.NAMES[i18n.current()]),
            )
        )
    chosen = i18n.match_locale(wanted)
    if chosen is None:
        raise UserError(
            t(
                "I speak {choices}; “{text}” is not one of them.",
                choices=", ".join(i18n.LOCALES),
                text=wanted[:20],
            ),
            LANG.usage,
        )
    async with ctx.sessions() as session, session.begin():
        await insert_ignore(session, Preference, [{"email": req.email, "locale": chosen}], ["email"])
        row = await session.get(Preference, req.email)
        assert row is not None
        row.locale = chosen
    i18n.set_locale(chosen)
    return Message(t("From now on I answer you in {language}.", language=t(i18n.NAMES[chosen])))
