"""Findings of a new user's tryout of campaigns, each pinned: what /campaign edit says it changed, one
bound for a subject, which card a resubmission updates, ids on cards, who a test mail is addressed to,
what a cancelled campaign's card shows."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from bot.db.models import AuditEntry
from tests.conftest import SENDER
from tests.test_campaign_flow import load_customers


# -- /campaign edit: the words the sender typed; one bound for the subject ------------------------------
async def test_edit_names_what_changed_as_the_options_typed(bot, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    await load_customers(bot, tmp_path)
    await bot.say(SENDER, "/campaign new spring --to customers --template welcome")
    reply = await bot.say(
        SENDER, '/campaign edit spring --tracking off --subject "Hello {{ first_name }}" --to customers'
    )
    assert reply == "Updated “spring” (--to, --subject, --tracking)."
    for column in ("subject_template", "audience_kind", "audience_name", "audience_where"):
        assert column not in reply
    assert await bot.say(SENDER, '/campaign edit spring --where "country = \\"DE\\""') == (
        "Updated “spring” (--where)."
    )
    async with bot.core.ctx.sessions() as session:
        details = (
            (await session.execute(select(AuditEntry.detail).where(AuditEntry.action == "campaign.edit")))
            .scalars()
            .all()
        )
    assert list(details) == ["--to, --subject, --tracking", "--where"]


async def test_new_and_edit_bound_the_subject_alike(bot, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    await load_customers(bot, tmp_path)
    too_long, longest = "y" * 501, "y" * 500
    refused = "The subject is longer than 500 characters (it has 501)."
    new = await bot.say(
        SENDER, f"/campaign new spring --to customers --template welcome --subject {too_long}"
    )
    assert new.startswith(refused) and "Usage: /campaign new" in new
    assert "Draft campaign" in await bot.say(SENDER, "/campaign new spring --to customers --template welcome")
    edit = await bot.say(SENDER, f"/campaign edit spring --subject {too_long}")
    assert edit.startswith(refused) and "Usage: /campaign edit" in edit
    assert "subject “Welcome to" in await bot.say(SENDER, "/campaign status spring")  # unchanged
    # What either accepts can be sent: the longest subject renders at preview.
    assert (
        await bot.say(SENDER, f"/campaign edit spring --subject {longest}") == "Updated “spring” (--subject)."
    )
    preview = await bot.say(SENDER, "/campaign preview spring")
    assert f"Subject: {longest}" in preview and "Checks: all passed." in preview
