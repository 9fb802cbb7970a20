"""WeCom (企业微信) adapter: callback mode, encrypted XML, template-card approvals, contact events."""

from __future__ import annotations

from typing import Any

from adapters.wecom.adapter import WeComAdapter

__all__ = ["WeComAdapter", "from_settings"]


def from_settings(settings: Any, **options: Any) -> WeComAdapter | None:
    """Entry point `postroom.adapters:wecom`; None unless `wecom.corp_id` is set."""
    w = settings.wecom
    if not w.corp_id:
        return None
    missing = [k for k in ("agent_id", "secret", "token", "encoding_aes_key") if not getattr(w, k)]
    if missing:
        from bot.config import ConfigError

        raise ConfigError(
            f"wecom.corp_id is set, so wecom.{', wecom.'.join(missing)} must be set too "
            "(see manifests/wecom/README.md)."
        )
    return WeComAdapter(w, base_url=settings.web.base_url, **options)
