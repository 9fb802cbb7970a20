"""/segment new|edit|show|list|delete: named audiences — a contact list narrowed by an expression
(bot/campaigns/segments.py). `--to <segment>` on a campaign or an automation copies its definition,
which the approval is then bound to."""

from __future__ import annotations

from bot.campaigns import segment_store
from bot.commandline import Arg, Flag, Parsed, Spec, usage_of
from bot.context import Context
from bot.core import CommandTable, Request
from bot.events import Message
from bot.i18n import t

NAME = Arg("name")
WHERE = Flag(
    "where", help='the expression, e.g. "country in (\\"DE\\", \\"AT\\") and not clicked_within(90d)"'
)
EITHER, SENDERS = ("senders", "approvers"), ("senders",)

NEW = Spec(
    ("segment", "new"),
    (NAME, Arg("list")),
    (Flag("where", help=WHERE.help, required=True),),
    "Name a segment of a contact list; shows how many match and a sample (senders).",
    SENDERS,
)
EDIT = Spec(
    ("segment", "edit"),
    (NAME,),
    (Flag("where", help=WHERE.help, required=True),),
    "Change a segment's expression (campaigns made from it keep the copy they were approved with).",
    SENDERS,
)
SHOW = Spec(("segment", "show"), (NAME,), (), "A segment's expression, how many match, and a sample.", EITHER)
LIST = Spec(("segment", "list"), (), (), "All segments.", EITHER)
DELETE = Spec(
    ("segment", "delete"), (NAME,), (), "Delete a segment (campaigns made from it keep their copy).", SENDERS
)
SPECS = (NEW, EDIT, SHOW, LIST, DELETE)


def matched(name: str, found: segment_store.Matched) -> str:
    said = _matched(name, found)
    if found.suppressed == 1:
        return said + " " + t("1 more is suppressed (unsubscribed, bounced or complained) and not counted.")
    if found.suppressed:
        return (
            said
            + " "
            + t(
                "{count} more are suppressed (unsubscribed, bounced or complained) and not counted.",
                count=found.suppressed,
            )
        )
    return said


def _matched(name: str, found: segment_store.Matched) -> str:
    if not found.count:
        return t("“{name}” matches nobody on the list now.", name=name)
    if found.count == 1:
        return t(
            "“{name}” matches 1 contact now (consented, on the list): {sample}.",
            name=name,
            sample=", ".join(found.sample),
        )
    return t(
        "“{name}” matches {count} contacts now (consented, on the list), e.g. {sample}.",
        name=name,
        count=found.count,
        sample=", ".join(found.sample),
    )


class SegmentCommands:
    def __init__(self, ctx: Context):
        self.ctx = ctx

    def register(self, table: CommandTable) -> None:
        for spec in SPECS:
            table.command(spec, getattr(self, spec.path[-1]))

    async def new(self, req: Request, p: Parsed) -> Message:
        with usage_of(NEW):
            seg, found = await segment_store.create(
                self.ctx, p.arg("name"), p.arg("list"), p.flag("where") or "", actor=req.email, via=req.via
            )
        return Message(
            t("Saved segment “{name}” of list {list}.", name=seg.name, list=seg.list_name)
            + " "
            + matched(seg.name, found)
        )

    async def edit(self, req: Request, p: Parsed) -> Message:
        with usage_of(EDIT):
            seg, found = await segment_store.edit(
                self.ctx, p.arg("name"), p.flag("where") or "", actor=req.email, via=req.via
            )
        return Message(t("Updated segment “{name}”.", name=seg.name) + " " + matched(seg.name, found))

    async def show(self, req: Request, p: Parsed) -> Message:
        with usage_of(SHOW):
            seg, found = await segment_store.show(self.ctx, p.arg("name"))
        return Message(
            t(
                "Segment “{name}”: list {list} where {expression}.",
                name=seg.name,
                list=seg.list_name,
                expression=seg.expression,
            )
            + "\n"
            + matched(seg.name, found)
        )

    async def list(self, req: Request, p: Parsed) -> Message:
        segs = await segment_store.listing(self.ctx)
        if not segs:
            return Message(t("There are no segments yet. /segment new names one."))
        return Message(
            "\n".join(
                [t("1 segment:") if len(segs) == 1 else t("{count} segments:", count=len(segs))]
                + [
                    "  "
                    + t(
                        "{name} — list {list} where {expression}",
                        name=s.name,
                        list=s.list_name,
                        expression=s.expression,
                    )
                    for s in segs
                ]
            )
        )

    async def delete(self, req: Request, p: Parsed) -> Message:
        with usage_of(DELETE):
            name = await segment_store.delete(self.ctx, p.arg("name"), actor=req.email, via=req.via)
        return Message(t("Deleted segment “{name}”.", name=name))
