"""Property tests for the signed per-recipient links and the bounce parser."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from bot.campaigns.bounces import parse_report
from bot.campaigns.tracking import (
    LinkTracker,
    click_token,
    verify_click,
    verify_open,
    verp_address,
    verp_delivery,
)
from bot.links import Signer

SIGNER = Signer("property-secret-0123456789")
OTHER = Signer("another-secret-0123456789")
URL = st.builds(
    lambda host, path: f"https://{host}.example/{path}",
    st.from_regex(r"[a-z0-9-]{1,20}", fullmatch=True),
    st.text(st.characters(min_codepoint=33, max_codepoint=126, exclude_characters='"<>\\'), max_size=80),
)


@given(st.integers(min_value=1, max_value=2**53), URL)
def test_a_click_token_gives_back_exactly_the_url_it_signed(delivery: int, url: str) -> None:
    token = click_token(SIGNER, delivery, url)
    assert verify_click(SIGNER, token) == (delivery, url)
    assert verify_click(OTHER, token) is None


@given(
    st.integers(min_value=1, max_value=2**53), URL, st.integers(min_value=0, max_value=200), st.characters()
)
def test_any_change_to_a_click_token_is_refused(delivery: int, url: str, where: int, ch: str) -> None:
    token = click_token(SIGNER, delivery, url)
    i = where % len(token)
    if token[i] == ch:
        return
    assert verify_click(SIGNER, token[:i] + ch + token[i + 1 :]) in (None,)


@given(st.integers(min_value=1, max_value=2**60), st.from_regex(r"[a-z0-9]{1,10}\.example", fullmatch=True))
def test_verp_addresses_survive_case_folding_and_refuse_forgery(delivery: int, domain: str) -> None:
    address = verp_address(SIGNER, delivery, domain)
    assert len(address.split("@")[0]) <= 64
    assert verp_delivery(SIGNER, address.upper()) == delivery
    assert verp_delivery(OTHER, address) is None


@settings(max_examples=200)
@given(st.binary(max_size=2000))
def test_the_bounce_parser_never_raises(data: bytes) -> None:
    assert isinstance(parse_report(data), list)


def test_tracking_rewrites_links_but_not_the_unsubscribe_link() -> None:
    tracker = LinkTracker(SIGNER, "https://p.example")
    html = (
        '<html><body><a href="https://x.example/a?b=1&amp;c=2">x</a> <a href="https://p.example/u/tok">u</a>'
        '<a href="mailto:a@b.example">m</a></body></html>'
    )
    out = tracker.rewrite(html, 7)
    assert 'href="https://p.example/u/tok"' in out and 'href="mailto:a@b.example"' in out
    token = out.split('href="https://p.example/c/')[1].split('"')[0]
    assert verify_click(SIGNER, token) == (7, "https://x.example/a?b=1&c=2")
    pixel = out.split('src="https://p.example/o/')[1].split('"')[0]
    assert verify_open(SIGNER, pixel) == 7 and out.index(pixel) < out.index("</body>")
