"""Each provider's client against its platform: the fakes of Google's, Microsoft's and WeCom's documented
APIs (paging, 429 with Retry-After, a quota error, a partial failure, an expired token), and a real
slapd and a real Mailman 3 core."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.config import load_settings
from bot.groups.providers.base import GroupMissing, GroupRefused, RemoteMember
from bot.groups.providers.registry import Providers
from tests.provider_rig import Slapd, google_platform, graph_platform, mailman, slapd, wecom_platform  # noqa: F401


def providers(**sections: dict) -> Providers:
    return Providers(
        load_settings(
            read_file=False,
            read_env=False,
            org={"domains": ["corp.example"]},
            providers={"max_inline_wait_s": 3, **sections},
        )
    )


async def test_google_pages_roles_throttling_quota_and_token_expiry(tmp_path: Path) -> None:
    async with google_platform(tmp_path) as g:
        g.fake.page_size = 2
        g.fake.add_group("eng@corp.example", {"ann@corp.example": "owner", "bob@corp.example": "manager"})
        g.fake.add_group("all@corp.example", {f"p{i}@corp.example": "member" for i in range(5)})
        p = providers(google=g.settings)
        google = p.get("google")
        try:
            assert {x.address for x in await google.list_groups()} == {"eng@corp.example", "all@corp.example"}
            assert len(await google.members("all@corp.example")) == 5  # three pages of two
            roles = {m.email: m.role for m in await google.members("eng@corp.example")}
            assert roles == {"ann@corp.example": "owner", "bob@corp.example": "manager"}

            g.fake.faults.throttle = 1  # 429, Retry-After: 1 — waited out inline
            g.fake.quota_errors = 1  # 403 userRateLimitExceeded — backed off
            out = await google.add(
                "eng@corp.example", [RemoteMember("cy@corp.example"), RemoteMember("bob@corp.example")]
            )
            assert out.done == {"cy@corp.example", "bob@corp.example"}
            assert g.fake.members_of("eng@corp.example")["bob@corp.example"] == "manager"  # never demoted

            g.fake.expire_tokens()
            before = g.fake.token_requests
            g.fake.faults.fail["dee@corp.example"] = 9  # a partial failure: one address fails, one lands
            out = await google.add(
                "eng@corp.example", [RemoteMember("dee@corp.example"), RemoteMember("eve@corp.example")]
            )
            assert out.done == {"eve@corp.example"} and "dee@corp.example" in out.retry
            assert g.fake.token_requests == before + 1  # the expired token was fetched again once

            out = await google.add("eng@corp.example", [RemoteMember("x@partner.example")])
            assert "allowExternalMembers" in out.refused["x@partner.example"]
            assert "x@partner.example" not in g.fake.members_of("eng@corp.example")

            out = await google.remove("eng@corp.example", ["cy@corp.example", "nobody@corp.example"])
            assert out.done == {"cy@corp.example", "nobody@corp.example"}
            g.fake.faults.throttle, g.fake.faults.retry_after = 1, "120"  # longer than we wait inline
            out = await google.remove("eng@corp.example", ["eve@corp.example"])
            assert "eve@corp.example" in out.retry and out.retry_after_s == 120
            assert "reads groups" in await google.check()
        finally:
            await p.aclose()


async def test_graph_batches_pages_and_refuses_distribution_lists(tmp_path: Path) -> None:
    async with graph_platform(tmp_path) as m:
        fake = m.fake
        fake.page_size = 3
        people = [f"p{i}@corp.example" for i in range(45)]
        for e in people:
            fake.user(e)
        fake.add_group("eng@corp.example", people[:7])
        fake.add_group("dl@corp.example", people[:2], kind="distribution")
        fake.add_group("sec@corp.example", people[:2], kind="mail-security")
        p = providers(microsoft=m.settings)
        graph = p.get("microsoft")
        try:
            assert len(await graph.members("eng@corp.example")) == 7  # three pages
            fake.batch_throttle = 2  # two requests inside a batch answer 429 with Retry-After: 1
            calls = fake.calls
            out = await graph.add("eng@corp.example", [RemoteMember(e) for e in people])
            assert out.done == set(people)  # the seven already there count as done
            assert fake.members_of("eng@corp.example") == set(people)
            # 45 look-ups and 45 adds, twenty to a $batch: 3 + 3 batches (plus the throttled retried).
            assert fake.calls - calls <= 8
            out = await graph.add("eng@corp.example", [RemoteMember("ghost@corp.example")])
            assert "not a user" in out.refused["ghost@corp.example"]
            fake.expire_tokens()
            fake.faults.fail["p1@corp.example"] = 1
            out = await graph.remove("eng@corp.example", ["p0@corp.example", "p1@corp.example"])
            assert out.done == {"p0@corp.example"} and "p1@corp.example" in out.retry
            for address, kind in (
                ("dl@corp.example", "distribution list"),
                ("sec@corp.example", "mail-enabled security group"),
            ):
                with pytest.raises(GroupRefused, match=kind):
                    await graph.members(address)
            assert fake.token_requests == 2  # one token, fetched again once after it expired
        finally:
            await p.aclose()


async def test_wecom_writes_the_whole_list_and_refreshes_its_token(tmp_path: Path) -> None:
    async with wecom_platform(tmp_path) as w:
        w.fake.add_group("eng@corp.example", ["ann@corp.example"], departments=[3])
        p = providers(wecom=w.settings)
        wecom = p.get("wecom")
        try:
            assert wecom.whole_list_writes
            await wecom.set_members(
                "eng@corp.example", [RemoteMember("ann@corp.example"), RemoteMember("bob@corp.example")]
            )
            assert w.fake.members_of("eng@corp.example") == {"ann@corp.example", "bob@corp.example"}
            assert "department_list" not in w.fake.writes[-1]  # departments stay as the admin set them
            w.fake.expire_tokens()
            assert {m.email for m in await wecom.members("eng@corp.example")} == {
                "ann@corp.example",
                "bob@corp.example",
            }
            assert w.fake.token_requests == 2
            with pytest.raises(GroupMissing):
                await wecom.members("nope@corp.example")
            await wecom.create_group("new@corp.example", "New", False, [RemoteMember("ann@corp.example")])
            assert w.fake.members_of("new@corp.example") == {"ann@corp.example"}
        finally:
            await p.aclose()


@pytest.mark.parametrize("schema", ["groupOfNames", "groupOfUniqueNames", "mail-attribute"])
async def test_ldap_groups_against_slapd(slapd: Slapd, schema: str) -> None:  # noqa: F811
    tag = schema.lower().replace("-", "")
    slapd.ldif(
        "".join(
            f"dn: uid={tag}{i},ou=people,dc=corp,dc=example\nobjectClass: inetOrgPerson\nuid: {tag}{i}\ncn: P {i}\n"
            f"sn: P\nmail: {tag}{i}@corp.example\n\n"
            for i in range(3)
        )
    )
    p = providers(ldap=Slapd.settings(slapd, schema=schema))
    ldap = p.get("ldap")
    address = f"{tag}@corp.example"
    try:
        await ldap.create_group(address, tag, False, [RemoteMember(f"{tag}0@corp.example")])
        out = await ldap.add(
            address, [RemoteMember(f"{tag}1@corp.example"), RemoteMember(f"{tag}0@corp.example")]
        )
        assert out.done == {f"{tag}0@corp.example", f"{tag}1@corp.example"}
        out = await ldap.add(address, [RemoteMember("stranger@corp.example")])
        if schema != "mail-attribute":
            assert "No LDAP entry" in out.refused["stranger@corp.example"]
            assert address in {g.address for g in await ldap.list_groups()}
        else:
            await ldap.remove(address, ["stranger@corp.example"])
        assert {m.email for m in await ldap.members(address)} == {
            f"{tag}0@corp.example",
            f"{tag}1@corp.example",
        }
        await ldap.remove(address, [f"{tag}0@corp.example", f"{tag}1@corp.example"])  # the last one too
        assert await ldap.members(address) == []
        assert "binds as" in await ldap.check()
    finally:
        await p.aclose()


async def test_mailman_lists_against_a_real_core(mailman) -> None:  # noqa: F811
    p = providers(mailman=mailman.settings())
    mm = p.get("mailman")
    try:
        await mm.create_group(
            "staff@corp.example", "Staff", False, [RemoteMember("ann@corp.example", "owner")]
        )
        out = await mm.add(
            "staff@corp.example", [RemoteMember("bob@corp.example"), RemoteMember("bob@corp.example")]
        )
        assert out.done == {"bob@corp.example"}
        roles = {m.email: m.role for m in await mm.members("staff@corp.example")}
        assert roles == {"ann@corp.example": "owner", "bob@corp.example": "member"}
        with mailman.client() as c:  # pre-verified, pre-confirmed, pre-approved: a member at once
            assert c.get("/lists/staff.corp.example/member/bob@corp.example").status_code == 200
        out = await mm.remove("staff@corp.example", ["bob@corp.example", "nobody@corp.example"])
        assert out.done == {"bob@corp.example", "nobody@corp.example"}
        assert {m.email for m in await mm.members("staff@corp.example")} == {"ann@corp.example"}
        assert "staff@corp.example" in {g.address for g in await mm.list_groups()}
        with pytest.raises(GroupMissing):
            await mm.members("nolist@corp.example")
        assert "Mailman" in await mm.check()
    finally:
        await p.aclose()
