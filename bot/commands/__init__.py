"""Chat commands: the same grammar on every messenger. Each module declares its commands' `SPECS`
and a class whose `register(table)` puts its handlers in the core's CommandTable; the composition
root (bot/app.py) builds those classes with what they need."""

from __future__ import annotations

from bot.commandline import Spec
from bot.commands import (
    automations,
    campaigns,
    contacts,
    drift,
    general,
    groups,
    lifecycle,
    posts,
    privacy,
    reports,
    segments,
    suppressions,
)


def all_specs() -> list[Spec]:
    """Every command Postroom answers, without building anything (the Slack manifest, /help checks)."""
    modules = (
        general, groups, drift, campaigns, lifecycle, privacy, suppressions, posts, automations, segments,
        contacts, reports,
    )  # fmt: skip
    return [spec for module in modules for spec in module.SPECS]
