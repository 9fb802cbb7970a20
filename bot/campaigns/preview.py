"""The approver's preview page (GET /preview/<token>, linked from the approval card).

It shows the message as the sample recipient would get it, under a banner with the subject, the
sender, the recipient and the result of the checks. Its unsubscribe link is the preview's inert one
(bot/campaigns/tracking.py): opening a preview never unsubscribes the customer it was rendered for.

A page is rendered once per campaign and content (its approval hash) and kept in a cache bounded
in entries, bytes and age, so reloading it costs no render; renders run in a render process
(bot/campaigns/render_pool.py), so a heavy template does not stall the web app's event loop. A failed render (a template that runs into its
time budget) is kept the same way: reloading a template bomb's preview renders nothing again. GETs of a
page being rendered share that render, and at most `max_renders` different pages render at once; a GET
beyond that gets 503 with Retry-After (`RETRY_AFTER_S`) and a sentence, so forty open tabs cannot keep
the render processes busy — and when it is a page not kept, it gets that answer before any database read
or template file, so the forty answers cost the web app little (benchmarks/preview_load.py).
"""

from __future__ import annotations

import asyncio
import html
import re
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from bot.campaigns import service, spam_score
from bot.campaigns.templates import load_source
from bot.context import Context
from bot.db.models import Campaign
from bot.errors import UserError
from bot.i18n import t

_BODY = re.compile(r"<body\b[^>]*>", re.I)
CacheKey = tuple[int, str]
RETRY_AFTER_S = 5


@dataclass(frozen=True)
class Page:
    status: int
    title: str
    body: str  # a whole document when `document`, else a paragraph for the site's page frame
    document: bool = False


class PreviewCache:
    """Rendered preview pages by (campaign id, content hash), least recently used out first."""

    def __init__(
        self,
        *,
        max_entries: int = 32,
        max_bytes: int = 32 * 1024 * 1024,
        max_age_s: float = 300.0,
        max_renders: int = 2,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.max_entries, self.max_bytes, self.max_age_s = max_entries, max_bytes, max_age_s
        self.max_renders = max_renders
        self._clock = clock
        self._pages: OrderedDict[CacheKey, tuple[float, Page]] = OrderedDict()
        self._bytes = 0
        self._inflight: dict[CacheKey, asyncio.Task[Page]] = {}
        self._opening: Counter[int] = Counter()  # campaigns of GETs of a new page looking up its key
        self.renders = 0  # pages rendered (cache misses), for the curious and the tests

    def get(self, key: CacheKey) -> Page | None:
        found = self._pages.get(key)
        if found is None:
            return None
        stored_at, page = found
        if self._clock() - stored_at > self.max_age_s:  # the audience and the checks move on
            self._drop(key)
            return None
        self._pages.move_to_end(key)
        return page

    def put(self, key: CacheKey, page: Page) -> None:
        size = len(page.body)
        if size > self.max_bytes:
            return
        if key in self._pages:
            self._drop(key)
        self._pages[key] = (self._clock(), page)
        self._bytes += size
        while len(self._pages) > self.max_entries or self._bytes > self.max_bytes:
            self._drop(next(iter(self._pages)))

    def _drop(self, key: CacheKey) -> None:
        _at, page = self._pages.pop(key)
        self._bytes -= len(page.body)

    def __len__(self) -> int:
        return len(self._pages)

    async def page(self, ctx: Context, campaign_id: int) -> Page:
        # A page neither kept nor under way, with every render slot taken or being opened, is refused
        # before the database and the template file: forty tabs at once cost forty short answers.
        new = not self._known(campaign_id)
        if new and self.slots_taken() >= self.max_renders:
            return _busy()
        if new:  # a render slot it may take: counted while it looks up its key
            self._opening[campaign_id] += 1
        try:
            found = await self._look_up(ctx, campaign_id)
        finally:
            if new:
                self._opening[campaign_id] -= 1
                if not self._opening[campaign_id]:
                    del self._opening[campaign_id]
        if isinstance(found, Page):
            return found
        key, campaign = found
        cached = self.get(key)
        if cached is not None:
            return cached
        running = self._inflight.get(key)
        if running is not None:  # the same page is being rendered for another request: share it
            return await asyncio.shield(running)
        if len(self._inflight) >= self.max_renders:
            return _busy()
        # The render belongs to the cache, not to this request: a client that goes away (its request
        # cancelled) leaves it running for the others sharing it, and the page is kept for later ones.
        task = asyncio.ensure_future(self._render_and_keep(ctx, campaign, key))
        self._inflight[key] = task
        task.add_done_callback(lambda done: self._landed(key, done))
        return await asyncio.shield(task)

    async def _render_and_keep(self, ctx: Context, campaign: Campaign, key: CacheKey) -> Page:
        page = await _render(ctx, campaign)
        self.renders += 1
        if page.status in (200, 422):  # a failed render is kept too: it would fail the same way
            self.put(key, page)
        return page

    def _landed(self, key: CacheKey, task: asyncio.Task[Page]) -> None:
        self._inflight.pop(key, None)
        if not task.cancelled():
            task.exception()  # retrieved: no "never retrieved" warning when every requester left

    def slots_taken(self) -> int:
        """Render slots taken: pages rendering, and new pages whose key is being looked up."""
        return len(self._inflight) + len(self._opening)

    async def _look_up(self, ctx: Context, campaign_id: int) -> Page | tuple[CacheKey, Campaign]:
        """The campaign and its page's cache key, or the page that says why there is none."""
        async with ctx.sessions() as session:
            campaign = await session.get(Campaign, campaign_id)
        if campaign is None:
            return Page(404, t("Not found"), t("That campaign no longer exists."))
        try:
            source = await asyncio.to_thread(
                load_source, ctx.settings.campaigns.templates_dir, campaign.template
            )
        except UserError as exc:  # a missing or broken template file is shown, not raised
            return Page(422, t("Preview failed"), exc.sentence)
        return (campaign.id, service.content_hash(campaign, source.digest())), campaign

    def _known(self, campaign_id: int) -> bool:
        """A page of this campaign is kept, being rendered or being looked up (a GET of it may share)."""
        return campaign_id in self._opening or any(
            key[0] == campaign_id for key in (*self._inflight, *self._pages)
        )


def _busy() -> Page:
    return Page(
        503,
        t("Preview busy"),
        t(
            "Too many previews are being rendered at once; try again in {seconds} seconds.",
            seconds=RETRY_AFTER_S,
        ),
    )


async def _render(ctx: Context, campaign: Campaign) -> Page:
    try:
        async with ctx.sessions() as session:
            review = await service.review(ctx, session, campaign, spam=True)
        if review.sample is None:
            return Page(200, t("No recipients"), t("The audience is empty, so there is nothing to preview."))
        rendered = await review.messages.render_async(review.sample)  # the review's render, remembered
    except UserError as exc:  # a broken template is shown, not raised
        return Page(422, t("Preview failed"), exc.sentence)
    sample = review.sample
    sender = (
        f"{campaign.from_name} <{campaign.from_address}>" if campaign.from_name else campaign.from_address
    )
    recipient = f"{sample.name} <{sample.email}>" if sample.name else sample.email
    checks = (
        f"<li>{html.escape(t('All checks passed.'))}</li>"
        if not review.problems
        else "".join(f"<li>✗ {html.escape(p)}</li>" for p in review.problems)
    )
    spam = spam_score.line(review.spam, ctx.settings.campaigns)
    if spam is not None:
        checks += f"<li>{html.escape(spam)}</li>"
    rows = "".join(
        f"<tr><th style='text-align:left;padding-right:1em'>{html.escape(label)}</th><td>{html.escape(value)}</td></tr>"
        for label, value in (
            (t("Subject"), rendered.subject),
            (t("From"), sender),
            (t("To"), t("{recipient} (a sample recipient)", recipient=recipient)),
            (
                t("Audience"),
                t("1 recipient")
                if review.audience.total == 1
                else t("{count} recipients", count=review.audience.total),
            ),
        )
    )
    banner = (
        "<div id='postroom-preview' style='font:14px/1.4 system-ui,sans-serif;background:#fff8d6;"
        "color:#222;border-bottom:2px solid #e0c200;padding:12px 16px;margin:0 0 16px'>"
        f"<strong>{html.escape(t('Preview of campaign “{name}” — not a sent message.', name=campaign.name))}"
        f"</strong> {html.escape(t('Its unsubscribe link is a preview link: it unsubscribes nobody.'))}"
        f"<table style='margin:8px 0'>{rows}</table><strong>{html.escape(t('Checks'))}</strong>"
        f"<ul style='margin:4px 0'>{checks}</ul>"
        "</div>"
    )
    body = rendered.html
    m = _BODY.search(body)
    document = body[: m.end()] + banner + body[m.end() :] if m else banner + body
    return Page(200, t("Preview"), document, document=True)
