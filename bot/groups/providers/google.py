"""Google Workspace groups through the Admin SDK Directory API, as a service account acting for an
admin (domain-wide delegation). google-auth signs the token request; the calls are plain httpx.

Members are listed page by page (`nextPageToken`), inserted with their role (OWNER, MANAGER, MEMBER:
an existing member's role is left alone, so a sync never demotes a manager), deleted by address.
An external address is added only where the group's `allowExternalMembers` (Groups Settings API) says
so; quota errors (403 `userRateLimitExceeded`, `quotaExceeded`, 429 `rateLimitExceeded`) are backed off.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from bot.config import GoogleProviderSettings, internal_address
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
from bot.tokens import TokenCache

SCOPES = (
    "https://www.googleapis.com/auth/admin.directory.group.member",
    "https://www.googleapis.com/auth/admin.directory.group",
    "https://www.googleapis.com/auth/apps.groups.settings",
)
QUOTA_REASONS = {"userRateLimitExceeded", "quotaExceeded", "rateLimitExceeded"}
TO_GOOGLE = {"member": "MEMBER", "manager": "MANAGER", "owner": "OWNER"}
FROM_GOOGLE = {v: k for k, v in TO_GOOGLE.items()}


def _reasons(response: httpx.Response) -> set[str]:
    try:
        errors = response.json().get("error", {}).get("errors", [])
    except ValueError:
        return set()
    return {str(e.get("reason", "")) for e in errors if isinstance(e, dict)}


def _message(response: httpx.Response) -> str:
    try:
        return str(response.json().get("error", {}).get("message", ""))[:200]
    except ValueError:
        return ""


def _quota(response: httpx.Response) -> bool:
    return response.status_code == 403 and bool(_reasons(response) & QUOTA_REASONS)


class GoogleGroups(Provider):
    name = "google"
    label = "Google Workspace"

    def __init__(self, settings: GoogleProviderSettings, *, max_inline_wait_s: float, domains: list[str]):
        self.settings = settings
        self.domains = domains
        try:
            self._key: dict[str, Any] = json.loads(Path(settings.service_account_file).read_text("utf-8"))
        except (OSError, ValueError) as exc:
            raise ProviderError(
                f"The Google service account key {settings.service_account_file} can't be read ({exc})."
            ) from None
        self._tokens = TokenCache(self._fetch_token, margin_s=60)
        self._token_http = httpx.AsyncClient(timeout=settings.timeout_s)
        self.api = ApiClient(
            "Google Workspace",
            settings.api_url,
            setting="providers.google.api_url",
            timeout_s=settings.timeout_s,
            max_inline_wait_s=max_inline_wait_s,
            token=self._token,
            quota_error=_quota,
        )
        self._external_allowed: dict[str, bool] = {}

    @property
    def calls(self) -> int:
        return self.api.calls

    async def aclose(self) -> None:
        await self.api.aclose()
        await self._token_http.aclose()

    # -- the token: a JWT signed with the service account's key, for the delegated admin ----------
    async def _token(self, fresh: bool) -> str:
        if fresh and self._tokens.current:
            self._tokens.forget(self._tokens.current)
        return await self._tokens.get()

    async def _fetch_token(self) -> tuple[str, float]:
        from google.auth import crypt, jwt

        key = self._key
        token_uri = key.get("token_uri") or "https://oauth2.googleapis.com/token"
        issued = int(time.time())
        claims = {
            "iss": key.get("client_email"),
            "sub": self.settings.delegated_admin,
            "scope": " ".join(SCOPES),
            "aud": token_uri,
            "iat": issued,
            "exp": issued + 3600,
        }
        try:
            assertion = jwt.encode(crypt.RSASigner.from_service_account_info(key), claims)
        except (ValueError, KeyError) as exc:
            raise ProviderError(f"The Google service account key can't sign a token ({exc}).") from None
        self.api.calls += 1
        try:
            response = await self._token_http.post(
                token_uri,
                data={
                    "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
                    "assertion": assertion.decode() if isinstance(assertion, bytes) else assertion,
                },
            )
        except httpx.HTTPError as exc:
            raise RetryLater(f"Google's token service did not answer ({type(exc).__name__}).") from None
        if response.status_code != 200:
            try:
                why = response.json().get("error_description") or response.json().get("error")
            except ValueError:
                why = f"HTTP {response.status_code}"
            raise RetryLater(
                f"Google refused the service account's token request ({why}): check domain-wide delegation "
                "and the scopes (manifests/google/README.md)."
            )
        data = response.json()
        return str(data["access_token"]), float(data.get("expires_in", 3600))

    # -- reading ---------------------------------------------------------------------------------
    def _group_path(self, address: str) -> str:
        return f"/admin/directory/v1/groups/{quote(address, safe='@')}"

    async def list_groups(self) -> list[RemoteGroup]:
        found: list[RemoteGroup] = []
        token: str | None = None
        while True:
            params: dict[str, Any] = {"customer": "my_customer", "maxResults": 200}
            if token:
                params["pageToken"] = token
            r = await self.api.request("GET", "/admin/directory/v1/groups", params=params)
            self._raise(r, "")
            data = r.json()
            for g in data.get("groups", []):
                address = str(g["email"]).lower()
                try:
                    allowed = await self.external_allowed(address)
                except GroupMissing:
                    allowed = False  # deleted since the listing: reading its members says so, for it alone
                found.append(RemoteGroup(address, g.get("name"), allowed))
            token = data.get("nextPageToken")
            if not token:
                return found

    async def members(self, address: str) -> list[RemoteMember]:
        found: list[RemoteMember] = []
        token: str | None = None
        while True:
            params: dict[str, Any] = {"maxResults": 200}
            if token:
                params["pageToken"] = token
            r = await self.api.request("GET", self._group_path(address) + "/members", params=params)
            if r.status_code == 404:
                raise GroupMissing(f"{address} is not a group in Google Workspace.")
            self._raise(r, address)
            data = r.json()
            for m in data.get("members", []):
                if m.get("email"):
                    found.append(
                        RemoteMember(str(m["email"]).lower(), FROM_GOOGLE.get(m.get("role"), "member"))
                    )
            token = data.get("nextPageToken")
            if not token:
                return found

    async def external_allowed(self, address: str) -> bool:
        if address not in self._external_allowed:
            r = await self.api.request(
                "GET",
                f"{self.settings.settings_api_url}/groups/{quote(address, safe='@')}",
                params={"alt": "json"},
            )
            if r.status_code == 404:
                raise GroupMissing(f"{address} is not a group in Google Workspace.")
            self._raise(r, address)
            self._external_allowed[address] = (
                str(r.json().get("allowExternalMembers", "false")).lower() == "true"
            )
        return self._external_allowed[address]

    # -- writing ---------------------------------------------------------------------------------
    async def add_one(self, address: str, member: RemoteMember) -> None:
        outside = not internal_address(member.email, self.domains)
        if outside and not await self.external_allowed(address):
            raise Refused(
                f"{address} does not allow external members in Google Workspace (allowExternalMembers is off)."
            )
        r = await self.api.request(
            "POST",
            self._group_path(address) + "/members",
            json={"email": member.email, "role": TO_GOOGLE.get(member.role, "MEMBER")},
        )
        if r.status_code == 409:  # already a member: its role stays as it is
            return
        if r.status_code == 404 and "groupKey" in _message(r):
            raise GroupMissing(f"{address} is not a group in Google Workspace.")
        if r.status_code in (400, 404, 412):
            raise Refused(f"Google Workspace refused {member.email}: {_message(r) or r.status_code}.")
        self._raise(r, address)

    async def remove_one(self, address: str, email: str) -> None:
        r = await self.api.request("DELETE", self._group_path(address) + f"/members/{quote(email, safe='@')}")
        if r.status_code == 404:  # not a member (or no such group): gone either way
            return
        self._raise(r, address)

    async def create_group(
        self, address: str, name: str | None, external_allowed: bool, first: list[RemoteMember]
    ) -> None:
        r = await self.api.request(
            "POST",
            "/admin/directory/v1/groups",
            json={"email": address, "name": name or address.split("@")[0]},
        )
        if r.status_code != 409:
            self._raise(r, address)
        if external_allowed:
            r = await self.api.request(
                "PATCH",
                f"{self.settings.settings_api_url}/groups/{quote(address, safe='@')}",
                json={"allowExternalMembers": "true"},
            )
            self._raise(r, address)
        self._external_allowed[address] = external_allowed
        for m in first:
            await self.add_one(address, m)

    async def check(self) -> str:
        r = await self.api.request(
            "GET", "/admin/directory/v1/groups", params={"customer": "my_customer", "maxResults": 1}
        )
        self._raise(r, "")
        return f"reads groups as {self.settings.delegated_admin} (domain-wide delegation works)"

    def _raise(self, r: httpx.Response, address: str) -> None:
        if r.status_code < 400:
            return
        why = _message(r) or f"HTTP {r.status_code}"
        if r.status_code == 403:
            raise RetryLater(
                f"Google Workspace refused access ({why}): the service account needs domain-wide delegation with "
                "the admin.directory.group.member scope."
            )
        raise RetryLater(f"Google Workspace answered HTTP {r.status_code} ({why}).")
