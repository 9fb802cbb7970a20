"""A fake of Microsoft Entra's token endpoint (client credentials, for msal) and of Microsoft Graph's
groups, members and JSON batching, written from their documentation:

- `GET /{tenant}/v2.0/.well-known/openid-configuration`, `POST /{tenant}/oauth2/v2.0/token`
  (`grant_type=client_credentials`, `client_id`, `client_secret`, `scope=https://graph.microsoft.com/.default`);
- `GET /groups?$filter=mail eq '…'` → `{value: [{id, mail, groupTypes, mailEnabled, securityEnabled}]}`;
  a distribution list is mail-enabled without "Unified", a mail-enabled security group also security-enabled;
- `GET /groups/{id}/members?$top=…` → `{value, @odata.nextLink}` (page by page);
- `POST /$batch {requests: [{id, method, url, headers, body}]}` (at most 20) → `{responses: [{id, status,
  headers, body}]}`, each request answered on its own (a 429 with its own Retry-After);
- `POST /groups/{id}/members/$ref {"@odata.id": ".../directoryObjects/{id}"}` → 204; an existing member
  → 400 "One or more added object references already exist…";
- `DELETE /groups/{id}/members/{id}/$ref` → 204; not a member → 404;
- an expired token → 401 InvalidAuthenticationToken.
"""

from __future__ import annotations

import itertools
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.platform_faults import Faults


def graph_error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> tuple[int, dict, Any]:
    return status, headers or {}, {"error": {"code": code, "message": message}}


@dataclass
class FakeGraph:
    client_id: str = "app-id"
    client_secret: str = "app-secret"
    users: dict[str, str] = field(default_factory=dict)  # mail -> id
    groups: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> {mail, kind, members:set[id]}
    page_size: int = 100
    faults: Faults = field(default_factory=Faults)
    batch_throttle: int = 0  # the next N requests inside batches answer 429
    tokens: dict[str, float] = field(default_factory=dict)
    token_requests: int = 0
    calls: int = 0
    base: str = ""  # the Graph base URL (for nextLinks)
    login: str = ""  # the token server's base URL
    _ids: Any = field(default_factory=lambda: itertools.count(1))

    def user(self, mail: str) -> str:
        return self.users.setdefault(mail, str(uuid.uuid4()))

    def add_group(self, mail: str, members: list[str] = (), kind: str = "unified") -> str:  # type: ignore[assignment]
        gid = str(uuid.uuid4())
        self.groups[gid] = {"mail": mail, "kind": kind, "members": {self.user(m) for m in members}}
        return gid

    def members_of(self, mail: str) -> set[str]:
        by_id = {v: k for k, v in self.users.items()}
        g = next(g for g in self.groups.values() if g["mail"] == mail)
        return {by_id[u] for u in g["members"]}

    def expire_tokens(self) -> None:
        for t in self.tokens:
            self.tokens[t] = 0

    def _group_json(self, gid: str) -> dict[str, Any]:
        g = self.groups[gid]
        kinds = {
            "unified": (["Unified"], True, False),
            "distribution": ([], True, False),
            "mail-security": ([], True, True),
            "security": ([], False, True),
        }
        types, mail_enabled, security_enabled = kinds[g["kind"]]
        return {
            "id": gid,
            "mail": g["mail"],
            "displayName": g["mail"].split("@")[0],
            "groupTypes": types,
            "mailEnabled": mail_enabled,
            "securityEnabled": security_enabled,
        }

    # One Graph request, inside a batch or not: (status, headers, body).
    def _handle(self, method: str, url: str, body: Any) -> tuple[int, dict[str, str], Any]:
        parts = urlsplit(url)
        path = unquote(parts.path)
        if path.startswith("/v1.0"):
            path = path[5:]
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        segs = [s for s in path.split("/") if s]
        if segs == ["users"] and method == "GET":
            flt = query.get("$filter", "")
            mail = flt.split("'", 1)[1].rsplit("'", 1)[0].replace("''", "'") if "'" in flt else ""
            found = [{"id": i, "mail": m} for m, i in self.users.items() if m == mail]
            return 200, {}, {"value": found}
        if segs == ["groups"] and method == "GET":
            flt = query.get("$filter", "")
            if flt.startswith("mail eq"):
                mail = flt.split("'", 1)[1].rsplit("'", 1)[0]
                return (
                    200,
                    {},
                    {"value": [self._group_json(i) for i, g in self.groups.items() if g["mail"] == mail]},
                )
            return (
                200,
                {},
                {"value": [self._group_json(i) for i, g in self.groups.items() if g["kind"] == "unified"]},
            )
        if segs == ["groups"] and method == "POST":
            gid = self.add_group(f"{body['mailNickname']}@corp.example")
            return 201, {}, self._group_json(gid)
        if len(segs) >= 3 and segs[0] == "groups" and segs[2] == "members":
            g = self.groups.get(segs[1])
            if g is None:
                return graph_error(404, "Request_ResourceNotFound", f"Resource '{segs[1]}' does not exist.")
            if g["kind"] != "unified" and method != "GET":
                return graph_error(
                    400,
                    "Request_BadRequest",
                    "Cannot Update a mail-enabled security groups and or distribution list.",
                )
            if len(segs) == 3 and method == "GET":
                ids = sorted(g["members"])
                start = int(query.get("$skiptoken", 0))
                chunk = ids[start : start + min(int(query.get("$top", 100)), self.page_size)]
                by_id = {v: k for k, v in self.users.items()}
                answer: dict[str, Any] = {"value": [{"id": i, "mail": by_id.get(i)} for i in chunk]}
                if start + len(chunk) < len(ids):
                    answer["@odata.nextLink"] = (
                        f"{self.base}/groups/{segs[1]}/members?$skiptoken={start + len(chunk)}"
                    )
                return 200, {}, answer
            if segs[3:] == ["$ref"] and method == "POST":
                uid = str(body["@odata.id"]).rsplit("/", 1)[-1]
                mail = next((m for m, i in self.users.items() if i == uid), "")
                if self.faults.fails(mail):
                    return graph_error(503, "serviceNotAvailable", "Service unavailable")
                if uid in g["members"]:
                    return graph_error(
                        400,
                        "Request_BadRequest",
                        "One or more added object references already exist for the following modified properties: 'members'.",
                    )
                g["members"].add(uid)
                return 204, {}, None
            if len(segs) == 5 and segs[4] == "$ref" and method == "DELETE":
                uid = segs[3]
                mail = next((m for m, i in self.users.items() if i == uid), "")
                if self.faults.fails(mail):
                    return graph_error(503, "serviceNotAvailable", "Service unavailable")
                if uid not in g["members"]:
                    return graph_error(404, "Request_ResourceNotFound", f"Resource '{uid}' does not exist.")
                g["members"].discard(uid)
                return 204, {}, None
        return graph_error(400, "BadRequest", f"Unsupported {method} {path}")

    def app(self) -> Starlette:
        def gate(request: Request) -> Response | None:
            self.calls += 1
            if self.faults.down:
                return JSONResponse(
                    {"error": {"code": "serviceNotAvailable", "message": "down"}}, status_code=503
                )
            if self.faults.throttled():
                return JSONResponse(
                    {"error": {"code": "TooManyRequests", "message": "throttled"}},
                    status_code=429,
                    headers={"Retry-After": self.faults.retry_after},
                )
            token = request.headers.get("Authorization", "").removeprefix("Bearer ")
            if self.tokens.get(token, 0) <= time.time():
                return JSONResponse(
                    {
                        "error": {
                            "code": "InvalidAuthenticationToken",
                            "message": "Access token has expired or is not yet valid.",
                        }
                    },
                    status_code=401,
                )
            return None

        async def oidc(request: Request) -> Response:
            t = request.path_params["tenant"]
            return JSONResponse(
                {
                    "authorization_endpoint": f"{self.login}/{t}/oauth2/v2.0/authorize",
                    "token_endpoint": f"{self.login}/{t}/oauth2/v2.0/token",
                    "issuer": f"{self.login}/{t}/v2.0",
                }
            )

        async def token(request: Request) -> Response:
            self.token_requests += 1
            form = {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}
            if (
                form.get("grant_type") != "client_credentials"
                or form.get("client_secret") != self.client_secret
            ):
                return JSONResponse(
                    {
                        "error": "invalid_client",
                        "error_description": "AADSTS7000215: Invalid client secret provided.",
                    },
                    status_code=401,
                )
            t = f"eyJ.graph-{next(self._ids)}"
            self.tokens[t] = time.time() + 3600
            return JSONResponse(
                {"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599, "access_token": t}
            )

        async def direct(request: Request) -> Response:
            if (refused := gate(request)) is not None:
                return refused
            body = await request.json() if request.method == "POST" else None
            status, headers, answer = self._handle(request.method, str(request.url), body)
            return Response(
                json.dumps(answer) if answer is not None else b"",
                status_code=status,
                headers=headers,
                media_type="application/json",
            )

        async def batch(request: Request) -> Response:
            if (refused := gate(request)) is not None:
                return refused
            requests = (await request.json()).get("requests", [])
            if len(requests) > 20:
                return JSONResponse(
                    {"error": {"code": "BadRequest", "message": "Limit of 20 requests exceeded."}},
                    status_code=400,
                )
            responses = []
            for q in requests:
                if self.batch_throttle > 0:
                    self.batch_throttle -= 1
                    responses.append(
                        {
                            "id": q["id"],
                            "status": 429,
                            "headers": {"Retry-After": "1"},
                            "body": {"error": {"code": "TooManyRequests"}},
                        }
                    )
                    continue
                status, headers, answer = self._handle(q["method"], q["url"], q.get("body"))
                responses.append({"id": q["id"], "status": status, "headers": headers, "body": answer})
            return JSONResponse({"responses": responses})

        return Starlette(
            routes=[
                Route("/{tenant}/v2.0/.well-known/openid-configuration", oidc),
                Route("/{tenant}/oauth2/v2.0/token", token, methods=["POST"]),
                Route("/$batch", batch, methods=["POST"]),
                Route("/{path:path}", direct, methods=["GET", "POST", "DELETE"]),
            ]
        )
