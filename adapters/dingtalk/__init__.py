"""DingTalk (钉钉) adapter: Stream mode (dingtalk-stream 0.24.3, flaws worked around), interactive
approval cards with Stream callbacks, address-book joiners and leavers."""

from __future__ import annotations

from typing import Any

from adapters.dingtalk.adapter import DingTalkAdapter

__all__ = ["DingTalkAdapter", "from_settings"]


def from_settings(settings: Any, **options: Any) -> DingTalkAdapter | None:
    """Entry point `postroom.adapters:dingtalk`; None unless `dingtalk.client_id` is set."""
    d = settings.dingtalk
    if not d.client_id:
        return None
    from bot.config import ConfigError

    if not d.client_secret:
        raise ConfigError(
            "dingtalk.client_id is set, so dingtalk.client_secret must be set too "
            "(see manifests/dingtalk/README.md)."
        )
    if not d.corp_id:
        # Without it, events and card clicks from any organisation that installs the app would be obeyed.
        raise ConfigError(
            "dingtalk.client_id is set, so dingtalk.corp_id must be set too: your organisation's CorpId "
            "(dingxxxx, in the developer console's 凭证与基础信息), so events and clicks from other "
            "organisations are refused (see manifests/dingtalk/README.md)."
        )
    return DingTalkAdapter(d, **options)
