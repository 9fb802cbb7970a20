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


# Review: a signed token naming delivery 2**63 (more than SQLite's or PostgreSQL's integer holds) gave 500
# with a traceback on every token-reading route, where any other bad token gets "Link not valid".
HUGE = [str(2**63), "9" * 19, "1" + "0" * 40, "²"]  # "²" passes str.isdigit() and int() refuses it


async def test_a_signed_token_whose_id_no_database_integer_holds_is_not_valid_on_every_route(bot) -> None:  # type: ignore[no-untyped-def]
    from bot.campaigns.report import REPORT_KIND
    from bot.contacts.signup import TOKEN_KIND

    signer = bot.core.ctx.signer
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=bot.app.web(), raise_app_exceptions=False), base_url="http://t"
    ) as web:
        for huge in HUGE:
            answers = {}
            for kind in ("ud", "up"):
                token = signer.sign(kind, huge)
                answers[f"GET /u {kind}"] = await web.get(f"/u/{token}")
                answers[f"POST /u {kind}"] = await web.post(
                    f"/u/{token}", content="List-Unsubscribe=One-Click"
                )
                answers[f"POST /u/preferences {kind}"] = await web.post(f"/u/{token}/preferences", content="")
            legacy = signer.sign("u", huge, "lena@example.com")
            answers["GET /u legacy"] = await web.get(f"/u/{legacy}")
            answers["GET /c"] = await web.get(f"/c/{signer.sign('c', huge, 'https://acme.example/')}")
            answers["GET /o"] = await web.get(f"/o/{signer.sign('o', huge)}.gif")
            answers["GET /preview"] = await web.get(f"/preview/{signer.sign_expiring('p', huge, ttl_s=600)}")
            report = signer.sign_expiring(REPORT_KIND, huge, ttl_s=600)
            answers["GET /report"] = await web.get(f"/report/{report}")
            answers["GET /report/chart"] = await web.get(f"/report/{report}/chart.png")
            confirm = signer.sign_expiring(TOKEN_KIND, huge, "1", ttl_s=600)
            answers["GET /s/confirm"] = await web.get(f"/s/confirm/{confirm}")
            answers["POST /s/confirm"] = await web.post(f"/s/confirm/{confirm}", content="")
            statuses = {route: answer.status_code for route, answer in answers.items()}
            expected = {route: 400 for route in answers} | {
                "GET /preview": 403,
                "GET /report": 403,
                "GET /report/chart": 403,
            }
            assert statuses == expected, (huge, statuses)
            for route in ("GET /u ud", "POST /u ud", "GET /u legacy"):
                assert "This unsubscribe link is not valid." in answers[route].text, (huge, route)
            assert "This link is not valid." in answers["GET /c"].text
            assert "This confirmation link is not valid." in answers["GET /s/confirm"].text
        assert await suppressed(bot) == 0


def test_a_return_path_whose_id_no_database_integer_holds_is_not_ours() -> None:
    from bot.campaigns.tracking import verp_address, verp_delivery
    from bot.groups.fanout import group_verp, group_verp_delivery
    from bot.links import Signer

    signer = Signer("a-strong-enough-test-key-0123456789")
    for too_big in (2**63, 36**13 - 1):
        assert verp_delivery(signer, verp_address(signer, too_big, "acme.example")) is None
        assert group_verp_delivery(signer, group_verp(signer, too_big, "acme.example")) is None
    assert verp_delivery(signer, verp_address(signer, 2**63 - 1, "acme.example")) == 2**63 - 1
    assert group_verp_delivery(signer, group_verp(signer, 2**63 - 1, "acme.example")) == 2**63 - 1
