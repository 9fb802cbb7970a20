"""Which sender domains publish a DMARC policy that relaying their mail unchanged would break.

A group copy keeps the author's `From` but leaves from Postroom's servers: for a domain that publishes
`p=reject` or `p=quarantine`, every large mailbox provider refuses or junks it. Those posts go out as
"Name via Group <group@…>" with `Reply-To` the author (Mailman's `dmarc_moderation_action: munge_from`).

Look-ups go through dnspython's asynchronous resolver — the system's, or the name servers in
`relay.dns_nameservers` on `relay.dns_port` — and are cached for the record's TTL (at most
`relay.dns_cache_s`), answers that there is no record included. The organisational domain is tried when a
subdomain has no record (its `sp=` applies); without the public suffix list it is the last two labels.
A look-up that fails is treated as a strict policy: munging a post that did not need it costs nothing,
and relaying one that did loses it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import dns.asyncresolver

log = logging.getLogger(__name__)

STRICT = ("reject", "quarantine")
NEGATIVE_TTL = 300.0


class DmarcPolicies:
    def __init__(
        self,
        nameservers: list[str] | None = None,
        *,
        port: int = 53,
        timeout_s: float = 2.0,
        cache_s: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.nameservers = list(nameservers or [])
        self.port = port
        self.timeout_s = timeout_s
        self._resolver: dns.asyncresolver.Resolver | None = None
        self.cache_s = cache_s
        self.clock = clock
        self._cache: dict[str, tuple[float, str | None, str | None]] = {}  # name -> (until, p, sp)

    @property
    def resolver(self) -> dns.asyncresolver.Resolver:
        """Built at the first look-up: every `postroom` start builds a DmarcPolicies, and importing dnspython
        (~50 ms) and reading resolv.conf are for the relay's first post from an outside domain."""
        if self._resolver is None:
            import dns.asyncresolver

            resolver = dns.asyncresolver.Resolver(configure=not self.nameservers)
            if self.nameservers:
                resolver.nameservers = list(self.nameservers)
            resolver.port = self.port
            resolver.timeout = self.timeout_s
            resolver.lifetime = self.timeout_s
            self._resolver = resolver
        return self._resolver

    async def _record(self, name: str) -> tuple[str | None, str | None]:
        """(p, sp) of the DMARC record at _dmarc.<name>; (None, None) when there is none."""
        now = self.clock()
        hit = self._cache.get(name)
        if hit is not None and hit[0] > now:
            return hit[1], hit[2]
        import dns.resolver

        p: str | None = None
        sp: str | None = None
        ttl = NEGATIVE_TTL
        try:
            answer = await self.resolver.resolve(f"_dmarc.{name}", "TXT")
            ttl = float(answer.rrset.ttl) if answer.rrset is not None else NEGATIVE_TTL
            for rdata in answer:
                text = b"".join(rdata.strings).decode("ascii", "replace")
                tags = _tags(text)
                if tags.get("v", "").upper() == "DMARC1":
                    p, sp = tags.get("p"), tags.get("sp")
                    break
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            pass
        self._cache[name] = (now + min(ttl, self.cache_s), p, sp)
        if len(self._cache) > 50_000:  # bounded: drop the oldest half
            for key in list(self._cache)[: len(self._cache) // 2]:
                del self._cache[key]
        return p, sp

    async def policy(self, domain: str) -> str | None:
        """The policy that applies to mail from `domain` (none, quarantine, reject), or None without one.
        A DNS failure (timeout, SERVFAIL) says `reject`: see the module's note."""
        import dns.exception

        domain = domain.strip().lower().rstrip(".")
        if not domain or len(domain) > 253:
            return None
        try:
            p, _sp = await self._record(domain)
            if p is not None:
                return p.lower()
            labels = domain.split(".")
            if len(labels) > 2:
                org = ".".join(labels[-2:])
                p, sp = await self._record(org)
                chosen = sp or p
                return chosen.lower() if chosen else None
            return None
        except (dns.exception.DNSException, OSError) as exc:
            log.warning("DMARC look-up for %s failed (%s): the From is rewritten to be safe", domain, exc)
            return "reject"

    async def needs_munging(self, address: str | None, internal: Callable[[str], bool]) -> bool:
        """Whether a post by `address` must go out "via" the group."""
        if not address or "@" not in address or internal(address):
            return False
        return (await self.policy(address.rsplit("@", 1)[1])) in STRICT


def _tags(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in text.split(";"):
        if "=" in part:
            k, v = part.split("=", 1)
            out[k.strip().lower()] = v.strip()
    return out
