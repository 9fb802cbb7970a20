"""One face for every platform in the scenario tests: read a group's real membership, change it by
hand (as an admin in the platform's console would), take the platform down."""

from __future__ import annotations

import socket
import threading
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.provider_rig import LDAP_BASE, Mailman, Slapd, google_platform, graph_platform, wecom_platform

PROVIDERS = ("google", "microsoft", "wecom", "ldap", "mailman")
PEOPLE = ["ann", "bob", "cy", "dee", "eve", "fay"]


class Gate:
    """A TCP forwarder in front of a real server (slapd, Mailman's REST API): `down` closes every open
    connection and refuses new ones, as a server that has stopped would; `up` lets them through again."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.is_down = False
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.is_down:
                client.close()  # the client sees its connection reset: nobody is serving
                continue
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._open |= {client, server}
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (a, b):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def down(self, value: bool) -> None:
        self.is_down = value
        if value:
            with self._lock:
                for sock in self._open:
                    try:
                        sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                self._open.clear()

    def close(self) -> None:
        self.down(True)
        self.listener.close()


@dataclass
class Platform:
    name: str
    settings: dict[str, Any]
    fake: Any = None
    slapd: Slapd | None = None
    mailman: Mailman | None = None
    gate: Gate | None = None  # between Postroom and the real slapd / Mailman
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])

    def email(self, who: str) -> str:
        return f"{who}{self.tag}@corp.example"

    def down(self, value: bool) -> None:
        if self.gate is not None:
            self.gate.down(value)
        else:
            self.fake.faults.down = value

    def members(self, group: str) -> set[str]:
        if self.name == "google":
            return set(self.fake.groups[group]["members"]) if group in self.fake.groups else set()
        if self.name == "microsoft":
            try:
                return self.fake.members_of(group)
            except StopIteration:
                return set()
        if self.name == "wecom":
            return self.fake.members_of(group) if group in self.fake.groups else set()
        if self.name == "ldap":
            assert self.slapd is not None
            out = self.slapd.search(self.settings["group_base"], f"(mail={group})", "member")
            dns = [line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("member: ")]
            return {f"{dn.split(',')[0].split('=')[1]}@corp.example" for dn in dns if dn.startswith("uid=")}
        assert self.mailman is not None
        with self.mailman.client() as c:
            r = c.get(f"/lists/{group.replace('@', '.')}/roster/member")
            return {e["email"] for e in r.json().get("entries", [])} if r.status_code == 200 else set()

    def add_by_hand(self, group: str, email: str) -> None:
        if self.name == "google":
            self.fake.groups[group]["members"][email] = "member"
        elif self.name == "microsoft":
            g = next(g for g in self.fake.groups.values() if g["mail"] == group)
            g["members"].add(self.fake.user(email))
        elif self.name == "wecom":
            self.fake.groups[group]["email_list"].append(email)
        elif self.name == "ldap":
            assert self.slapd is not None
            uid = email.split("@")[0]
            self.slapd.modify(
                f"dn: cn={group.split('@')[0]},{self.settings['group_base']}\nchangetype: modify\nadd: member\n"
                f"member: uid={uid},ou=people,{LDAP_BASE}\n"
            )
        else:
            assert self.mailman is not None
            with self.mailman.client() as c:
                c.post(
                    "/members",
                    json={
                        "list_id": group.replace("@", "."),
                        "subscriber": email,
                        "pre_verified": True,
                        "pre_confirmed": True,
                        "pre_approved": True,
                    },
                ).raise_for_status()

    def remove_by_hand(self, group: str, email: str) -> None:
        if self.name == "google":
            del self.fake.groups[group]["members"][email]
        elif self.name == "microsoft":
            g = next(g for g in self.fake.groups.values() if g["mail"] == group)
            g["members"].discard(self.fake.user(email))
        elif self.name == "wecom":
            self.fake.groups[group]["email_list"].remove(email)
        elif self.name == "ldap":
            assert self.slapd is not None
            uid = email.split("@")[0]
            self.slapd.modify(
                f"dn: cn={group.split('@')[0]},{self.settings['group_base']}\nchangetype: modify\ndelete: member\n"
                f"member: uid={uid},ou=people,{LDAP_BASE}\n"
            )
        else:
            assert self.mailman is not None
            with self.mailman.client() as c:
                c.delete(f"/lists/{group.replace('@', '.')}/member/{email}").raise_for_status()


@asynccontextmanager
async def platform(name: str, folder: Path, request: Any) -> AsyncIterator[Platform]:
    """The platform `name` with this test's people on it (a fake, or the session's slapd / Mailman)."""
    if name == "google":
        async with google_platform(folder) as run:
            yield Platform(name, run.settings, fake=run.fake)
    elif name == "microsoft":
        async with graph_platform(folder) as run:
            p = Platform(name, run.settings, fake=run.fake)
            for who in PEOPLE:
                run.fake.user(p.email(who))
            yield p
    elif name == "wecom":
        async with wecom_platform(folder) as run:
            yield Platform(name, run.settings, fake=run.fake)
    elif name == "ldap":
        slapd: Slapd = request.getfixturevalue("slapd")
        p = Platform(name, {}, slapd=slapd)
        base = f"ou=g{p.tag},{LDAP_BASE}"
        slapd.ldif(
            f"dn: {base}\nobjectClass: organizationalUnit\nou: g{p.tag}\n\n"
            + "".join(
                f"dn: uid={who}{p.tag},ou=people,{LDAP_BASE}\nobjectClass: inetOrgPerson\nuid: {who}{p.tag}\n"
                f"cn: {who}\nsn: {who}\nmail: {p.email(who)}\n\n"
                for who in PEOPLE
            )
        )
        p.settings = slapd.settings(group_base=base)
        host, port = p.settings["url"].removeprefix("ldap://").rsplit(":", 1)
        p.gate = Gate(host, int(port))
        p.settings["url"] = f"ldap://127.0.0.1:{p.gate.port}"
        try:
            yield p
        finally:
            p.gate.close()
    else:
        mailman: Mailman = request.getfixturevalue("mailman")
        p = Platform(name, mailman.settings(), mailman=mailman)
        base = p.settings["api_url"]
        rest = base.split("://", 1)[1]
        hostport, _, path = rest.partition("/")
        host, port = hostport.rsplit(":", 1)
        p.gate = Gate(host, int(port))
        p.settings["api_url"] = f"http://127.0.0.1:{p.gate.port}/{path}"
        try:
            yield p
        finally:
            p.gate.close()
