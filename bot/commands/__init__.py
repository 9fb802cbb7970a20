"""Chat commands: the same grammar on every messenger. Each module registers its commands."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bot.core import Core


def register_all(core: Core) -> None:
    from bot.commands import campaigns, general, groups, lifecycle, privacy, suppressions

    for module in (general, groups, campaigns, lifecycle, privacy, suppressions):
        module.register(core)
    for path in core.commands:
        if len(path) > 1:
            core.groups_of_commands.setdefault(path[0], []).append(path)
