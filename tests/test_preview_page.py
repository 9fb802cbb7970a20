"""The approver's preview page: a banner with subject, sender, recipient and checks; an unsubscribe link
that unsubscribes nobody; rendered once (in a render process) and kept; the link expires."""

from __future__ import annotations

import asyncio
import os
import re
import time

import pytest
from sqlalchemy import func, select

from bot.campaigns.render_pool import RenderPool
from bot.db.models import Suppression
from tests import test_campaign_delivery
from tests.conftest import SENDER
from tests.test_campaign_delivery import web

make_bot = test_campaign_delivery.make_bot  # the fixture


@pytest.fixture
def renders(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The process (pid) of every template render a preview or review asks for (a spy: the real render
    runs, in a render process: bot/campaigns/render_pool.py)."""
    seen: list[int] = []
    real = RenderPool.render

    async def counting(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        try:
            return await real(self, *args, **kwargs)
        finally:
            seen.append(self.recent[-1] if self.recent else os.getpid())

    monkeypatch.setattr(RenderPool, "render", counting)
    return seen


async def preview_path(bot) -> str:  # type: ignore[no-untyped-def]
    await bot.say(SENDER, "/campaign new spring --to customers --template welcome")
    reply = await bot.say(SENDER, "/campaign preview spring")
    url = re.search(r"HTML preview: (\S+)", reply)
    assert url is not None, reply
    return url.group(1).removeprefix("http://127.0.0.1:8080")


async def test_the_preview_shows_a_banner_no_live_unsubscribe_and_renders_once(
    make_bot, smtp, tmp_path, renders: list[int]
) -> None:  # type: ignore[no-untyped-def]
    bot = await make_bot()
    path = await preview_path(bot)
    async with web(bot) as client:
        renders.clear()
        first = await client.get(path)
        assert first.status_code == 200
        assert renders and os.getpid() not in renders  # in another process: the server keeps its GIL
        after_first = len(renders)
        second = await client.get(path)
        assert second.status_code == 200 and second.text == first.text
        assert len(renders) == after_first, "a second GET must not render again"

        page = first.text
        banner = page[page.index("id='postroom-preview'") : page.index("</div>")]
        assert "Preview of campaign “spring”" in banner and "not a sent message" in banner
        assert (
            "<th style='text-align:left;padding-right:1em'>Subject</th><td>Welcome to Example Corp" in banner
        )
        assert "Example Corp &lt;news@corp.example&gt;" in banner
        assert "Lena Fischer &lt;lena@example.com&gt;" in banner  # the sample recipient
        assert "All checks passed." in banner
        assert "Hello Lena" in page  # the message itself, below the banner
        from bot.campaigns.tracking import verify_unsubscribe

        tokens = re.findall(r"/u/([A-Za-z0-9_-]+\.[A-Za-z0-9_-]+)", page)
        assert tokens
        for token in tokens:
            link = verify_unsubscribe(bot.core.ctx.signer, token)
            assert link is not None and link.kind == "preview"
            assert (await client.post(f"/u/{token}", content="List-Unsubscribe=One-Click")).status_code == 200
        async with bot.core.ctx.sessions() as session:
            assert (await session.execute(select(func.count()).select_from(Suppression))).scalar_one() == 0

        # A changed template is a new page (the cache key is the approval hash), with its checks.
        html = tmp_path / "templates" / "welcome.html"
        html.write_text(html.read_text().replace("{{ unsubscribe_url }}", "https://nowhere.example/"))
        renders.clear()
        changed = await client.get(path)
        assert changed.status_code == 200 and renders
        assert "✗ The HTML part has no unsubscribe link" in changed.text
        assert "All checks passed." not in changed.text


async def test_an_expired_or_foreign_preview_link_gets_403(make_bot, smtp) -> None:  # type: ignore[no-untyped-def]
    bot = await make_bot()
    path = await preview_path(bot)
    signer = bot.core.ctx.signer
    token = path.removeprefix("/preview/")
    campaign_id, expires = signer.verify(token, "p")  # type: ignore[misc]
    ttl = bot.core.ctx.settings.campaigns.approval_ttl_hours * 3600
    assert abs(int(expires) - (time.time() + ttl)) < 120  # it lasts as long as an approval
    expired = signer.sign("p", campaign_id, str(int(time.time()) - 1))
    async with web(bot) as client:
        assert (await client.get(path)).status_code == 200
        for bad in (expired, signer.sign("p", campaign_id), signer.sign("ud", campaign_id), token + "x"):
            answer = await client.get(f"/preview/{bad}")
            assert answer.status_code == 403 and "not valid or has expired" in answer.text


def test_the_preview_cache_is_bounded_in_entries_bytes_and_age() -> None:
    from bot.campaigns.preview import Page, PreviewCache

    now = [0.0]
    cache = PreviewCache(max_entries=2, max_bytes=1000, max_age_s=60, clock=lambda: now[0])
    page = Page(200, "Preview", "x" * 400, document=True)
    cache.put((1, "a"), page)
    cache.put((2, "a"), page)
    assert cache.get((1, "a")) is page  # now the most recently used
    cache.put((3, "a"), page)  # over the count: the least recently used (2) goes
    assert len(cache) == 2 and cache.get((2, "a")) is None and cache.get((1, "a")) is page
    cache.put((4, "a"), Page(200, "Preview", "y" * 700, document=True))  # over the bytes: the oldest go
    assert cache.get((4, "a")) is not None and len(cache) == 1
    cache.put((5, "a"), Page(200, "Preview", "z" * 5000, document=True))  # larger than the cache: not kept
    assert cache.get((5, "a")) is None
    now[0] = 61
    assert cache.get((4, "a")) is None and len(cache) == 0


# Attacker tryout: a template bomb runs into its render budget on every render, and a failed render was not
# kept, so every GET of its preview rendered again (40 at once kept /healthz waiting 813 ms,
# benchmarks/preview_load.py). A failure is kept like a page, and at most `max_renders` run at once.
BOMB = (
    "<p>Hello {{ first_name }}</p>"
    "{% for a in range(10000) %}{% for b in range(10000) %}{% endfor %}{% endfor %}"
    '<a href="{{ unsubscribe_url }}">Unsubscribe</a> {{ org.postal_address }}'
)


async def bomb_paths(bot, tmp_path, names: list[str]) -> list[str]:  # type: ignore[no-untyped-def]
    from bot.db.models import Campaign

    (tmp_path / "templates" / "bomb.html").write_text(BOMB)
    paths = []
    for name in names:
        reply = await bot.say(SENDER, f"/campaign new {name} --to customers --template bomb --subject Hi")
        assert "Draft campaign" in reply, reply
        async with bot.core.ctx.sessions() as session:
            cid = (await session.execute(select(Campaign.id).where(Campaign.name == name))).scalar_one()
        paths.append("/preview/" + bot.core.ctx.signer.sign_expiring("p", str(cid), ttl_s=3600))
    return paths


async def test_a_failed_preview_render_is_kept_and_not_rendered_again(
    make_bot, smtp, tmp_path, renders: list[int]
) -> None:  # type: ignore[no-untyped-def]
    bot = await make_bot(render_timeout_s=0.2)
    (path,) = await bomb_paths(bot, tmp_path, ["bomb1"])
    async with web(bot) as client:
        renders.clear()
        first = await client.get(path)
        assert first.status_code == 422 and "took longer than" in first.text
        after_first = len(renders)
        assert after_first and os.getpid() not in renders  # rendered (and stopped) in a render process
        again = await asyncio.gather(*(client.get(path) for _ in range(5)))
        assert [a.status_code for a in again] == [422] * 5 and all(a.text == first.text for a in again)
        assert len(renders) == after_first, "a failed render must be kept, not rendered again"


async def test_too_many_preview_renders_at_once_get_503_with_retry_after(make_bot, smtp, tmp_path) -> None:  # type: ignore[no-untyped-def]
    bot = await make_bot(render_timeout_s=0.3)
    paths = await bomb_paths(bot, tmp_path, ["b1", "b2", "b3", "b4"])
    async with web(bot) as client:
        answers = await asyncio.gather(*(client.get(p) for p in paths))
        busy = [a for a in answers if a.status_code == 503]
        assert sorted(a.status_code for a in answers) == [422, 422, 503, 503], answers
        assert all(a.headers["retry-after"] == "5" for a in busy)
        assert all("Too many previews are being rendered at once" in a.text for a in busy)
        later = await asyncio.gather(*(client.get(p) for p in paths))  # once the renders are done
        assert [a.status_code for a in later] == [422] * 4


async def test_a_kept_page_is_answered_while_every_render_slot_is_busy(make_bot, smtp, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A GET of a page not kept is refused before any database read while the slots are taken; one of a
    kept page, or of a page under way, still gets it."""
    from bot.campaigns.preview import PreviewCache

    bot = await make_bot(render_timeout_s=0.5)
    ctx = bot.core.ctx
    await preview_path(bot)
    paths = await bomb_paths(bot, tmp_path, ["b1", "b2", "b3"])
    assert len(paths) == 3
    from bot.db.models import Campaign

    async with ctx.sessions() as session:
        ids = {name: cid for name, cid in await session.execute(select(Campaign.name, Campaign.id))}
    kept_id, b1, b2, b3 = ids["spring"], ids["b1"], ids["b2"], ids["b3"]
    cache = PreviewCache(max_renders=2)
    assert (await cache.page(ctx, kept_id)).status == 200
    rendering = [asyncio.ensure_future(cache.page(ctx, cid)) for cid in (b1, b2)]
    deadline = time.monotonic() + 20
    while cache.slots_taken() < 2:  # both bombs past the door
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    sharing = asyncio.ensure_future(cache.page(ctx, b1))
    assert (await cache.page(ctx, b3)).status == 503
    assert (await cache.page(ctx, kept_id)).status == 200
    assert [p.status for p in await asyncio.gather(*rendering, sharing)] == [422, 422, 422]
    assert cache.renders == 3 and cache.slots_taken() == 0


async def test_a_preview_request_that_goes_away_leaves_the_render_to_the_others(
    make_bot, smtp, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    """The first GET of a page renders it; when its client goes away (the request is cancelled), the GETs
    sharing that render got its CancelledError. Now the render belongs to the cache: they get the page."""
    from bot.campaigns.preview import PreviewCache
    from bot.db.models import Campaign

    bot = await make_bot(render_timeout_s=0.5)
    ctx = bot.core.ctx
    (_path,) = await bomb_paths(bot, tmp_path, ["b1"])
    async with ctx.sessions() as session:
        campaign_id = (await session.execute(select(Campaign.id).where(Campaign.name == "b1"))).scalar_one()
    cache = PreviewCache(max_renders=2)
    first = asyncio.ensure_future(cache.page(ctx, campaign_id))
    deadline = time.monotonic() + 20
    while not cache._inflight:  # the first request's render is under way
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    second = asyncio.ensure_future(cache.page(ctx, campaign_id))
    await asyncio.sleep(0.05)
    first.cancel()  # its client went away
    page = await second
    assert page.status == 422 and "took longer than" in page.body, page
    assert first.cancelled() and cache.renders == 1 and cache.slots_taken() == 0
    assert (await cache.page(ctx, campaign_id)).status == 422 and cache.renders == 1  # kept
