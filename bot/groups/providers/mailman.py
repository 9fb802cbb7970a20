"""Mailman 3 lists through its REST API (the core's, with the REST admin user): a company keeps its
archives and moderation, and Postroom runs the lifecycle.

Subscriptions are made pre-verified, pre-confirmed and pre-approved (HR decided; nobody is mailed a
confirmation), unsubscriptions pre-confirmed and pre-approved; the roster is read page by page. A
group's address is the list's posting address; roles map to Mailman's (member, moderator, owner).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx

from bot.config import MailmanProviderSettings
from bot.groups.providers.base import (
    GroupMissing,
    Provider,
    Refused,
    RemoteGroup,
    RemoteMember,
    RetryLater,
)
from bot.groups.providers.http import ApiClient

TO_MAILMAN = {"member": "member", "manager": "moderator", "owner": "owner"}
FROM_MAILMAN = {v: k for k, v in TO_MAILMAN.items()}
PAGE = 200


def list_id(address: str) -> str:
    return address.replace("@", ".", 1)


class MailmanLists(Provider):
    name = "mailman"
    label = "Mailman"

    def __init__(self, settings: MailmanProviderSettings, *, max_inline_wait_s: float):
        self.settings = settings
        self.api = ApiClient(
            "Mailman",
            settings.api_url,
            timeout_s=settings.timeout_s,
            max_inline_wait_s=max_inline_wait_s,
            auth=httpx.BasicAuth(settings.user, settings.password),
        )

    @property
    def calls(self) -> int:
        return self.api.calls

    async def aclose(self) -> None:
        await self.api.aclose()

    async def _pages(self, path: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        page = 1
        while True:
            r = await self.api.request("GET", path, params={"count": PAGE, "page": page})
            if r.status_code == 404:
                raise GroupMissing(f"{path} is not in Mailman.")
            self._raise(r)
            data = r.json()
            entries = data.get("entries", [])
            found += entries
            if len(found) >= int(data.get("total_size", 0)) or not entries:
                return found
            page += 1

    async def list_groups(self) -> list[RemoteGroup]:
        return [
            RemoteGroup(str(e["fqdn_listname"]).lower(), e.get("display_name"), None)
            for e in await self._pages("/lists")
        ]

    async def members(self, address: str) -> list[RemoteMember]:
        found: dict[str, str] = {}
        rank = {"member": 0, "manager": 1, "owner": 2}
        for mailman_role in ("member", "moderator", "owner"):
            try:
                entries = await self._pages(f"/lists/{list_id(address)}/roster/{mailman_role}")
            except GroupMissing:
                raise GroupMissing(f"{address} is not a Mailman list.") from None
            role = FROM_MAILMAN[mailman_role]
            for e in entries:
                email = str(e.get("email", "")).lower()
                if email and rank[role] >= rank.get(found.get(email, "member"), 0):
                    found[email] = role
        return [RemoteMember(e, r) for e, r in sorted(found.items())]

    async def add_one(self, address: str, member: RemoteMember) -> None:
        r = await self.api.request(
            "POST",
            "/members",
            json={
                "list_id": list_id(address),
                "subscriber": member.email,
                "role": TO_MAILMAN.get(member.role, "member"),
                "pre_verified": True,
                "pre_confirmed": True,
                "pre_approved": True,
            },
        )
        if r.status_code == 409:  # a member already
            return
        if r.status_code == 400 and "No such list" in r.text:
            raise GroupMissing(f"{address} is not a Mailman list.")
        if r.status_code == 400:
            raise Refused(f"Mailman refused {member.email}: {r.text[:200]}.")
        self._raise(r)

    async def remove_one(self, address: str, email: str) -> None:
        r = await self.api.request("GET", f"/lists/{list_id(address)}/member/{quote(email, safe='@')}")
        if r.status_code == 404:
            return  # not a member (or no such list)
        self._raise(r)
        member = r.json()
        link = str(member.get("self_link", ""))
        path = "/members/" + str(member.get("member_id")) if member.get("member_id") else link
        r = await self.api.request("DELETE", path, params={"pre_approved": True, "pre_confirmed": True})
        if r.status_code not in (200, 202, 204, 404):
            self._raise(r)

    async def create_group(
        self, address: str, name: str | None, external_allowed: bool, first: list[RemoteMember]
    ) -> None:
        domain = address.split("@", 1)[1]
        r = await self.api.request("GET", f"/domains/{domain}")
        if r.status_code == 404:
            r = await self.api.request("POST", "/domains", json={"mail_host": domain})
            self._raise(r)
        r = await self.api.request("POST", "/lists", json={"fqdn_listname": address})
        if r.status_code not in (201, 400) or (r.status_code == 400 and "already exists" not in r.text):
            self._raise(r)
        for m in first:
            await self.add_one(address, m)

    async def check(self) -> str:
        r = await self.api.request("GET", "/system/versions")
        self._raise(r)
        return f"reaches {r.json().get('mailman_version', 'Mailman')} with the REST user {self.settings.user}"

    def _raise(self, r: httpx.Response) -> None:
        if r.status_code < 400:
            return
        if r.status_code == 401:
            raise RetryLater("Mailman refused the REST user and password: check [providers.mailman].")
        raise RetryLater(f"Mailman answered HTTP {r.status_code} ({r.text[:200]}).")
