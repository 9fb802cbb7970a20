"""A fake of Google's OAuth token endpoint, the Admin SDK Directory API (groups, members) and the
Groups Settings API, written from their reference documentation:

- token: POST, form `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion=<JWT>`; the JWT
  is signed with the service account's key (RS256), `aud` is the token URI, `sub` the admin;
- `GET /admin/directory/v1/groups?customer=…&maxResults=…&pageToken=…` → `{groups, nextPageToken}`;
- `GET …/groups/{groupKey}/members?maxResults(≤200)&pageToken` → `{members: [{email, role, type}],
  nextPageToken}`;
- `POST …/groups/{groupKey}/members {email, role}` → the member; 409 "Member already exists.";
- `DELETE …/groups/{groupKey}/members/{memberKey}` → 204; 404 "Resource Not Found: memberKey";
- `POST /admin/directory/v1/groups {email, name}`; 409 "Entity already exists.";
- `GET/PATCH /groups/v1/groups/{groupUniqueId}` → `allowExternalMembers` as "true"/"false";
- errors `{"error": {"code", "message", "errors": [{"reason"}]}}`: 401 authError (expired token),
  403 userRateLimitExceeded / quotaExceeded, 429 rateLimitExceeded.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.platform_faults import Faults


def error(code: int, message: str, reason: str) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message, "errors": [{"reason": reason, "message": message}]}},
        status_code=code,
    )


@dataclass
class FakeGoogle:
    public_key_pem: bytes
    admin: str = "admin@corp.example"
    groups: dict[str, dict[str, Any]] = field(default_factory=dict)  # address -> {name, external, members}
    page_size: int = 200  # the API's maximum; tests lower it to see paging
    faults: Faults = field(default_factory=Faults)
    quota_errors: int = 0  # the next N calls answer 403 userRateLimitExceeded
    tokens: dict[str, float] = field(default_factory=dict)  # token -> expiry (epoch seconds)
    token_requests: int = 0
    calls: int = 0
    base: str = ""
    # Groups still in the listing but deleted since: every call about them answers 404 (a group
    # deleted by an admin while an import reads the others).
    vanished: set[str] = field(default_factory=set)
    _ids: Any = field(default_factory=lambda: itertools.count(1))

    def add_group(self, address: str, members: dict[str, str] | None = None, external: bool = False) -> None:
        self.groups[address] = {
            "name": address.split("@")[0],
            "external": external,
            "members": dict(members or {}),
        }

    def members_of(self, address: str) -> dict[str, str]:
        return dict(self.groups[address]["members"])

    def expire_tokens(self) -> None:
        for token in self.tokens:
            self.tokens[token] = 0

    def app(self) -> Starlette:
        from google.auth import jwt

        def authorised(request: Request) -> bool:
            raw = request.headers.get("Authorization", "")
            token = raw.removeprefix("Bearer ")
            return self.tokens.get(token, 0) > time.time()

        def gate(request: Request) -> Response | None:
            self.calls += 1
            if self.faults.down:
                return error(503, "Backend Error", "backendError")
            if self.faults.throttled():
                r = error(429, "Rate Limit Exceeded", "rateLimitExceeded")
                r.headers["Retry-After"] = self.faults.retry_after
                return r
            if self.quota_errors > 0:
                self.quota_errors -= 1
                return error(403, "Quota exceeded for quota metric", "userRateLimitExceeded")
            if not authorised(request):
                return error(401, "Invalid Credentials", "authError")
            return None

        async def token(request: Request) -> Response:
            self.token_requests += 1
            form = {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}
            if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
                return JSONResponse({"error": "unsupported_grant_type"}, status_code=400)
            try:
                claims = jwt.decode(
                    str(form.get("assertion")), certs=self.public_key_pem, audience=f"{self.base}/token"
                )
            except ValueError as exc:
                return JSONResponse(
                    {"error": "invalid_grant", "error_description": str(exc)}, status_code=400
                )
            if claims.get("sub") != self.admin:
                return JSONResponse(
                    {"error": "unauthorized_client", "error_description": "Client is unauthorized"},
                    status_code=401,
                )
            t = f"ya29.token-{next(self._ids)}"
            self.tokens[t] = time.time() + 3600
            return JSONResponse({"access_token": t, "expires_in": 3599, "token_type": "Bearer"})

        def page(items: list[Any], request: Request) -> tuple[list[Any], str | None]:
            size = min(int(request.query_params.get("maxResults", 200)), 200, self.page_size)
            start = int(request.query_params.get("pageToken") or 0)
            nxt = start + size
            return items[start:nxt], (str(nxt) if nxt < len(items) else None)

        async def list_groups(request: Request) -> Response:
            if (refused := gate(request)) is not None:
                return refused
            if request.method == "POST":
                body = await request.json()
                address = body["email"].lower()
                if address in self.groups:
                    return error(409, "Entity already exists.", "duplicate")
                self.add_group(address)
                self.groups[address]["name"] = body.get("name")
                return JSONResponse({"kind": "admin#directory#group", "email": address, "id": address})
            items, nxt = page(sorted(set(self.groups) | self.vanished), request)
            answer: dict[str, Any] = {
                "kind": "admin#directory#groups",
                "groups": [
                    {
                        "email": a,
                        "name": self.groups[a]["name"] if a in self.groups else a.split("@")[0],
                        "id": a,
                    }
                    for a in items
                ],
            }
            if nxt:
                answer["nextPageToken"] = nxt
            return JSONResponse(answer)

        async def members(request: Request) -> Response:
            if (refused := gate(request)) is not None:
                return refused
            key = request.path_params["group"].lower()
            group = self.groups.get(key)
            if group is None:
                return error(404, "Resource Not Found: groupKey", "notFound")
            if request.method == "POST":
                body = await request.json()
                email = body["email"].lower()
                if self.faults.fails(email):
                    return error(500, "Backend Error", "backendError")
                if email in group["members"]:
                    return error(409, "Member already exists.", "duplicate")
                group["members"][email] = {"OWNER": "owner", "MANAGER": "manager"}.get(
                    body.get("role"), "member"
                )
                return JSONResponse(
                    {"kind": "admin#directory#member", "email": email, "role": body.get("role")}
                )
            items, nxt = page(sorted(group["members"].items()), request)
            answer = {
                "kind": "admin#directory#members",
                "members": [
                    {
                        "email": e,
                        "role": {"owner": "OWNER", "manager": "MANAGER"}.get(r, "MEMBER"),
                        "type": "USER",
                    }
                    for e, r in items
                ],
            }
            if nxt:
                answer["nextPageToken"] = nxt
            return JSONResponse(answer)

        async def member(request: Request) -> Response:
            if (refused := gate(request)) is not None:
                return refused
            group = self.groups.get(request.path_params["group"].lower())
            if group is None:
                return error(404, "Resource Not Found: groupKey", "notFound")
            email = request.path_params["member"].lower()
            if self.faults.fails(email):
                return error(500, "Backend Error", "backendError")
            if email not in group["members"]:
                return error(404, "Resource Not Found: memberKey", "notFound")
            del group["members"][email]
            return Response(status_code=204)

        async def settings(request: Request) -> Response:
            if (refused := gate(request)) is not None:
                return refused
            group = self.groups.get(request.path_params["group"].lower())
            if group is None:
                return error(404, "Resource Not Found: groupUniqueId", "notFound")
            if request.method == "PATCH":
                body = await request.json()
                group["external"] = str(body.get("allowExternalMembers")).lower() == "true"
            return JSONResponse(
                {"kind": "groupsSettings#groups", "allowExternalMembers": str(group["external"]).lower()}
            )

        return Starlette(
            routes=[
                Route("/token", token, methods=["POST"]),
                Route("/admin/directory/v1/groups", list_groups, methods=["GET", "POST"]),
                Route("/admin/directory/v1/groups/{group}/members", members, methods=["GET", "POST"]),
                Route("/admin/directory/v1/groups/{group}/members/{member}", member, methods=["DELETE"]),
                Route("/groups/v1/groups/{group}", settings, methods=["GET", "PATCH"]),
            ]
        )
