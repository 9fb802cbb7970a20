"""`postroom doctor`: what the DNS says about each sending domain, one line per check, with what to fix.

For each sending domain (the campaign From domain and every domain with a DKIM key): SPF, each DKIM
selector's published key against the private key Postroom signs with, DMARC's policy and whether the
mail will align with it (DKIM d= or the return path's domain against the From domain), the MX of the
bounce domain, the web base URL being https (RFC 8058 one-click unsubscribe), and the relay in [smtp]
answering (connect, EHLO, STARTTLS and login as configured). Asks the resolver it
is given, so tests use a DNS server on loopback.

The organisational domain is taken as the last two labels (no public suffix list): for a domain under a
two-label suffix (example.co.uk) relaxed alignment reads one label too short, and says so as a failure.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import dns.asyncresolver
import dns.exception
import dns.resolver

from bot.config import Settings
from bot.mail.dkim import DkimKey, DkimSigner

Status = Literal["ok", "warn", "fix"]


@dataclass(frozen=True)
class Finding:
    status: Status
    check: str  # SPF | DKIM | DMARC | MX | web
    subject: str  # the domain (or selector) it is about
    sentence: str

    def line(self) -> str:
        return f"{self.status.upper():<4} {self.check} {self.subject}: {self.sentence}"


class Lookup:
    """TXT and MX look-ups that answer None for "no such record" and raise LookupFailed when the
    resolver itself could not be asked."""

    def __init__(self, nameservers: Sequence[str] = (), port: int = 53, timeout_s: float = 3.0):
        self.resolver = dns.asyncresolver.Resolver(configure=not nameservers)
        if nameservers:
            self.resolver.nameservers = list(nameservers)
        self.resolver.port = port
        self.resolver.timeout = timeout_s
        self.resolver.lifetime = timeout_s

    async def txt(self, name: str) -> list[str] | None:
        try:
            answer = await self.resolver.resolve(name, "TXT")
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return None
        except (dns.exception.Timeout, dns.resolver.NoNameservers) as exc:
            raise LookupFailed(name, exc) from None
        return [b"".join(r.strings).decode("utf-8", "replace") for r in answer]

    async def mx(self, name: str) -> list[str] | None:
        try:
            answer = await self.resolver.resolve(name, "MX")
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return None
        except (dns.exception.Timeout, dns.resolver.NoNameservers) as exc:
            raise LookupFailed(name, exc) from None
        return [r.exchange.to_text().rstrip(".") for r in answer]


class LookupFailed(Exception):
    def __init__(self, name: str, error: BaseException):
        super().__init__(name)
        self.name = name
        self.reason = (
            "no answer in time" if isinstance(error, dns.exception.Timeout) else "no server answered"
        )


def tags(record: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in record.split(";"):
        key, sep, value = part.partition("=")
        if sep:
            out[key.strip().lower()] = "".join(value.split())
    return out


def org_domain(domain: str) -> str:
    return ".".join(domain.split(".")[-2:])


def aligned(domain: str, from_domain: str, strict: bool) -> bool:
    if strict:
        return domain == from_domain
    return org_domain(domain) == org_domain(from_domain)


class Doctor:
    def __init__(self, settings: Settings, signer: DkimSigner, lookup: Lookup):
        self.settings = settings
        self.signer = signer
        self.lookup = lookup

    def sending_domains(self) -> list[str]:
        domains = [self.settings.campaigns.from_address.rsplit("@", 1)[-1].lower()]
        for key in self.signer.keys:
            if key.domain not in domains:
                domains.append(key.domain)
        return domains

    async def run(self) -> list[Finding]:
        findings: list[Finding] = []
        for domain in self.sending_domains():
            for check in (self.spf, self.dkim, self.dmarc):
                try:
                    findings.extend(await check(domain))
                except LookupFailed as exc:
                    findings.append(
                        Finding(
                            "fix",
                            check.__name__.upper(),
                            domain,
                            f"the resolver could not be asked about {exc.name} ({exc.reason}): check the "
                            "network, or name a resolver with --nameserver.",
                        )
                    )
        try:
            findings.append(await self.mx())
        except LookupFailed as exc:
            findings.append(
                Finding(
                    "fix",
                    "MX",
                    self.settings.campaigns.bounce_domain,
                    f"no answer about {exc.name} ({exc.reason}).",
                )
            )
        findings.append(self.web())
        findings.extend(await self.relays())
        return findings

    # -- the relay ------------------------------------------------------------------------------
    async def relays(self) -> list[Finding]:
        """Each route's relay ([smtp] and every [smtp.routes.<name>]), probed at once."""
        names = self.settings.smtp.route_names()
        return list(await asyncio.gather(*(self.relay(name) for name in names)))

    async def relay(self, route: str = "default") -> Finding:
        """Connect, EHLO, STARTTLS and AUTH as configured for `route`: its mail leaves through it or not at all."""
        from bot.mail.probe import relay_problem
        from bot.mail.transport import SmtpTarget

        server = self.settings.smtp.server(route)
        assert server is not None
        target = SmtpTarget.from_settings(server, route)
        problem = await relay_problem(target)
        if problem is not None:
            return Finding("fix", "SMTP", target.where, problem[0].lower() + problem[1:])
        logged_in = f", and accepted {target.keys}.username's login" if server.username else ""
        return Finding("ok", "SMTP", target.where, f"the relay answered{logged_in}.")

    # -- SPF ------------------------------------------------------------------------------------
    async def spf(self, domain: str) -> list[Finding]:
        names = [domain]
        bounce = self.settings.campaigns.bounce_domain
        if bounce != domain and aligned(bounce, domain, strict=False):
            names.append(bounce)  # the return path's domain is what SPF checks
        found: list[Finding] = []
        for name in names:
            records = [r for r in (await self.lookup.txt(name) or []) if r.lower().startswith("v=spf1")]
            if not records:
                found.append(
                    Finding(
                        "fix",
                        "SPF",
                        name,
                        f'no SPF record: publish a TXT record at {name} such as "v=spf1 mx '
                        f'include:<your relay or email service> -all" naming the servers that send its mail.',
                    )
                )
            elif len(records) > 1:
                found.append(
                    Finding(
                        "fix",
                        "SPF",
                        name,
                        f"{len(records)} SPF records, which receivers treat as an error: merge them into one.",
                    )
                )
            else:
                record = records[0]
                ending = record.split()[-1].lower()
                if ending in ("+all", "all", "?all"):
                    found.append(
                        Finding(
                            "fix",
                            "SPF",
                            name,
                            f"“{record}” ends in {ending}, which lets any server send as {name}: end it in -all or ~all.",
                        )
                    )
                else:
                    found.append(Finding("ok", "SPF", name, f"“{record}”."))
        return found

    # -- DKIM -----------------------------------------------------------------------------------
    async def dkim(self, domain: str) -> list[Finding]:
        keys = [k for k in self.signer.keys if k.domain == domain]
        if not keys:
            parent = self.signer.keys_for(domain)
            if parent:
                return [
                    Finding(
                        "ok",
                        "DKIM",
                        domain,
                        f"signed with the key of {parent[0].domain} (s={parent[0].selector}), checked below.",
                    )
                ]
            return [
                Finding(
                    "fix",
                    "DKIM",
                    domain,
                    f"Postroom has no DKIM key for {domain}, so its mail leaves unsigned unless the relay "
                    f"signs it: run postroom dkim keygen {domain} <selector>, publish the record it prints and "
                    "add the key to [dkim].",
                )
            ]
        return [await self._selector(key) for key in keys]

    async def _selector(self, key: DkimKey) -> Finding:
        name = key.dns_name()
        subject = f"{key.domain} (s={key.selector})"
        records = [r for r in (await self.lookup.txt(name) or []) if "p=" in r]
        if not records:
            return Finding(
                "fix",
                "DKIM",
                subject,
                f'no DKIM record at {name}: publish the TXT record "{_short(key.dns_record())}" '
                f"(postroom dkim keygen printed it; the whole value is {len(key.dns_record())} characters).",
            )
        published = tags(records[0]).get("p", "")
        if not published:
            return Finding(
                "fix",
                "DKIM",
                subject,
                f"the record at {name} has an empty p=, which revokes the key: publish it.",
            )
        if published != key.public_key_b64():
            return Finding(
                "fix",
                "DKIM",
                subject,
                f"the key published at {name} is not the public half of the private key Postroom signs with, "
                "so every signature fails: publish the record for this key, or point key_file at the key "
                "that record was made for.",
            )
        return Finding("ok", "DKIM", subject, f"the published key matches ({key.algorithm}).")

    # -- DMARC ----------------------------------------------------------------------------------
    async def dmarc(self, domain: str) -> list[Finding]:
        where = f"_dmarc.{domain}"
        records = [r for r in (await self.lookup.txt(where) or []) if r.upper().startswith("V=DMARC1")]
        policy_from = domain
        if not records and org_domain(domain) != domain:
            where = f"_dmarc.{org_domain(domain)}"
            records = [r for r in (await self.lookup.txt(where) or []) if r.upper().startswith("V=DMARC1")]
            policy_from = org_domain(domain)
        if not records:
            return [
                Finding(
                    "fix",
                    "DMARC",
                    domain,
                    f'no DMARC record: publish a TXT record at _dmarc.{domain} such as "v=DMARC1; p=none; '
                    f'rua=mailto:dmarc@{domain}", read the reports, then move to p=quarantine '
                    "(Gmail and Yahoo require one for bulk senders).",
                )
            ]
        t = tags(records[0])
        policy = t.get("sp", t.get("p", "")) if policy_from != domain else t.get("p", "")
        policy = policy.lower()
        strict_dkim = t.get("adkim", "r").lower() == "s"
        strict_spf = t.get("aspf", "r").lower() == "s"
        keys = self.signer.keys_for(domain)
        dkim_ok = any(aligned(k.domain, domain, strict_dkim) for k in keys)
        bounce = self.settings.campaigns.bounce_domain
        spf_ok = aligned(bounce, domain, strict_spf)
        findings = []
        if not dkim_ok and not spf_ok:
            why = []
            why.append(
                f"DKIM signs as d={keys[0].domain} under adkim=s" if keys else "Postroom signs no DKIM for it"
            )
            why.append(
                f"the return path's domain {bounce} "
                + ("is not it (aspf=s)" if strict_spf else "is another organisation's")
            )
            findings.append(
                Finding(
                    "fix",
                    "DMARC",
                    domain,
                    f"policy p={policy or 'none'} (at {where}), but neither DKIM nor SPF aligns with {domain} "
                    f"({'; '.join(why)}), so receivers treat its mail as failing DMARC: add a DKIM key for "
                    f"{domain} to [dkim] (postroom dkim keygen {domain} <selector>).",
                )
            )
        elif policy in ("", "none"):
            findings.append(
                Finding(
                    "warn",
                    "DMARC",
                    domain,
                    f"policy p=none (at {where}) asks receivers to do nothing with failing mail: once its "
                    "reports show only your own servers, move to p=quarantine.",
                )
            )
        else:
            via = "DKIM" if dkim_ok else "SPF"
            findings.append(Finding("ok", "DMARC", domain, f"p={policy} (at {where}), aligned by {via}."))
        return findings

    # -- MX and web -----------------------------------------------------------------------------
    async def mx(self) -> Finding:
        bounce = self.settings.campaigns.bounce_domain
        hosts = await self.lookup.mx(bounce)
        if not hosts or hosts == [""]:
            return Finding(
                "fix",
                "MX",
                bounce,
                f"the bounce domain {bounce} has no MX record, so bounces and complaints never come back: "
                "publish an MX pointing at the server that hands bounces+…@ mail to Postroom's SMTP port.",
            )
        return Finding("ok", "MX", bounce, "bounces go to " + ", ".join(sorted(hosts)) + ".")

    def web(self) -> Finding:
        url = self.settings.web.base_url
        if url.startswith("https://"):
            return Finding("ok", "web", url, "https, as one-click unsubscribe needs.")
        return Finding(
            "fix",
            "web",
            url,
            "web.base_url is not https: Gmail and Yahoo take one-click unsubscribe (RFC 8058) only over "
            "https; serve Postroom behind TLS and set web.base_url to the https address.",
        )


def _short(record: str) -> str:
    return record if len(record) <= 60 else record[:48] + "…"
