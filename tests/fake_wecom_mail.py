"""A fake of WeCom's mail-group API (企业微信 邮件群组), written from its documentation:

- `GET /cgi-bin/gettoken?corpid&corpsecret` → `{errcode: 0, access_token, expires_in}`;
- `POST /cgi-bin/exmail/group/create?access_token` `{groupid, groupname, email_list: {list}, allow_type}`;
- `POST /cgi-bin/exmail/group/update?access_token` `{groupid, email_list: {list}}`: a JSON array sent
  empty clears it, an absent one stays; members may not all be cleared;
- `GET /cgi-bin/exmail/group/get?access_token&groupid` → `{errcode, groupid, groupname, email_list: {list},
  department_list, tag_list, group_list, allow_type}`;
- `POST /cgi-bin/exmail/group/delete?access_token` `{groupid}`;
- `GET /cgi-bin/exmail/group/search?access_token&fuzzy=0|1&groupid` → `{errcode, count, groups: [{groupid,
  groupname}]}`;
- errors as `errcode`/`errmsg` with HTTP 200: 42001 expired token, 45009 call frequency over the limit.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.platform_faults import Faults


@dataclass
class FakeWeComMail:
    secret: str = "mail-secret"
    groups: dict[str, dict[str, Any]] = field(
        default_factory=dict
    )  # groupid -> {groupname, email_list, department_list}
    faults: Faults = field(default_factory=Faults)
    tokens: set[str] = field(default_factory=set)
    token_requests: int = 0
    writes: list[dict[str, Any]] = field(default_factory=list)  # every update/create body
    calls: int = 0
    _ids: Any = field(default_factory=lambda: itertools.count(1))

    def add_group(self, groupid: str, emails: list[str], departments: list[int] = ()) -> None:  # type: ignore[assignment]
        self.groups[groupid] = {
            "groupname": groupid.split("@")[0],
            "email_list": list(emails),
            "department_list": list(departments),
        }

    def members_of(self, groupid: str) -> set[str]:
        return set(self.groups[groupid]["email_list"])

    def expire_tokens(self) -> None:
        self.tokens.clear()

    def app(self) -> Starlette:
        def gate(request: Request) -> JSONResponse | None:
            self.calls += 1
            if self.faults.down:
                return JSONResponse({"errcode": -1, "errmsg": "system busy"})
            if self.faults.throttled():
                return JSONResponse({"errcode": 45009, "errmsg": "api freq out of limit"})
            if request.query_params.get("access_token") not in self.tokens:
                return JSONResponse({"errcode": 42001, "errmsg": "access_token expired"})
            return None

        async def gettoken(request: Request) -> JSONResponse:
            self.token_requests += 1
            if request.query_params.get("corpsecret") != self.secret:
                return JSONResponse({"errcode": 40001, "errmsg": "invalid credential"})
            token = f"mail-token-{next(self._ids)}"
            self.tokens.add(token)
            return JSONResponse({"errcode": 0, "errmsg": "ok", "access_token": token, "expires_in": 7200})

        async def create(request: Request) -> JSONResponse:
            if (refused := gate(request)) is not None:
                return refused
            body = await request.json()
            self.writes.append(body)
            gid = body["groupid"]
            if gid in self.groups:
                return JSONResponse({"errcode": 60104, "errmsg": "group exists"})
            emails = (body.get("email_list") or {}).get("list") or []
            if not emails and not body.get("department_list") and not body.get("tag_list"):
                return JSONResponse({"errcode": 40058, "errmsg": "members can not be all empty"})
            self.add_group(gid, emails)
            self.groups[gid]["groupname"] = body.get("groupname")
            return JSONResponse({"errcode": 0, "errmsg": "ok"})

        async def update(request: Request) -> JSONResponse:
            if (refused := gate(request)) is not None:
                return refused
            body = await request.json()
            self.writes.append(body)
            group = self.groups.get(body.get("groupid"))
            if group is None:
                return JSONResponse({"errcode": 60102, "errmsg": "group not exist"})
            if "email_list" in body:
                emails = list((body["email_list"] or {}).get("list") or [])
                if any(self.faults.fails(e) for e in emails):
                    return JSONResponse({"errcode": -1, "errmsg": "system busy"})
                if not emails and not group["department_list"]:
                    return JSONResponse({"errcode": 40058, "errmsg": "members can not be all empty"})
                group["email_list"] = emails
            return JSONResponse({"errcode": 0, "errmsg": "ok"})

        async def delete(request: Request) -> JSONResponse:
            if (refused := gate(request)) is not None:
                return refused
            body = await request.json()
            self.writes.append({"delete": body.get("groupid")})
            if self.groups.pop(body.get("groupid"), None) is None:
                return JSONResponse({"errcode": 60102, "errmsg": "group not exist"})
            return JSONResponse({"errcode": 0, "errmsg": "ok"})

        async def get(request: Request) -> JSONResponse:
            if (refused := gate(request)) is not None:
                return refused
            group = self.groups.get(request.query_params.get("groupid", ""))
            if group is None:
                return JSONResponse({"errcode": 60102, "errmsg": "group not exist"})
            return JSONResponse(
                {
                    "errcode": 0,
                    "errmsg": "ok",
                    "groupid": request.query_params["groupid"],
                    "groupname": group["groupname"],
                    "email_list": {"list": list(group["email_list"])},
                    "department_list": {"list": list(group["department_list"])},
                    "tag_list": {"list": []},
                    "group_list": {"list": []},
                    "allow_type": 0,
                }
            )

        async def search(request: Request) -> JSONResponse:
            if (refused := gate(request)) is not None:
                return refused
            wanted = request.query_params.get("groupid", "")
            fuzzy = request.query_params.get("fuzzy") == "1"
            found = [
                {"groupid": g, "groupname": v["groupname"]}
                for g, v in sorted(self.groups.items())
                if (wanted in g if fuzzy else g == wanted)
            ]
            return JSONResponse({"errcode": 0, "errmsg": "ok", "count": len(found), "groups": found})

        return Starlette(
            routes=[
                Route("/cgi-bin/gettoken", gettoken),
                Route("/cgi-bin/exmail/group/create", create, methods=["POST"]),
                Route("/cgi-bin/exmail/group/update", update, methods=["POST"]),
                Route("/cgi-bin/exmail/group/get", get),
                Route("/cgi-bin/exmail/group/delete", delete, methods=["POST"]),
                Route("/cgi-bin/exmail/group/search", search),
            ]
        )
