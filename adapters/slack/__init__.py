"""Slack, through slack-bolt: slash commands, Block Kit approval cards, directory events."""

from __future__ import annotations

from typing import Any


def from_settings(settings: Any, **options: Any) -> Any:
    """Entry point `postroom.adapters:slack`: None while `slack.bot_token` is not set."""
    from bot.config import ConfigError  # here, not at import: `postroom slack` is loaded by every CLI start

    cfg = settings.slack
    if cfg.bot_token is None or not cfg.bot_token.get_secret_value():
        return None
    if cfg.mode == "http" and (cfg.signing_secret is None or not cfg.signing_secret.get_secret_value()):
        raise ConfigError(
            "slack.mode is http, so slack.signing_secret is needed (Basic Information → Signing Secret)."
        )
    if cfg.mode == "socket" and (cfg.app_token is None or not cfg.app_token.get_secret_value()):
        raise ConfigError(
            "slack.mode is socket, so slack.app_token (xapp-…, scope connections:write) is needed."
        )
    from adapters.slack.adapter import SlackAdapter

    return SlackAdapter(cfg, **options)
