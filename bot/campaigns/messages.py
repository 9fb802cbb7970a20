"""One campaign's messages: the template compiled once, personalised and assembled per recipient."""

from __future__ import annotations

import hashlib
import html
import json
import pickle
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from bot.campaigns import render_time
from bot.campaigns.audience import Recipient
from bot.campaigns.render_pool import RenderPool, Unavailable
from bot.campaigns.templates import CompiledTemplate, Rendered, TemplateProblem, TemplateSource
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
# How long a send renders on the event loop before it moves to a worker thread (build_async).
ON_LOOP_S = 0.02
MEMO_SIZE = 64


@dataclass(frozen=True)
class Built:
    message_id: str
    data: bytes
    rendered: Rendered
    sender: str  # the envelope sender: a VERP return path for a campaign delivery


class CampaignMessages:
    def __init__(
        self,
        settings: Settings,
        signer: Signer,
        campaign: Campaign,
        source: TemplateSource,
        *,
        renders: RenderPool | None = None,
    ):
        self.settings = settings
        self.renders = renders  # where render_async renders (previews, reviews): other processes
        self.signer = signer
        self.campaign = campaign
        self.template = CompiledTemplate(
            source, campaign.subject, time_budget_s=settings.campaigns.render_timeout_s
        )
        # Renders done off the loop (render_async), so that a later render() of the same recipient —
        # the chat preview, the approval card, the web preview after a review — is not a second,
        # blocking render of a slow template.
        self._memo: dict[tuple[str, str | None, str], Rendered | TemplateProblem] = {}
        self._overruns = 0  # renders in a row that outran the on-loop slice; at 3, builds go to a thread
        self._org = {"name": settings.org.name, "postal_address": settings.org.postal_address}
        self._campaign = {"name": campaign.name}
        self._domain = campaign.from_address.rsplit("@", 1)[-1]
        slug = re.sub(r"[^a-z0-9-]+", "-", campaign.audience_name.lower()).strip("-") or "list"
        self._list_id = f"{settings.org.name} {campaign.audience_name} <{slug}.campaigns.{self._domain}>"
        self._feedback_id = f"{campaign.id}:{slug}:postroom"
        self.tracking = bool(settings.campaigns.tracking and campaign.tracking)
        self._tracker = LinkTracker(signer, settings.web.base_url)
        self._bounce_domain = settings.campaigns.bounce_domain  # derived from the from address when unset
        # Bulk mail either way (Precedence: bulk keeps vacation responders quiet). An automation is sent by
        # a trigger, not a person: RFC 3834's auto-generated, and Exchange is asked for no auto-replies.
        self._automatic: tuple[tuple[str, str], ...] = (("Precedence", "bulk"),)
        if campaign.kind == "automation":
            self._automatic = (
                ("Auto-Submitted", "auto-generated"),
                ("X-Auto-Response-Suppress", "All"),
                ("Precedence", "bulk"),
            )

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
        """The message for `r` as a preview shows it (with the inert preview unsubscribe link), within the
        time budget (TemplateProblem otherwise). Blocks the thread while it renders: from a coroutine,
        prefer `await render_async(r)`."""
        if self._memo:
            found = self._memo.get(_memo_key(r))
            if isinstance(found, TemplateProblem):
                raise found
            if found is not None:
                return found
        return self.template.render(self.context(r, self.unsubscribe_url()))

    async def render_async(self, r: Recipient) -> Rendered:
        """`render` in a render process (bot/campaigns/render_pool.py; a worker thread without one), so
        the event loop keeps answering while a slow template runs into its time budget. What it finds is
        remembered for this object's later `render(r)`."""
        key = _memo_key(r)
        found = self._memo.get(key)
        if found is None:
            context = self.context(r, self.unsubscribe_url())
            try:
                found = await self._render_elsewhere(context)
            except TemplateProblem as exc:
                found = exc
            if len(self._memo) >= MEMO_SIZE:
                self._memo.pop(next(iter(self._memo)))
            self._memo[key] = found
        if isinstance(found, TemplateProblem):
            raise found
        return found

    async def _render_elsewhere(self, context: dict[str, Any]) -> Rendered:
        if self.renders is not None:
            try:
                return await self.renders.render(
                    self.template.source, self.template.subject_source, context, self.template.time_budget_s
                )
            except (Unavailable, pickle.PicklingError, TypeError, AttributeError):
                pass  # no render process, or a value that can't cross to one: a thread, as before
        return await render_time.off_loop(lambda: self.template.render(context))

    def spam_sample(self, r: Recipient) -> tuple[bytes, str]:
        """The message for `r` as it would be sent, for a spam score (bot/campaigns/spam_score.py), and a
        key of what it says: its Date, Message-ID and MIME boundary change with every build, its score
        doesn't. Rendered from what render_async remembered; links tracked when the campaign tracks, for a
        delivery id 0 that no delivery has, and the inert preview unsubscribe link."""
        rendered = self.render(r)
        built = self._build(r, "", None, lambda _context: rendered, track_as=0 if self.tracking else None)
        key = hashlib.sha256(
            json.dumps(
                [
                    self.campaign.from_name,
                    self.campaign.from_address,
                    r.name,
                    r.email,
                    rendered.subject,
                    rendered.html,
                    rendered.text,
                    self.tracking,
                    self._list_id,
                    self._automatic,
                ]
            ).encode()
        ).hexdigest()
        return built.data, key

    def build(self, r: Recipient, *, subject_prefix: str = "", delivery_id: int | None = None) -> Built:
        """The message for one recipient. With a delivery id (a real send): a VERP return path and,
        when tracking is on, tracked links and an open pixel; without one (a test), neither.
        TemplateProblem when it can't be rendered within the time budget."""
        return self._build(r, subject_prefix, delivery_id, self.template.render)

    async def build_test_async(self, sample: Recipient, to: Recipient, banner: str) -> Built:
        """A test message: the content rendered for `sample`, addressed to `to` (the person testing, by
        their own name), with `banner` as the first line of both parts saying whose data it shows."""
        return await self.build_async(sample, subject_prefix="[TEST] ", to=to, banner=banner)

    async def build_async(
        self,
        r: Recipient,
        *,
        subject_prefix: str = "",
        delivery_id: int | None = None,
        to: Recipient | None = None,
        banner: str | None = None,
    ) -> Built:
        """`build` without holding the event loop past ON_LOOP_S: a message renders on the loop (a thread
        hop would cost more than the render), and one that needs longer is rendered again in a worker
        thread with the whole budget. After 3 such messages in a row (not one that a busy machine
        merely paused), this campaign's messages go to the thread straight away."""
        if self._overruns < 3:
            try:
                built = self._build(
                    r,
                    subject_prefix,
                    delivery_id,
                    lambda c: self.template.render_within(c, ON_LOOP_S),
                    to,
                    banner,
                )
            except render_time.OutOfTime:
                self._overruns += 1
            else:
                self._overruns = 0
                return built
        return await render_time.off_loop(
            lambda: self._build(r, subject_prefix, delivery_id, self.template.render, to, banner)
        )

    def _build(
        self,
        r: Recipient,
        subject_prefix: str,
        delivery_id: int | None,
        render: Callable[[dict[str, Any]], Rendered],
        to: Recipient | None = None,
        banner: str | None = None,
        track_as: int | None = None,
    ) -> Built:
        token = self._unsubscribe_token(delivery_id)
        url = f"{self.settings.web.base_url}/u/{token}"
        rendered = render(self.context(r, url))
        body_html, body_text = rendered.html, rendered.text
        if banner is not None:
            body_html, body_text = _with_banner(body_html, banner), f"{banner}\n\n{body_text}"
        to = to or r
        sender = self.campaign.from_address
        if delivery_id is not None:
            sender = verp_address(self.signer, delivery_id, self._bounce_domain)
            if self.tracking:
                body_html = self._tracker.rewrite(body_html, delivery_id)
        elif track_as is not None:
            body_html = self._tracker.rewrite(body_html, track_as)
        mailto = (
            f"mailto:{self.settings.campaigns.unsubscribe_mailbox}?subject={quote('unsubscribe ' + token)}"
        )
        message_id = new_message_id(self._domain)
        data = build_message(
            from_name=self.campaign.from_name,
            from_address=self.campaign.from_address,
            to_name=to.name,
            to_address=to.email,
            subject=subject_prefix + rendered.subject,
            text=body_text,
            html=body_html,
            message_id=message_id,
            headers=[
                ("List-Unsubscribe", f"<{url}>, <{mailto}>"),
                ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
                ("List-Id", self._list_id),
                ("Feedback-ID", self._feedback_id),
                *self._automatic,
                ("X-Postroom-Campaign", str(self.campaign.id)),
            ],
        )
        return Built(message_id, data, rendered, sender)


_BODY_TAG = re.compile(r"<body\b[^>]*>", re.I)


def _with_banner(body_html: str, banner: str) -> str:
    """`body_html` with `banner` as its first paragraph (right after <body>, else at the start)."""
    line = (
        '<p style="margin:0 0 1em;padding:.5em;background:#fff4c2;border:1px solid #e0c060;'
        f'font-family:sans-serif;font-size:14px">{html.escape(banner)}</p>'
    )
    found = _BODY_TAG.search(body_html)
    if found is None:
        return line + body_html
    return body_html[: found.end()] + line + body_html[found.end() :]


def _memo_key(r: Recipient) -> tuple[str, str | None, str]:
    return r.email, r.name, json.dumps(r.attributes, sort_keys=True, default=str)


def lint(messages: CampaignMessages, sample: Recipient) -> list[str]:
    """What stops a campaign from being submitted, as sentences. Empty when it is fine."""
    problems: list[str] = []
    url = messages.unsubscribe_url()
    rendered = messages.render(sample)
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
