"""Segments: the expression language's errors point at the column, hostile input is refused with a
sentence, every value reaches SQL as a bound parameter, and a segment narrows a campaign whose approval
is bound to the expression."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite

from bot.campaigns import segments
from bot.campaigns.service import content_hash
from bot.db.models import Campaign, CampaignEvent, Contact, Delivery, Segment
from tests.audience_kit import make_bot  # noqa: F401
from tests.conftest import APPROVER, SENDER

NOW = datetime(2026, 12, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ('country in ("DE" ))', "column 19"),
        ('country = "DE', "a quotation mark that is not closed"),
        ("plan = ", "column 7"),
        ("plan == 'pro'", "column 7"),
        ("", "The expression is empty."),
        ("clicked_within(90)", "a duration such as 90d or 2w"),
        ("clicked_within(9999d)", "outside 1 to 3650 days"),
        ("opened_count >= 'many'", "a count, compared with something not a number"),
        ("domain > 'x'", "takes only =, != and in"),
        ("country not = 'DE'", "where “in” should be"),
        ("a = 1 and", "the end where a field or a function"),
    ],
)
def test_mistakes_are_a_sentence_pointing_at_the_column(text: str, says: str) -> None:
    with pytest.raises(segments.ExpressionProblem) as caught:
        segments.parse(text)
    assert says in caught.value.sentence and caught.value.sentence.endswith("."), caught.value.sentence


@pytest.mark.parametrize(
    "hostile",
    [
        "1; DROP TABLE contacts",
        "plan = 'x' -- comment",
        "plan = 'x' /* */",
        "pg_sleep(10)",
        "sqlite_version()",
        "attributes->>'x' = 1",
        "plan = 'x' union select email from contacts",
        "email = email",
        "(" * 12 + "plan = 'x'" + ")" * 12,
        "not " * 240 + "plan = 'x'",
        "not (" * 6 + "plan = 'x'" + ")" * 6,
        "opened_count >= 99999999999999999999999999999",
        "opened_count >= 9223372036854775808",
        "sent_count < -9223372036854775809",
        "opened_count >= 9999999999999999999999999.5",
        "clicked_count > 2147483648",
        " or ".join(["plan = 'x'"] * 41),
        "plan in (" + ", ".join(["'x'"] * 101) + ")",
        "plan = '" + "x" * 2000 + "'",
        "plan = 'a\x00b'",
        "plan = 'a\u202eb'",
        "a.b = 'x'",
        "plan = `x`",
    ],
)
def test_hostile_expressions_are_refused_with_a_sentence(hostile: str) -> None:
    with pytest.raises(segments.ExpressionProblem) as caught:
        segments.parse(hostile)
    sentence = caught.value.sentence
    assert sentence.endswith(".") and "\n" not in sentence and len(sentence) < 400, sentence


HOSTILE_VALUES = ["x'; DROP TABLE contacts; --", 'x" OR 1=1 --', "%' OR '1'='1", "\\'; SELECT 1; --"]


@pytest.mark.parametrize("value", HOSTILE_VALUES)
def test_values_are_bound_parameters_never_sql(value: str) -> None:
    quoted = '"' + value.replace('"', "") + '"' if '"' not in value else "'" + value + "'"
    text = f"plan = {quoted} or country in ({quoted}, 'DE') or email = {quoted}"
    where = segments.compile_where(text, NOW)
    for dialect in (sqlite.dialect(), postgresql.dialect()):
        compiled = where.compile(dialect=dialect)
        sql = str(compiled)
        assert "DROP" not in sql and "OR 1=1" not in sql and "SELECT 1" not in sql and "'1'='1" not in sql
        assert quoted[1:-1] in [v for v in compiled.params.values() if isinstance(v, str)] or any(
            quoted[1:-1] in (v if isinstance(v, list) else []) for v in compiled.params.values()
        )


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=120))
def test_any_text_parses_or_is_a_sentence(text: str) -> None:
    try:
        segments.compile_where(text, NOW)
    except segments.ExpressionProblem as exc:
        assert exc.sentence and "\n" not in exc.sentence


async def test_a_segment_narrows_the_audience_in_the_database(make_bot, smtp) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    bot = await make_bot()
    reply = await bot.say(
        SENDER, '/segment new dach customers --where \'country in ("DE", "AT") and not clicked_within(90d)\''
    )
    assert "matches 2 contacts now" in reply and "lena@example.com, kim@example.org" in reply, reply
    hostile = "/segment new evil customers --where \"plan = 'x'; DROP TABLE contacts; --'\""
    assert "not part of the expression language" in await bot.say(SENDER, hostile)
    assert "column" in await bot.say(
        SENDER, "/campaign new x --to customers --template welcome --where 'country = '"
    )
    async with bot.app.ctx.sessions() as s:
        assert (await s.execute(select(func.count()).select_from(Contact))).scalar_one() == 4  # table intact

    reply = await bot.say(SENDER, "/campaign new spring --to dach --template welcome")
    assert "list customers where" in reply and "The segment matches 2 contacts now" in reply, reply
    async with bot.app.ctx.sessions() as s:
        campaign = (await s.execute(select(Campaign).where(Campaign.name == "spring"))).scalar_one()
    before = content_hash(campaign, "digest")
    campaign.audience_where = "country = 'DE'"
    assert content_hash(campaign, "digest") != before  # the expression is part of what is approved

    assert "Submitted" in await bot.say(SENDER, "/campaign submit spring")
    assert "approval request is void" in await bot.say(
        SENDER, "/campaign edit spring --where \"country = 'DE'\""
    )
    assert "is a draft and waits for nobody's approval" in await bot.say(APPROVER, "/approve spring")
    assert "Submitted" in await bot.say(SENDER, "/campaign submit spring")
    await bot.say(APPROVER, "/approve spring")
    await bot.settle()
    async with bot.app.ctx.sessions() as s:
        assert set((await s.execute(select(Delivery.email))).scalars()) == {"lena@example.com"}
        lena = (await s.execute(select(Delivery).where(Delivery.email == "lena@example.com"))).scalar_one()
        s.add(CampaignEvent(campaign_id=lena.campaign_id, delivery_id=lena.id, email_hash="h", kind="click"))
        await s.commit()
    reply = await bot.say(SENDER, "/segment show dach")
    assert "matches 1 contact now" in reply and "kim@example.org" in reply, reply  # Lena clicked since
    reply = await bot.say(
        SENDER, "/segment new clickers customers --where 'clicked_count >= 1 and signed_up_within(3650d)'"
    )
    assert "matches 1 contact now" in reply and "lena@example.com" in reply, reply


async def test_a_number_no_database_can_bind_is_refused_before_anything_is_stored(make_bot, smtp) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    bot = await make_bot()
    reply = await bot.say(
        SENDER, "/segment new big customers --where 'opened_count >= 99999999999999999999999999999'"
    )
    assert "a number outside" in reply and "Traceback" not in reply, reply
    reply = await bot.say(
        SENDER,
        "/campaign new huge --to customers --template welcome --where 'opened_count >= 9223372036854775808'",
    )
    assert "a number outside" in reply, reply
    reply = await bot.say(SENDER, "/segment new nots customers --where '" + "not " * 240 + 'plan = "pro"\'')
    assert "more than 10 levels" in reply, reply
    async with bot.app.ctx.sessions() as s:
        assert (await s.execute(select(func.count()).select_from(Segment))).scalar_one() == 0
        assert (await s.execute(select(func.count()).select_from(Campaign))).scalar_one() == 0
        s.add(  # stored before the bound existed: shown with a sentence, not a crash
            Segment(
                name="old",
                list_name="customers",
                expression="opened_count >= 99999999999999999999",
                created_by=SENDER,
            )
        )
        await s.commit()
    reply = await bot.say(SENDER, "/segment show old")
    assert "a number outside" in reply, reply
    reply = await bot.say(
        SENDER, "/segment new fine customers --where 'opened_count >= 1000000000 or sent_count < -1000000000'"
    )
    assert "matches nobody on the list now" in reply, reply


async def test_edit_where_narrows_the_campaigns_segment_and_to_starts_over(make_bot) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    from bot.commands.campaigns import EDIT

    bot = await make_bot()
    assert "narrow" in next(f.help for f in EDIT.flags if f.name == "where")
    await bot.say(SENDER, '/segment new dach customers --where \'country in ("DE", "AT")\'')
    await bot.say(SENDER, "/campaign new spring --to dach --template welcome")
    reply = await bot.say(SENDER, "/campaign edit spring --where \"plan = 'free'\"")
    assert "Updated “spring” (--where)." in reply, reply
    async with bot.app.ctx.sessions() as s:
        campaign = (await s.execute(select(Campaign).where(Campaign.name == "spring"))).scalar_one()
    # Raj is on the free plan but in India: narrowing the DACH segment leaves nobody, not Raj.
    assert campaign.audience_where == '(country in ("DE", "AT")) and (plan = \'free\')'
    await bot.say(SENDER, "/campaign edit spring --where \"country = 'DE'\"")
    async with bot.app.ctx.sessions() as s:
        campaign = (await s.execute(select(Campaign).where(Campaign.name == "spring"))).scalar_one()
    assert (
        campaign.audience_where == "((country in (\"DE\", \"AT\")) and (plan = 'free')) and (country = 'DE')"
    )
    await bot.say(SENDER, "/campaign edit spring --to customers --where \"plan = 'free'\"")  # starts over
    async with bot.app.ctx.sessions() as s:
        campaign = (await s.execute(select(Campaign).where(Campaign.name == "spring"))).scalar_one()
    assert campaign.audience_name == "customers" and campaign.audience_where == "plan = 'free'"


async def test_a_field_no_contact_has_is_refused_naming_the_closest(make_bot) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    bot = await make_bot()
    reply = await bot.say(SENDER, "/segment new dach customers --where \"contry = 'DE'\"")
    assert "“contry”, which no contact on “customers” has — did you mean “country”?" in reply, reply
    assert "column 1" in reply and "plan" in reply and "renewal_date" in reply, reply
    reply = await bot.say(
        SENDER, "/campaign new spring --to customers --template welcome --where \"pln = 'pro'\""
    )
    assert "did you mean “plan”?" in reply, reply
    reply = await bot.say(SENDER, '/campaign new spring --to customers --template welcome --where "zzzq = 1"')
    assert "“zzzq”, which no contact on “customers” has. Fields:" in reply, reply
    async with bot.app.ctx.sessions() as s:
        assert (await s.execute(select(func.count()).select_from(Segment))).scalar_one() == 0
        assert (await s.execute(select(func.count()).select_from(Campaign))).scalar_one() == 0
    assert "matches" in await bot.say(SENDER, "/segment new dach customers --where \"country = 'DE'\"")
    reply = await bot.say(SENDER, "/segment edit dach --where \"Country = 'DE'\"")
    assert "did you mean “country”?" in reply, reply


async def test_segment_names_are_one_in_any_case_and_a_near_miss_names_the_segment(make_bot) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    bot = await make_bot()
    assert "matches" in await bot.say(SENDER, "/segment new dach customers --where \"country = 'DE'\"")
    again = await bot.say(SENDER, "/segment new Dach customers --where \"country = 'AT'\"")
    assert "already exists" in again, again
    assert "country = 'DE'" in await bot.say(SENDER, "/segment show DACH")
    reply = await bot.say(SENDER, "/campaign new c4 --to Dach --template welcome")
    assert "The segment matches" in reply, reply
    reply = await bot.say(SENDER, "/campaign new c5 --to dahc --template welcome")
    assert "segment" in reply and "did you mean segment “dach”?" in reply, reply


async def test_a_segments_count_leaves_out_suppressed_contacts_and_says_how_many(make_bot) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    from bot.addresses import email_hash
    from bot.db.models import Suppression

    bot = await make_bot()
    async with bot.app.ctx.sessions() as s, s.begin():
        s.add(
            Suppression(
                email_hash=email_hash("lena@example.com"), email="lena@example.com", reason="unsubscribed"
            )
        )
    reply = await bot.say(SENDER, '/segment new dach customers --where \'country in ("DE", "AT")\'')
    assert "matches 1 contact now" in reply and "kim@example.org" in reply, reply
    assert "lena@example.com" not in reply and "1 more is suppressed" in reply, reply
