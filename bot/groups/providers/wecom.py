"""WeCom mail groups (企业微信 邮件群组) through `cgi-bin/exmail/group/{create,update,get,search,delete}`, with
the access-token handling the WeCom adapter uses (bot/tokens.py: cached, fetched again once after an
invalid-token answer).

`update` replaces the whole `email_list` (a list sent empty clears it, an absent one stays), so the
outbox hands this provider the full desired list, computed from Postroom's database at the moment
of the write (`whole_list_writes`). Departments, tags and nested groups in a WeCom group are not
individual addresses: Postroom never sends those keys, so they stay as the admin set them.
"""

from __future__ import annotations

from typing import Any

from bot.config import WeComMailProviderSettings
from bot.groups.providers.base import (
    GroupMissing,
    Provider,
    ProviderError,
    Refused,
    RemoteGroup,
    RemoteMember,
    RetryLater,
)
from bot.groups.providers.http import ApiClient
from bot.tokens import StaleToken, TokenCache

TOKEN_ERRORS = (40014, 42001, 40001)  # invalid token, expired token, invalid credential
BUSY = (-1, 45009, 45033)  # system busy, call frequency over the limit, too many concurrent calls


class WeComMailGroups(Provider):
    name = "wecom"
    label = "WeCom mail"
    whole_list_writes = True

    def __init__(
        self, settings: WeComMailProviderSettings, *, corp_id: str, api_url: str, max_inline_wait_s: float
    ):
        self.settings = settings
        self.corp_id = corp_id
        self.api = ApiClient(
            "WeCom", api_url, timeout_s=settings.timeout_s, max_inline_wait_s=max_inline_wait_s
        )
        self._tokens = TokenCache(self._fetch_token)

    @property
    def calls(self) -> int:
        return self.api.calls

    @property
    def token_fetches(self) -> int:
        return self._tokens.fetches

    async def aclose(self) -> None:
        await self.api.aclose()

    async def _fetch_token(self) -> tuple[str, float]:
        r = await self.api.request(
            "GET", "/cgi-bin/gettoken", params={"corpid": self.corp_id, "corpsecret": self.settings.secret}
        )
        data = r.json()
        if data.get("errcode", 0) != 0 or not data.get("access_token"):
            raise RetryLater(
                f"WeCom refused the mail app's secret ({data.get('errcode')}: {data.get('errmsg')}): check "
                "[providers.wecom] (manifests/wecom/README.md)."
            )
        return str(data["access_token"]), float(data.get("expires_in", 7200))

    async def call(
        self, method: str, path: str, *, params: dict[str, Any] | None = None, json: Any = None
    ) -> dict[str, Any]:
        async def attempt(token: str) -> dict[str, Any]:
            r = await self.api.request(
                method, path, params={**(params or {}), "access_token": token}, json=json
            )
            try:
                data: dict[str, Any] = r.json()
            except ValueError:
                raise RetryLater(f"WeCom answered {path} with something that is not JSON.") from None
            code = int(data.get("errcode", 0))
            if code in TOKEN_ERRORS:
                raise StaleToken(RetryLater(f"WeCom keeps refusing the access token ({code})."))
            if code in BUSY:
                raise RetryLater(
                    f"WeCom is busy or limiting calls ({code}: {data.get('errmsg')}).", after_s=60
                )
            if code != 0:
                raise Refused(f"WeCom refused {path.rsplit('/', 1)[-1]} ({code}: {data.get('errmsg')}).")
            return data

        return await self._tokens.call(attempt)

    async def _search(self, groupid: str, fuzzy: int) -> list[dict[str, Any]]:
        data = await self.call(
            "GET", "/cgi-bin/exmail/group/search", params={"fuzzy": fuzzy, "groupid": groupid}
        )
        return list(data.get("groups") or [])

    async def list_groups(self) -> list[RemoteGroup]:
        found = []
        for g in await self._search("", 1):
            found.append(RemoteGroup(str(g["groupid"]).lower(), g.get("groupname"), None))
        return found

    async def members(self, address: str) -> list[RemoteMember]:
        if not await self._search(address, 0):
            raise GroupMissing(f"{address} is not a WeCom mail group.")
        data = await self.call("GET", "/cgi-bin/exmail/group/get", params={"groupid": address})
        return [RemoteMember(str(e).lower()) for e in (data.get("email_list") or {}).get("list", [])]

    async def set_members(self, address: str, members: list[RemoteMember]) -> None:
        if not members:
            group = await self.call("GET", "/cgi-bin/exmail/group/get", params={"groupid": address})
            others = any(
                (group.get(k) or {}).get("list") for k in ("department_list", "tag_list", "group_list")
            )
            if not others:
                # WeCom keeps no group without members: the last one leaving deletes it (the next member
                # added creates it again).
                await self.call("POST", "/cgi-bin/exmail/group/delete", json={"groupid": address})
                return
        await self.call(
            "POST",
            "/cgi-bin/exmail/group/update",
            json={"groupid": address, "email_list": {"list": [m.email for m in members]}},
        )

    async def create_group(
        self, address: str, name: str | None, external_allowed: bool, first: list[RemoteMember]
    ) -> None:
        if await self._search(address, 0):
            if first:
                await self.set_members(address, first)
            return
        if not first:
            return  # WeCom creates a group only with a member: the first /addgroup creates it (the outbox)
        await self.call(
            "POST",
            "/cgi-bin/exmail/group/create",
            json={
                "groupid": address,
                "groupname": name or address.split("@", 1)[0],
                "email_list": {"list": [m.email for m in first]},
                "allow_type": 1 if external_allowed else 0,
            },
        )

    async def check(self) -> str:
        try:
            groups = await self._search("", 1)
        except ProviderError:
            raise
        return f"reads mail groups ({len(groups)} found) with the mail app's token"
