"""The Slack adapter's pure translations: markup in command text, Block Kit out, directory policy."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters.slack.blocks import card_blocks, escape, message_payload, read_reason_submission, reason_modal
from adapters.slack.directory import person_event
from adapters.slack.markup import resolve_markup, unescape
from bot.errors import UserError
from bot.events import Button, Card, Message

EMAILS = {"U0ALICE": "alice@corp.example", "W0BOB": "bob@corp.example"}


async def lookup(user_id: str) -> str | None:
    return EMAILS.get(user_id)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("eng <@U0ALICE>", "eng alice@corp.example"),
        ("eng <@U0ALICE|alice> <@W0BOB|bob>", "eng alice@corp.example bob@corp.example"),
        ("eng <mailto:carol@corp.example|carol@corp.example>", "eng carol@corp.example"),
        ('"R&amp;D team" &lt;x&gt;', '"R&D team" <x>'),
        ("see <https://corp.example/x?a=1&amp;b=2|corp.example/x>", "see corp.example/x"),
        ("<https://corp.example>", "https://corp.example"),
        ("in <#C0123|general>", "in #general"),
    ],
)
async def test_markup_becomes_what_the_person_meant(text: str, expected: str) -> None:
    assert await resolve_markup(text, lookup) == expected


@pytest.mark.parametrize(
    ("text", "sentence"),
    [
        ("eng <@U0NOBODY|ghost>", "@ghost has no email address"),
        ("eng <!here>", "@here is not one person"),
        ("eng <!subteam^S0123|@design>", "@design is not one person"),
    ],
)
async def test_markup_that_is_not_one_addressable_person_is_refused(text: str, sentence: str) -> None:
    with pytest.raises(UserError, match=sentence):
        await resolve_markup(text, lookup)


@given(st.text(alphabet=st.characters(blacklist_characters="<>"), max_size=200))
async def test_text_without_markup_survives_escaping_unchanged(text: str) -> None:
    assert await resolve_markup(escape(text), lookup) == text
    assert unescape(escape(text)) == text


def test_a_big_card_stays_inside_block_kit_limits() -> None:
    card = Card(
        "T" * 400,
        fields=tuple((f"f{i}", "v" * 5000) for i in range(23)),
        buttons=(Button("x.approve", "Approve", "1", style="primary"),),
        progress=0.5,
        footer="<b>",
    )
    blocks = card_blocks(card, "hello <b> & you")
    assert len(blocks) <= 50 and len({b["block_id"] for b in blocks}) == len(blocks)
    assert len(blocks[0]["text"]["text"]) <= 150
    sections = [b for b in blocks if b.get("fields")]
    assert [len(b["fields"]) for b in sections] == [10, 10, 3]
    assert all(len(f["text"]) <= 2000 for b in sections for f in b["fields"])
    assert blocks[1]["text"]["text"] == "hello &lt;b&gt; &amp; you"
    assert "▓" * 10 + "░" * 10 + " 50%" in str(blocks)
    assert card_blocks(card)[0]["block_id"] != blocks[0]["block_id"]  # fresh ids on every render
    assert message_payload(Message("plain & simple")) == {"text": "plain &amp; simple"}


def test_the_reason_form_carries_the_click_back() -> None:
    view = reason_modal(
        title="Reject campaign", action_id="campaign.reject", value="7", channel="C1", ts="1.2"
    )
    view["state"] = {"values": {"reason": {"reason_input": {"value": "  too early  "}}}}
    assert read_reason_submission(view) == (
        {"a": "campaign.reject", "v": "7", "c": "C1", "t": "1.2"},
        "too early",
    )
    assert read_reason_submission({"private_metadata": "nope"}) is None


def test_directory_policy_table() -> None:
    def envelope(kind: str, **user: object) -> dict:
        return {
            "event_id": "Ev1",
            "event_time": 1700000000,
            "event": {
                "type": kind,
                "event_ts": "1700000000.000300",
                "user": {"id": "U1", "profile": {"email": "a@corp.example", "real_name": "A"}, **user},
            },
        }

    assert person_event(envelope("team_join")).kind == "joined"
    assert person_event(envelope("team_join", is_bot=True)) is None
    assert person_event(envelope("team_join", is_restricted=True)) is None
    assert person_event(envelope("user_change")).kind == "changed"
    assert person_event(envelope("user_change", deleted=True)).kind == "left"
    assert person_event(envelope("user_change", is_ultra_restricted=True)).kind == "left"
    assert person_event(envelope("member_joined_channel")) is None
    assert person_event(envelope("user_change")).at.microsecond == 300  # sub-second order kept
