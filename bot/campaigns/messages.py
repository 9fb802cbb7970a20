"""One campaign's messages: the template compiled once, personalised and assembled per recipient."""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from bot.campaigns.audience import Recipient
from bot.campaigns.templates import CompiledTemplate, Rendered, TemplateSource
from bot.campaigns.tracking import (
    LinkTracker,
    preview_unsubscribe_token,
    unsubscribe_token,
    verp_address,
)
from bot.config import Settings
from bot.db.models import Campaign
from bot.i18n import t
from bot.links import Signer
from bot.mail.compose import build_message, new_message_id

RESERVED = {"name", "email", "unsubscribe_url", "org", "campaign", "attributes", "first_name"}


@dataclass(frozen=True)
class Built:
    message_id: str
    data: bytes
    rendered: Rendered
    sender: str  # the envelope sender: a VERP return path for a campaign delivery


class CampaignMessages:
    def __init__(self, settings: Settings, signer: Signer, campaign: Campaign, source: TemplateSource):
        self.settings = settings
        self.signer = signer
        self.campaign = campaign
        self.template = CompiledTemplate(source, campaign.subject)
        self._org = {"name": settings.org.name, "postal_address": settings.org.postal_address}
        self._campaign = {"name": campaign.name}
        self._domain = campaign.from_address.rsplit("@", 1)[-1]
        slug = re.sub(r"[^a-z0-9-]+", "-", campaign.audience_name.lower()).strip("-") or "list"
        self._list_id = f"{settings.org.name} {campaign.audience_name} <{slug}.campaigns.{self._domain}>"
        self._feedback_id = f"{campaign.id}:{slug}:postroom"
        self.tracking = bool(settings.campaigns.tracking and campaign.tracking)
        self._tracker = LinkTracker(signer, settings.web.base_url)
        self._bounce_domain = settings.campaigns.bounce_domain  # derived from the from address when unset

    def unsubscribe_url(self, delivery_id: int | None = None) -> str:
        """The unsubscribe link of one delivery; without one (a preview, a test message) an inert link
        whose page explains what the real one does: a preview must never unsubscribe its sample."""
        return f"{self.settings.web.base_url}/u/{self._unsubscribe_token(delivery_id)}"

    def _unsubscribe_token(self, delivery_id: int | None) -> str:
        if delivery_id is None:
            return preview_unsubscribe_token(self.signer, self.campaign.id)
        return unsubscribe_token(self.signer, delivery_id)

    def context(self, r: Recipient, unsubscribe_url: str) -> dict[str, Any]:
        ctx: dict[str, Any] = {
            k: v for k, v in r.attributes.items() if k not in RESERVED and v not in (None, "")
        }
        if r.name:
            ctx["name"] = r.name
            ctx["first_name"] = r.name.split()[0]
        ctx["email"] = r.email
        ctx["attributes"] = dict(r.attributes)
        ctx["unsubscribe_url"] = unsubscribe_url
        ctx["org"] = self._org
        ctx["campaign"] = self._campaign
        return ctx

    def render(self, r: Recipient) -> Rendered:
        """The message for `r` as a preview shows it: with the inert preview unsubscribe link."""
        return self.template.render(self.context(r, self.unsubscribe_url()))

    def build(self, r: Recipient, *, subject_prefix: str = "", delivery_id: int | None = None) -> Built:
        """The message for one recipient. With a delivery id (a real send): a VERP return path and,
        when tracking is on, tracked links and an open pixel; without one (a test), neither."""
        token = self._unsubscribe_token(delivery_id)
        url = f"{self.settings.web.base_url}/u/{token}"
        rendered = self.template.render(self.context(r, url))
        body_html = rendered.html
        sender = self.campaign.from_address
        if delivery_id is not None:
            sender = verp_address(self.signer, delivery_id, self._bounce_domain)
            if self.tracking:
                body_html = self._tracker.rewrite(body_html, delivery_id)
        mailto = (
            f"mailto:{self.settings.campaigns.unsubscribe_mailbox}?subject={quote('unsubscribe ' + token)}"
        )
        message_id = new_message_id(self._domain)
        data = build_message(
            from_name=self.campaign.from_name,
            from_address=self.campaign.from_address,
            to_name=r.name,
            to_address=r.email,
            subject=subject_prefix + rendered.subject,
            text=rendered.text,
            html=body_html,
            message_id=message_id,
            headers=[
                ("List-Unsubscribe", f"<{url}>, <{mailto}>"),
                ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
                ("List-Id", self._list_id),
                ("Feedback-ID", self._feedback_id),
                ("Precedence", "bulk"),
                ("X-Postroom-Campaign", str(self.campaign.id)),
            ],
        )
        return Built(message_id, data, rendered, sender)


def lint(messages: CampaignMessages, sample: Recipient) -> list[str]:
    """What stops a campaign from being submitted, as sentences. Empty when it is fine."""
    problems: list[str] = []
    url = messages.unsubscribe_url()
    rendered = messages.template.render(messages.context(sample, url))
    if not rendered.subject.strip():
        problems.append(t("The subject is empty: give one with --subject or a <title> in the template."))
    postal = messages.settings.org.postal_address.strip()
    no_link = {
        "HTML": t("The HTML part has no unsubscribe link: add {tag} to it.", tag="{{ unsubscribe_url }}"),
        "text": t("The text part has no unsubscribe link: add {tag} to it.", tag="{{ unsubscribe_url }}"),
    }
    no_postal = {
        "HTML": t(
            "The HTML part does not show the postal address: add {tag}.", tag="{{ org.postal_address }}"
        ),
        "text": t(
            "The text part does not show the postal address: add {tag}.", tag="{{ org.postal_address }}"
        ),
    }
    for part, body in (("HTML", rendered.html), ("text", rendered.text)):
        if url not in body and url.replace("&", "&amp;") not in body:
            problems.append(no_link[part])
        if postal and postal not in body and html.escape(postal) not in body:
            problems.append(no_postal[part])
    return problems
