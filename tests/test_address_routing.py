"""Security tryout: an address whose local part routes mail elsewhere (x%gmail.com@corp.example, the
percent hack Postfix honours) or a subdomain nobody listed is never a company address, so it never enters
an internal group — by /addgroup, the rules file, or HR."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from bot.config import Settings
from bot.db.models import Membership
from tests.conftest import HR

ROUTED = [
    "x%gmail.com@corp.example",
    "x!gmail.com@corp.example",
    "gmail.com!x@corp.example",
    "@relay.example:x@corp.example",
    '"x@gmail.com"@corp.example',
    '"x"@corp.example',
]


def org(*domains: str) -> Settings:
    return Settings.model_validate(
        {"org": {"name": "Example Corp", "domains": list(domains), "postal_address": "1 Example Street"}}
    )


@pytest.mark.parametrize("address", ROUTED)
def test_a_local_part_that_routes_elsewhere_is_never_internal(address: str) -> None:
    assert not org("corp.example").is_internal(address)


def test_internal_is_an_exact_listed_domain() -> None:
    settings = org("corp.example")
    assert settings.is_internal("alice@corp.example")
    assert settings.is_internal("Alice.B+tag@Corp.Example")
    assert not settings.is_internal("alice@eu.corp.example")  # a subdomain nobody listed
    assert not settings.is_internal("alice@corp.example.")
    assert not settings.is_internal("alice@evilcorp.example")
    assert not settings.is_internal("corp.example")
    assert org("corp.example", "eu.corp.example").is_internal("alice@eu.corp.example")


async def members(bot) -> int:  # type: ignore[no-untyped-def]
    async with bot.core.ctx.sessions() as s:
        return (await s.execute(select(func.count()).select_from(Membership))).scalar_one()


@pytest.mark.parametrize("address", ["x%gmail.com@corp.example", "x!gmail.com@corp.example"])
async def test_addgroup_refuses_a_percent_hack_address_with_a_sentence(bot, address: str) -> None:  # type: ignore[no-untyped-def]
    await bot.say(HR, "/newgroup eng")
    reply = await bot.say(HR, f"/addgroup eng {address} --unknown-ok")
    assert f"{address} is not a company address" in reply, reply
    assert "pass it on to another domain" in reply and "Traceback" not in reply
    assert await members(bot) == 0


async def test_addgroup_refuses_an_unlisted_subdomain(bot) -> None:  # type: ignore[no-untyped-def]
    await bot.say(HR, "/newgroup eng")
    reply = await bot.say(HR, "/addgroup eng x@mail.corp.example --unknown-ok")
    assert "x@mail.corp.example is outside corp.example" in reply, reply
    assert await members(bot) == 0


def test_the_rules_file_refuses_a_percent_hack_owner() -> None:
    from bot.groups.rules import RulesError, parse_rules

    text = "groups:\n  - address: eng\n    owners: [x%gmail.com@corp.example]\n"
    with pytest.raises(RulesError) as caught:
        parse_rules(text, org("corp.example"), "r.yaml")
    assert "x%gmail.com@corp.example is not a company address" in caught.value.sentence
    assert caught.value.sentence.startswith("r.yaml, line 3: ")


@pytest.fixture
async def lbot(database_url, smtp, tmp_path):  # type: ignore[no-untyped-def]
    from tests.lifecycle_kit import lifecycle_bot

    async for b in lifecycle_bot(database_url, smtp.port, tmp_path):
        yield b


async def test_an_hr_file_with_a_percent_hack_address_imports_nothing(lbot, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from bot.errors import UserError
    from bot.hr.importer import import_staff

    staff = tmp_path / "staff.csv"
    staff.write_text(
        "employee_id,email,name,department,location\n"
        "E1,alice@corp.example,Alice,Engineering,Berlin\n"
        "E2,x%gmail.com@corp.example,Mallory,Engineering,Berlin\n"
    )
    with pytest.raises(UserError) as caught:
        await import_staff(lbot.app.lifecycle, staff)
    assert "x%gmail.com@corp.example is not a company address" in caught.value.sentence
    assert "nothing was imported" in caught.value.sentence
    assert await members(lbot) == 0
