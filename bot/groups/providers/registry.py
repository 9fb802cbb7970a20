"""The providers this process can reach, built from settings on first use (a platform's client is not
made unless a group lives there) and closed with the app. Groups name their provider by its name."""

from __future__ import annotations

from bot.config import ConfigError, Settings
from bot.groups.providers.base import Provider, ProviderError

LOCAL = "local"
NAMES = ("local", "google", "microsoft", "wecom", "ldap", "mailman")
LABELS = {
    "local": "Postroom",
    "google": "Google Workspace",
    "microsoft": "Microsoft 365",
    "wecom": "WeCom mail",
    "ldap": "LDAP",
    "mailman": "Mailman",
}


class NotConfigured(ProviderError):
    pass


class Providers:
    def __init__(self, settings: Settings):
        default = settings.groups.provider
        if default != LOCAL and default not in settings.providers.configured():
            raise ConfigError(
                f"groups.provider is {default}, but [providers.{default}] is not filled in "
                f"(manifests/{default}/README.md)."
            )
        self.settings = settings
        self._built: dict[str, Provider] = {}

    def name_of(self, group_provider: str | None) -> str:
        """A group's provider: its own, else the configured default."""
        return group_provider or self.settings.groups.provider

    def configured(self) -> list[str]:
        return self.settings.providers.configured()

    def get(self, name: str) -> Provider:
        """The platform provider `name` (NotConfigured when its settings are empty)."""
        found = self._built.get(name)
        if found is not None:
            return found
        if name not in self.configured():
            raise NotConfigured(
                f"The provider {name} is not configured: fill in [providers.{name}] (manifests/{name}/README.md)."
            )
        p = self.settings.providers
        provider: Provider
        if name == "google":
            from bot.groups.providers.google import GoogleGroups

            provider = GoogleGroups(p.google, max_inline_wait_s=p.max_inline_wait_s, domains=self.domains)
        elif name == "microsoft":
            from bot.groups.providers.microsoft import GraphGroups

            provider = GraphGroups(p.microsoft, max_inline_wait_s=p.max_inline_wait_s)
        elif name == "wecom":
            from bot.groups.providers.wecom import WeComMailGroups

            provider = WeComMailGroups(
                p.wecom,
                corp_id=p.wecom.corp_id or self.settings.wecom.corp_id,
                api_url=p.wecom.api_url or self.settings.wecom.api_url,
                max_inline_wait_s=p.max_inline_wait_s,
            )
        elif name == "ldap":
            from bot.groups.providers.ldap import LdapGroups

            provider = LdapGroups(p.ldap)
        elif name == "mailman":
            from bot.groups.providers.mailman import MailmanLists

            provider = MailmanLists(p.mailman, max_inline_wait_s=p.max_inline_wait_s)
        else:
            raise NotConfigured(f"There is no provider called {name}.")
        self._built[name] = provider
        return provider

    @property
    def domains(self) -> list[str]:
        return self.settings.org.domains

    def built(self) -> dict[str, Provider]:
        return dict(self._built)

    async def aclose(self) -> None:
        for provider in self._built.values():
            await provider.aclose()
        self._built.clear()
