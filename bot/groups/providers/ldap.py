"""Groups kept in an LDAP directory that the company's mail server reads (Postfix `ldap_table`).

Two layouts, as `[providers.ldap] schema` says:
- `groupOfNames` / `groupOfUniqueNames`: a group entry (found by its `address_attribute`, `mail`)
  whose `member` / `uniqueMember` values are people's DNs, resolved from their mail address under
  `people_base`. Such a group must have a member, so the last one leaving is replaced by the group's
  own DN (a placeholder Postfix expands to nothing; Postroom never lists it).
- `mail-attribute`: the group entry holds the members' addresses themselves
  (`member_mail_attribute`, `rfc822MailMember` by default).

ldap3 is synchronous: each call runs in a worker thread on its own connection, so the event loop
never waits on the directory.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

from bot.config import LdapProviderSettings
from bot.groups.providers.base import (
    GroupMissing,
    Provider,
    ProviderError,
    Refused,
    RemoteGroup,
    RemoteMember,
    RetryLater,
)


def _escape(value: str) -> str:
    from ldap3.utils.conv import escape_filter_chars

    return str(escape_filter_chars(value))


class LdapGroups(Provider):
    name = "ldap"
    label = "LDAP"

    def __init__(self, settings: LdapProviderSettings):
        self.settings = settings
        self._calls = 0
        self.schema = settings.schema_
        self.member_attr = {"groupOfNames": "member", "groupOfUniqueNames": "uniqueMember"}.get(
            self.schema, settings.member_mail_attribute
        )
        self.object_class = (
            "groupOfUniqueNames"
            if self.schema == "groupOfUniqueNames"
            else ("groupOfNames" if self.schema == "groupOfNames" else "nisMailAlias")
        )
        self._dns: dict[str, str] = {}  # member address -> DN

    @property
    def calls(self) -> int:
        return self._calls

    # -- the connection ----------------------------------------------------------------------------
    def _connect(self) -> Any:
        import ldap3
        from ldap3.core.exceptions import LDAPException

        s = self.settings
        try:
            timeout = max(1, math.ceil(s.timeout_s))  # ldap3 packs it into a socket option: whole seconds
            server = ldap3.Server(s.url, connect_timeout=timeout)
            conn = ldap3.Connection(
                server,
                user=s.bind_dn,
                password=s.password,
                receive_timeout=timeout,
                raise_exceptions=False,
            )
            if not conn.bind():
                raise RetryLater(
                    f"The LDAP server refused the bind as {s.bind_dn} ({conn.result.get('description')}): check "
                    "[providers.ldap] bind_dn and password."
                )
        except LDAPException as exc:
            raise RetryLater(f"The LDAP server at {s.url} did not answer ({type(exc).__name__}).") from None
        return conn

    async def _run(self, work: Any) -> Any:
        def go() -> Any:
            from ldap3.core.exceptions import LDAPException

            conn = self._connect()
            try:
                return work(conn)
            except LDAPException as exc:
                raise RetryLater(f"The LDAP server failed a call ({type(exc).__name__}: {exc}).") from None
            finally:
                conn.unbind()

        return await asyncio.to_thread(go)

    def _search(self, conn: Any, base: str, flt: str, attrs: list[str]) -> list[Any]:
        import ldap3

        self._calls += 1
        conn.search(base, flt, search_scope=ldap3.SUBTREE, attributes=attrs)
        if conn.result.get("result") not in (0, 32):  # success, no such object
            raise RetryLater(f"The LDAP search under {base} failed ({conn.result.get('description')}).")
        return list(conn.entries)

    def _group(self, conn: Any, address: str) -> Any:
        s = self.settings
        found = self._search(
            conn,
            s.group_base,
            f"(&(objectClass={self.object_class})({s.address_attribute}={_escape(address)}))",
            [self.member_attr],
        )
        if not found:
            raise GroupMissing(f"{address} is not a group under {s.group_base}.")
        return found[0]

    def _dn_of(self, conn: Any, email: str) -> str:
        if email in self._dns:
            return self._dns[email]
        s = self.settings
        found = self._search(
            conn, s.people_base, f"({s.people_mail_attribute}={_escape(email)})", [s.people_mail_attribute]
        )
        if not found:
            raise Refused(f"No LDAP entry under {s.people_base} has the address {email}.")
        self._dns[email] = str(found[0].entry_dn)
        return self._dns[email]

    def _mails_of(self, conn: Any, dns: list[str]) -> dict[str, str]:
        """DN (lower case) -> address, one search for all of them."""
        s = self.settings
        wanted = {dn.lower() for dn in dns}
        known = {dn.lower(): e for e, dn in self._dns.items() if dn.lower() in wanted}
        missing = [dn for dn in dns if dn.lower() not in known]
        import ldap3

        for dn in missing:  # one base read each (portable; entryDN filters are OpenLDAP's own)
            self._calls += 1
            conn.search(dn, "(objectClass=*)", search_scope=ldap3.BASE, attributes=[s.people_mail_attribute])
            for e in conn.entries:
                values = e[s.people_mail_attribute].values
                if values:
                    known[dn.lower()] = str(values[0]).lower()
                    self._dns[str(values[0]).lower()] = dn
        return known

    # -- reading -------------------------------------------------------------------------------------
    async def list_groups(self) -> list[RemoteGroup]:
        s = self.settings

        def work(conn: Any) -> list[RemoteGroup]:
            entries = self._search(
                conn, s.group_base, f"(objectClass={self.object_class})", [s.address_attribute, "cn"]
            )
            out = []
            for e in entries:
                values = e[s.address_attribute].values if s.address_attribute in e else []
                if values:
                    cn = e["cn"].values[0] if "cn" in e and e["cn"].values else None
                    out.append(RemoteGroup(str(values[0]).lower(), str(cn) if cn else None, None))
            return out

        return list(await self._run(work))

    async def members(self, address: str) -> list[RemoteMember]:
        def work(conn: Any) -> list[RemoteMember]:
            group = self._group(conn, address)
            values = [str(v) for v in group[self.member_attr].values]
            if self.schema == "mail-attribute":
                return [RemoteMember(v.lower()) for v in values]
            own = str(group.entry_dn).lower()
            dns = [v for v in values if v.lower() != own]
            mails = self._mails_of(conn, dns)
            return [RemoteMember(mails[dn.lower()]) for dn in dns if dn.lower() in mails]

        return list(await self._run(work))

    # -- writing -------------------------------------------------------------------------------------
    def _modify(self, conn: Any, dn: str, changes: dict[str, Any]) -> int:
        self._calls += 1
        conn.modify(dn, changes)
        return int(conn.result.get("result", 0))

    async def add_one(self, address: str, member: RemoteMember) -> None:
        import ldap3

        def work(conn: Any) -> None:
            group = self._group(conn, address)
            value = member.email if self.schema == "mail-attribute" else self._dn_of(conn, member.email)
            code = self._modify(conn, group.entry_dn, {self.member_attr: [(ldap3.MODIFY_ADD, [value])]})
            if code == 20:  # attributeOrValueExists: a member already
                return
            if code != 0:
                raise RetryLater(
                    f"The LDAP server refused to add {member.email} ({conn.result.get('description')})."
                )
            own = str(group.entry_dn)
            if self.schema != "mail-attribute" and own in [str(v) for v in group[self.member_attr].values]:
                self._modify(conn, own, {self.member_attr: [(ldap3.MODIFY_DELETE, [own])]})

        await self._run(work)

    async def remove_one(self, address: str, email: str) -> None:
        import ldap3

        def work(conn: Any) -> None:
            try:
                group = self._group(conn, address)
            except GroupMissing:
                return
            if self.schema == "mail-attribute":
                value = email
            else:
                try:
                    value = self._dn_of(conn, email)
                except Refused:
                    return  # nobody has that address: not a member
            values = [str(v) for v in group[self.member_attr].values]
            if value.lower() not in (v.lower() for v in values):
                return
            ops: list[tuple[Any, list[str]]] = [(ldap3.MODIFY_DELETE, [value])]
            if self.schema != "mail-attribute" and len(values) == 1:
                # groupOfNames must keep a member: the group's own DN stands in for "nobody".
                ops = [(ldap3.MODIFY_REPLACE, [str(group.entry_dn)])]
            code = self._modify(conn, group.entry_dn, {self.member_attr: ops})
            if code not in (0, 16):  # 16: noSuchAttribute (gone already)
                raise RetryLater(
                    f"The LDAP server refused to remove {email} ({conn.result.get('description')})."
                )

        await self._run(work)

    async def create_group(
        self, address: str, name: str | None, external_allowed: bool, first: list[RemoteMember]
    ) -> None:
        s = self.settings

        def work(conn: Any) -> None:
            try:
                self._group(conn, address)
                return
            except GroupMissing:
                pass
            cn = address.split("@", 1)[0]
            dn = f"cn={cn},{s.group_base}"
            if self.schema == "mail-attribute":
                attrs: dict[str, Any] = {"cn": cn, s.address_attribute: address}
                if first:
                    attrs[self.member_attr] = [m.email for m in first]
                classes = ["nisMailAlias", "extensibleObject"]
            else:
                members = [self._dn_of(conn, m.email) for m in first] or [dn]
                attrs = {"cn": cn, s.address_attribute: address, self.member_attr: members}
                classes = [self.object_class, "extensibleObject"]
            self._calls += 1
            conn.add(dn, classes, attrs)
            if conn.result.get("result") not in (0, 68):  # 68: entryAlreadyExists
                raise RetryLater(
                    f"The LDAP server refused to create {dn} ({conn.result.get('description')})."
                )

        await self._run(work)

    async def check(self) -> str:
        s = self.settings

        def work(conn: Any) -> str:
            found = self._search(conn, s.group_base, f"(objectClass={self.object_class})", ["cn"])
            return f"binds as {s.bind_dn} and reads {len(found)} {self.object_class} entries under {s.group_base}"

        try:
            return str(await self._run(work))
        except ProviderError:
            raise
