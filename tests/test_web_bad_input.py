"""The web app's public endpoints given garbage: bad or tampered tokens, oversize bodies, wrong methods."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
from sqlalchemy import func, select

from bot.db.models import Suppression
from bot.web import MAX_FORM_BYTES


async def suppressed(bot) -> int:  # type: ignore[no-untyped-def]
    async with bot.core.ctx.sessions() as s:
        return (await s.execute(select(func.count()).select_from(Suppression))).scalar_one()


async def test_unsubscribe_and_preview_refuse_garbage_and_change_nothing(bot) -> None:  # type: ignore[no-untyped-def]
    signer = bot.core.ctx.signer
    good = signer.sign("u", "1", "lena@example.com")
    foreign = signer.sign("p", "1", "lena@example.com")  # a preview token used as an unsubscribe token
    other_key = type(signer)("another-secret-0123456789").sign("u", "1", "lena@example.com")

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b"x" * 1024

    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=bot.app.web()), base_url="http://t"
    ) as web:
        for token in ("garbage", "a.b", good[:-2] + "AA", foreign, other_key, "a" * 5000, good + ".x", "%00"):
            assert (await web.get(f"/u/{token}")).status_code == 400
            posted = await web.post(f"/u/{token}", content="List-Unsubscribe=One-Click")
            assert posted.status_code == 400 and posted.headers["content-type"].startswith("text/html")
            assert "This unsubscribe link is not valid." in posted.text
        assert (await web.post(f"/u/{good}", content=b"x" * (MAX_FORM_BYTES + 1))).status_code == 413
        assert (await web.post(f"/u/{good}", content=chunks())).status_code == 413  # no length given
        assert (await web.put(f"/u/{good}")).status_code == 405
        for token in (
            "x.y",
            signer.sign("u", "1", "lena@example.com"),
            signer.sign_expiring("p", "1", ttl_s=-1),
        ):
            assert (await web.get(f"/preview/{token}")).status_code == 403
        assert await suppressed(bot) == 0
        page = await web.get(f"/u/{good}")
        assert page.status_code == 200 and "<form method='post'" in page.text and await suppressed(bot) == 0
        assert (await web.post(f"/u/{good}", content="List-Unsubscribe=One-Click")).status_code == 200
        assert (await web.post(f"/u/{good}", content="List-Unsubscribe=One-Click")).status_code == 200
        assert await suppressed(bot) == 1
