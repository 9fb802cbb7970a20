"""The Slack app manifest, built from the commands the core registers so it never falls behind.

`postroom slack manifest --url <public base URL>` prints it; `manifests/slack.yaml` is the same
output for https://postroom.example.com, kept in the repository to read and diff.
"""

from __future__ import annotations

from typing import Any

import yaml

from adapters.slack.adapter import EVENTS_PATH, UMBRELLA
from bot.commandline import Spec
from bot.commands import all_specs

EXAMPLE_URL = "https://postroom.example.com"
BOT_SCOPES = [
    "commands",
    "chat:write",
    "files:write",
    "users:read",
    "users:read.email",
]  # files:write: report charts
BOT_EVENTS = ["team_join", "user_change"]


def registered_specs() -> list[Spec]:
    """Every command Postroom answers, from the command modules' specs: nothing is built or connected."""
    return all_specs()


def slash_commands(specs: list[Spec]) -> list[dict[str, str]]:
    """One Slack command per first word: `/campaign new …` and `/campaign list` share `/campaign`."""
    by_head: dict[str, list[Spec]] = {}
    for spec in specs:
        by_head.setdefault(spec.path[0], []).append(spec)
    out = []
    for head in sorted(by_head):
        group = sorted(by_head[head], key=lambda s: s.path)
        if len(group) == 1 and len(group[0].path) == 1:
            spec = group[0]
            description = spec.summary or f"/{head}"
            hint = spec.usage.removeprefix("/" + head).strip()
        else:
            subs = [" ".join(s.path[1:]) for s in group if len(s.path) > 1]
            plural = head.capitalize() + ("" if head.endswith("s") else "s")  # not “Suppressionss”
            description = f"{plural}: " + ", ".join(subs) + ". /help " + head + " explains each."
            hint = "|".join(subs) + " <name> [options]"
        out.append({"command": f"/{head}"[:32], "description": description[:140], "usage_hint": hint[:140]})
    out.append(
        {
            "command": UMBRELLA,
            "description": "Any Postroom command, e.g. /postroom addgroup eng "
            "alice@corp.example; alone, the help.",
            "usage_hint": "<command> [arguments]",
        }
    )
    return out


def build_manifest(
    specs: list[Spec], url: str | None, *, socket_mode: bool = False, name: str = "Postroom"
) -> dict[str, Any]:
    if not socket_mode and not url:
        raise ValueError("HTTP mode needs the public base URL")
    endpoint = f"{url.rstrip('/')}{EVENTS_PATH}" if url and not socket_mode else None
    commands = []
    for c in slash_commands(specs):
        entry: dict[str, Any] = {"command": c["command"]}
        if endpoint:
            entry["url"] = endpoint
        entry["description"] = c["description"]
        if c["usage_hint"]:  # an empty hint is left out rather than sent as ""
            entry["usage_hint"] = c["usage_hint"]
        entry["should_escape"] = True
        commands.append(entry)
    events: dict[str, Any] = {"bot_events": list(BOT_EVENTS)}
    interactivity: dict[str, Any] = {"is_enabled": True}
    if endpoint:
        events = {"request_url": endpoint, **events}
        interactivity["request_url"] = endpoint
    return {
        "_metadata": {"major_version": 1, "minor_version": 1},
        "display_information": {
            "name": name[:35],
            "description": "Email groups and approved campaigns, run from Slack.",
            "background_color": "#2f3a4a",
        },
        "features": {
            "app_home": {
                "home_tab_enabled": False,
                "messages_tab_enabled": True,
                "messages_tab_read_only_enabled": True,
            },
            "bot_user": {"display_name": name[:80], "always_online": True},
            "slash_commands": commands,
        },
        "oauth_config": {"scopes": {"bot": list(BOT_SCOPES)}},
        "settings": {
            "event_subscriptions": events,
            "interactivity": interactivity,
            "org_deploy_enabled": False,
            "socket_mode_enabled": socket_mode,
            "token_rotation_enabled": False,
        },
    }


def render(manifest: dict[str, Any], *, command_line: str) -> str:
    header = (
        f"# Slack app manifest for Postroom, printed by `{command_line}`.\n"
        "# Paste it at https://api.slack.com/apps → Create New App → From an app manifest.\n"
    )
    return header + yaml.safe_dump(manifest, sort_keys=False, allow_unicode=True, width=120)
