"""The optional MX check of a signup's or an import's domain: a DNS look-up with a timeout.

Only a definite answer refuses an address (the domain does not exist, or has neither MX nor A
records); a timeout or a server failure accepts it: a DNS hiccup must not turn people away.
"""

from __future__ import annotations

from bot.config import SignupSettings


async def domain_receives_mail(settings: SignupSettings, domain: str) -> bool:
    """`has_mail_server` with the configured resolvers and timeout."""
    return await has_mail_server(
        domain,
        timeout_s=settings.dns_timeout_s,
        nameservers=settings.dns_servers or None,
        port=settings.dns_port,
    )


async def has_mail_server(
    domain: str, *, timeout_s: float, nameservers: list[str] | None = None, port: int = 53
) -> bool:
    # dnspython is imported here, not with the module: every `postroom` start builds the signup code, and
    # dnspython costs ~50 ms to import (its name codecs); only a signup or an import with the check looks up.
    import dns.asyncresolver
    import dns.exception
    import dns.resolver

    resolver = dns.asyncresolver.Resolver(configure=nameservers is None)
    if nameservers is not None:
        resolver.nameservers = nameservers
        resolver.port = port
    for kind in ("MX", "A"):
        try:
            await resolver.resolve(domain, kind, lifetime=timeout_s)
            return True
        except dns.resolver.NXDOMAIN:
            return False
        except dns.resolver.NoAnswer:
            continue  # no MX: an A record is the implicit MX (RFC 5321 §5.1)
        except (dns.exception.Timeout, dns.resolver.NoNameservers, OSError):
            return True
    return False
