"""Microsoft 365 groups through Microsoft Graph, app-only (client credentials; msal fetches the token).

Members are listed page by page (`@odata.nextLink`), added as `$ref`s and removed by `$ref`, twenty
requests to a `$batch` (Graph's limit), each answer read on its own: a 429 inside a batch is retried
after its own `Retry-After`. Graph cannot change distribution lists or mail-enabled security groups
(they are Exchange's): such a group is detected and refused with a sentence, never half-managed.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any
from urllib.parse import quote

from bot.config import MicrosoftProviderSettings
from bot.groups.providers.base import (
    GroupMissing,
    GroupRefused,
    Provider,
    ProviderError,
    Pushed,
    RemoteGroup,
    RemoteMember,
    RetryLater,
)
from bot.groups.providers.http import ApiClient

BATCH = 20  # Graph's limit of requests in one $batch
SCOPE = "https://graph.microsoft.com/.default"


def _cause(exc: BaseException) -> str:
    detail = str(exc).strip()
    return f"{type(exc).__name__}: {detail[:120]}" if detail else type(exc).__name__


def _odata_string(value: str) -> str:
    return value.replace("'", "''")


class GraphGroups(Provider):
    name = "microsoft"
    label = "Microsoft 365"
    cross_group_batches = True

    def __init__(self, settings: MicrosoftProviderSettings, *, max_inline_wait_s: float):
        self.settings = settings
        self._max_wait = max_inline_wait_s
        self._msal: Any = None
        self._lock = asyncio.Lock()
        self.api = ApiClient(
            "Microsoft Graph",
            settings.graph_url,
            setting="providers.microsoft.graph_url",
            timeout_s=settings.timeout_s,
            max_inline_wait_s=max_inline_wait_s,
            token=self._token,
        )
        self._token_http: Any = None
        self._ids: dict[str, str] = {}  # group address -> Graph id
        self._users: dict[str, str] = {}  # member address -> Graph user id
        self.token_fetches = 0

    @property
    def calls(self) -> int:
        return self.api.calls

    async def aclose(self) -> None:
        await self.api.aclose()
        if self._token_http is not None:
            self._token_http.close()

    # -- the token ---------------------------------------------------------------------------------
    async def _token(self, fresh: bool) -> str:
        import httpx

        authority = self.settings.authority_url
        if not authority.startswith("https://"):
            raise ProviderError(
                f"providers.microsoft.authority_url is {authority}, but Microsoft Entra's token endpoint is "
                "only spoken to over https:// (msal refuses anything else): give its https:// address."
            )
        async with self._lock:
            try:
                if self._msal is None or fresh:
                    self._msal = await asyncio.to_thread(self._new_app)
                result = await asyncio.to_thread(self._msal.acquire_token_for_client, scopes=[SCOPE])
            except (httpx.HTTPError, OSError) as exc:
                self._msal = None  # discovery failed with it: build it again next time
                raise RetryLater(
                    f"Microsoft Entra's token endpoint (providers.microsoft.authority_url = {authority}) "
                    f"did not answer ({_cause(exc)})."
                ) from None
            except ValueError as exc:  # msal's own check of the authority, or an answer that is not JSON
                self._msal = None
                raise ProviderError(
                    f"providers.microsoft.authority_url ({authority}) is not a Microsoft Entra authority msal "
                    f"can use ({str(exc)[:160]})."
                ) from None
        if "access_token" not in result:
            raise RetryLater(
                "Microsoft Entra refused Postroom's token request "
                f"({result.get('error_description') or result.get('error')}): check the app registration "
                "(manifests/microsoft/README.md)."
            )
        if result.get("token_source") != "cache":
            self.token_fetches += 1
        return str(result["access_token"])

    def _new_app(self) -> Any:
        import httpx
        import msal

        s = self.settings
        # msal's HTTP goes through httpx too (its get/post/Response are what msal expects): one TLS
        # set-up for both, and a CA bundle given here is not overridden by $REQUESTS_CA_BUNDLE.
        if self._token_http is None:
            verify = ssl.create_default_context(cafile=s.ca_file) if s.ca_file else True
            self._token_http = httpx.Client(verify=verify, timeout=s.timeout_s)
        return msal.ConfidentialClientApplication(
            s.client_id,
            client_credential=s.client_secret,
            authority=f"{s.authority_url}/{s.tenant_id}",
            instance_discovery=False,
            validate_authority=False,
            http_client=self._token_http,
        )

    # -- the group -----------------------------------------------------------------------------------
    async def _group(self, address: str) -> str:
        if address in self._ids:
            return self._ids[address]
        r = await self.api.request(
            "GET",
            "/groups",
            params={
                "$filter": f"mail eq '{_odata_string(address)}'",
                "$select": "id,mail,displayName,groupTypes,mailEnabled,securityEnabled",
            },
        )
        self._raise(r)
        found = r.json().get("value", [])
        if not found:
            raise GroupMissing(f"{address} is not a group in Microsoft 365.")
        g = found[0]
        if "Unified" not in (g.get("groupTypes") or []) and g.get("mailEnabled"):
            kind = "mail-enabled security group" if g.get("securityEnabled") else "distribution list"
            raise GroupRefused(
                f"{address} is a {kind} in Microsoft 365, and Microsoft Graph cannot change its members: manage "
                "it in Exchange, or upgrade it to a Microsoft 365 group and Postroom will run it."
            )
        self._ids[address] = str(g["id"])
        return self._ids[address]

    async def list_groups(self) -> list[RemoteGroup]:
        found = []
        url: str | None = "/groups"
        params: dict[str, Any] | None = {
            "$filter": "groupTypes/any(c:c eq 'Unified')",
            "$select": "id,mail,displayName",
            "$top": 999,
        }
        while url:
            r = await self.api.request("GET", url, params=params)
            self._raise(r)
            data = r.json()
            for g in data.get("value", []):
                if g.get("mail"):
                    address = str(g["mail"]).lower()
                    self._ids[address] = str(g["id"])
                    found.append(RemoteGroup(address, g.get("displayName"), None))
            url, params = data.get("@odata.nextLink"), None
        return found

    async def members(self, address: str) -> list[RemoteMember]:
        gid = await self._group(address)
        found = []
        url: str | None = f"/groups/{gid}/members"
        params: dict[str, Any] | None = {"$select": "id,mail,userPrincipalName", "$top": 999}
        while url:
            r = await self.api.request("GET", url, params=params)
            self._raise(r)
            data = r.json()
            for m in data.get("value", []):
                email = (m.get("mail") or m.get("userPrincipalName") or "").lower()
                if email:
                    self._users[email] = str(m["id"])
                    found.append(RemoteMember(email))
            url, params = data.get("@odata.nextLink"), None
        return found

    # -- writing, in batches of twenty -----------------------------------------------------------------
    async def _batch(self, requests: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """Send requests in $batches; answers by request id. A throttled request is sent again after
        its own Retry-After (up to the inline bound), then reported as 429."""
        answers: dict[str, dict[str, Any]] = {}
        waiting = list(requests)
        for _round in range(4):
            throttled: list[dict[str, Any]] = []
            wait = 0.0
            for i in range(0, len(waiting), BATCH):
                chunk = waiting[i : i + BATCH]
                r = await self.api.request("POST", "/$batch", json={"requests": chunk})
                self._raise(r)
                for answer in r.json().get("responses", []):
                    if answer.get("status") == 429:
                        after = float((answer.get("headers") or {}).get("Retry-After", 1))
                        wait = max(wait, after)
                        throttled.append(next(q for q in chunk if q["id"] == answer["id"]))
                        answers[str(answer["id"])] = answer
                    else:
                        answers[str(answer["id"])] = answer
            if not throttled or wait > self._max_wait:
                break
            await asyncio.sleep(wait)
            waiting = throttled
        return answers

    async def _user_ids(self, emails: list[str]) -> tuple[dict[str, str], dict[str, str]]:
        unknown = [e for e in emails if e not in self._users]
        missing: dict[str, str] = {}
        requests = [
            {
                "id": str(i),
                "method": "GET",
                "url": f"/users?$filter=mail eq '{quote(_odata_string(e), safe='@')}'&$select=id,mail",
            }
            for i, e in enumerate(unknown)
        ]
        for rid, answer in (await self._batch(requests)).items():
            email = unknown[int(rid)]
            if answer.get("status") == 200 and answer.get("body", {}).get("value"):
                self._users[email] = str(answer["body"]["value"][0]["id"])
            elif answer.get("status") == 429:
                missing[email] = "throttled"
            else:
                missing[email] = "unknown"
        return {e: self._users[e] for e in emails if e in self._users}, missing

    async def add(self, address: str, members: list[RemoteMember]) -> Pushed:
        out = Pushed()
        try:
            gid = await self._group(address)
        except GroupMissing:
            raise
        except ProviderError as exc:
            out.fail_all([m.email for m in members], exc)
            return out
        ids, missing = await self._user_ids([m.email for m in members])
        for email, why in missing.items():
            if why == "throttled":
                out.retry[email] = "Microsoft Graph is throttling Postroom (HTTP 429)."
            else:
                out.refused[email] = f"{email} is not a user in this Microsoft 365 tenant."
        emails = list(ids)
        requests = [
            {
                "id": str(i),
                "method": "POST",
                "url": f"/groups/{gid}/members/$ref",
                "headers": {"Content-Type": "application/json"},
                "body": {"@odata.id": f"{self.settings.graph_url}/directoryObjects/{ids[e]}"},
            }
            for i, e in enumerate(emails)
        ]
        self._read(await self._batch(requests), emails, out, exists_ok=True)
        return out

    async def remove(self, address: str, emails: list[str]) -> Pushed:
        out = Pushed()
        try:
            gid = await self._group(address)
        except GroupMissing:
            raise
        except ProviderError as exc:
            out.fail_all(emails, exc)
            return out
        ids, missing = await self._user_ids(emails)
        for email, why in missing.items():
            if why == "throttled":
                out.retry[email] = "Microsoft Graph is throttling Postroom (HTTP 429)."
            else:
                out.done.add(email)  # nobody by that address in the tenant: not a member
        known = list(ids)
        requests = [
            {"id": str(i), "method": "DELETE", "url": f"/groups/{gid}/members/{ids[e]}/$ref"}
            for i, e in enumerate(known)
        ]
        self._read(await self._batch(requests), known, out, exists_ok=False)
        return out

    async def push_many(self, work: dict[str, tuple[list[RemoteMember], list[str]]]) -> dict[str, Pushed]:
        """Every group's changes in shared $batches of twenty: a leaver's fifty groups in three calls."""
        out = {address: Pushed() for address in work}
        gids: dict[str, str] = {}
        for address, (adds, removes) in work.items():
            try:
                gids[address] = await self._group(address)
            except GroupMissing:
                if adds:
                    await self.create_group(address, None, False, adds)
                    out[address].done.update(m.email for m in adds)
                out[address].done.update(removes)  # not a member of a group that is not there
            except ProviderError as exc:
                out[address].fail_all([m.email for m in adds] + removes, exc)
        wanted = sorted(
            {m.email for a, (adds, _) in work.items() if a in gids for m in adds}
            | {e for a, (_, removes) in work.items() if a in gids for e in removes}
        )
        ids, missing = await self._user_ids(wanted)
        requests: list[dict[str, Any]] = []
        index: list[tuple[str, str, bool]] = []  # request id -> (group, address, an add)
        for address, (adds, removes) in work.items():
            if address not in gids:
                continue
            gid = gids[address]
            for email in removes:
                if email in ids:
                    requests.append(
                        {
                            "id": str(len(index)),
                            "method": "DELETE",
                            "url": f"/groups/{gid}/members/{ids[email]}/$ref",
                        }
                    )
                    index.append((address, email, False))
                elif missing.get(email) == "throttled":
                    out[address].retry[email] = "Microsoft Graph is throttling Postroom (HTTP 429)."
                else:
                    out[address].done.add(email)  # nobody by that address in the tenant: not a member
            for m in adds:
                if m.email in ids:
                    requests.append(
                        {
                            "id": str(len(index)),
                            "method": "POST",
                            "url": f"/groups/{gid}/members/$ref",
                            "headers": {"Content-Type": "application/json"},
                            "body": {
                                "@odata.id": f"{self.settings.graph_url}/directoryObjects/{ids[m.email]}"
                            },
                        }
                    )
                    index.append((address, m.email, True))
                elif missing.get(m.email) == "throttled":
                    out[address].retry[m.email] = "Microsoft Graph is throttling Postroom (HTTP 429)."
                else:
                    out[address].refused[m.email] = f"{m.email} is not a user in this Microsoft 365 tenant."
        for rid, answer in (await self._batch(requests)).items():
            address, email, is_add = index[int(rid)]
            self._read({"0": answer}, [email], out[address], exists_ok=is_add)
        return out

    def _read(
        self, answers: dict[str, dict[str, Any]], emails: list[str], out: Pushed, *, exists_ok: bool
    ) -> None:
        for rid, answer in answers.items():
            email = emails[int(rid)]
            status = int(answer.get("status", 0))
            message = str((answer.get("body") or {}).get("error", {}).get("message", ""))[:200]
            if status in (200, 201, 204):
                out.done.add(email)
            elif status == 404 and not exists_ok:
                out.done.add(email)  # not a member any more
            elif status == 400 and exists_ok and "already exist" in message:
                out.done.add(email)
            elif status == 429 or status >= 500:
                out.retry[email] = f"Microsoft Graph answered HTTP {status}."
                after = (answer.get("headers") or {}).get("Retry-After")
                if after is not None:
                    out.retry_after_s = max(out.retry_after_s or 0, float(after))
            elif status == 403:
                out.retry[email] = (
                    f"Microsoft Graph refused access ({message}): the app needs GroupMember.ReadWrite.All."
                )
            else:
                out.refused[email] = f"Microsoft Graph refused {email} (HTTP {status}: {message})."

    async def create_group(
        self, address: str, name: str | None, external_allowed: bool, first: list[RemoteMember]
    ) -> None:
        try:
            await self._group(address)
            return
        except GroupMissing:
            pass
        local = address.split("@", 1)[0]
        r = await self.api.request(
            "POST",
            "/groups",
            json={
                "displayName": name or local,
                "mailNickname": local,
                "mailEnabled": True,
                "securityEnabled": False,
                "groupTypes": ["Unified"],
            },
        )
        self._raise(r)
        self._ids[address] = str(r.json()["id"])
        if first:
            await self.add(address, first)

    async def check(self) -> str:
        r = await self.api.request("GET", "/groups", params={"$top": 1, "$select": "id"})
        self._raise(r)
        return "reads groups with the app's own token (GroupMember.ReadWrite.All granted)"

    def _raise(self, r: Any) -> None:
        if r.status_code < 400:
            return
        try:
            why = r.json().get("error", {}).get("message", "")
        except ValueError:
            why = ""
        if r.status_code == 403:
            raise RetryLater(
                f"Microsoft Graph refused access ({why or 'HTTP 403'}): grant the app GroupMember.ReadWrite.All "
                "and Group.Read.All with admin consent."
            )
        raise RetryLater(f"Microsoft Graph answered HTTP {r.status_code} ({why}).")
