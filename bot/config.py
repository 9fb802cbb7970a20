"""Settings: one TOML file, every key overridable as POSTROOM_<SECTION>__<KEY>, validated at start.

The file is `--config`, else `$POSTROOM_CONFIG`, else `./postroom.toml` (absent is fine: defaults).
`manifests/postroom.example.toml` documents every key.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from pathlib import Path
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict
from pydantic_settings.exceptions import SettingsError


class ConfigError(Exception):
    """A configuration problem, worded as one sentence for the person starting Postroom."""


UNSET = ""  # a derived setting nobody gave: see Settings._derive_from_org

# The signing secrets' rule (bot/secret_policy.py enforces it when `postroom serve` starts): 32 or more
# random characters. Loading the file refuses only what is plainly too short (under 16), with the same rule.
SECRET_MIN_LENGTH = 32
SECRET_LOAD_FLOOR = 16
REPORT_LINK_HOURS = (1.0, 24.0 * 30)  # campaigns.report_link_hours: 1 hour to 30 days
SECRET_RULE = (
    f"must be {SECRET_MIN_LENGTH} or more random characters (postroom serve refuses anything shorter, "
    "predictable or published; postroom init writes one)"
)


def _secret_floor(v: str | None) -> str | None:
    if v and len(v) < SECRET_LOAD_FLOOR:
        raise ValueError(SECRET_RULE)
    return v or None


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DatabaseSettings(_Section):
    url: str = "sqlite+aiosqlite:///postroom.db"

    @field_validator("url")
    @classmethod
    def _known_driver(cls, v: str) -> str:
        if not (v.startswith("sqlite") or v.startswith("postgresql")):
            raise ValueError("must be an sqlite+aiosqlite:// or postgresql+asyncpg:// URL")
        return normalise_database_url(v)


def normalise_database_url(url: str) -> str:
    """Accept the plain scheme people paste (postgresql://, sqlite://) and pick the async driver."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+asyncpg://" + url.split("://", 1)[1]
    if url.startswith("sqlite://") and not url.startswith("sqlite+aiosqlite://"):
        return "sqlite+aiosqlite://" + url.split("://", 1)[1]
    return url


DEFAULT_ROUTE = "default"
_ROUTE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,39}")


class SmtpServer(_Section):
    """One outbound mail server: where a route's mail is handed over, with its own login and pool."""

    host: str = "127.0.0.1"
    port: int = Field(default=2525, ge=1, le=65535)
    username: str | None = None
    password: str | None = Field(default=None, repr=False)
    starttls: bool = False
    timeout_s: float = Field(default=30.0, gt=0)
    connections: int = Field(default=2, ge=1, le=64)
    # RFC 2920 when the server offers PIPELINING: MAIL, RCPT and DATA in one write (bot/mail/transport.py);
    # false speaks one command at a time even then.
    pipelining: bool = True
    # Messages per second of one sending run over this route; None: campaigns.rate_per_s, 0: no limit.
    rate_per_s: float | None = Field(default=None, ge=0)

    @field_validator("username", "password")
    @classmethod
    def _empty_is_none(cls, v: str | None) -> str | None:
        return v or None


class SmtpRoute(SmtpServer):
    """A named route, `[smtp.routes.<name>]`: host and port are its own, never borrowed from [smtp]."""

    host: str  # required: a route without its own server is [smtp]
    port: int = Field(ge=1, le=65535)


def route_name_problem(name: str) -> str | None:
    if not _ROUTE_NAME.fullmatch(name):
        return "must be lower-case letters, digits, - and _ (at most 40), like bulk or transactional"
    if name == DEFAULT_ROUTE:
        return "is [smtp] itself: name the other routes anything else"
    return None


class SmtpSettings(SmtpServer):
    """[smtp] is the route named "default"; `[smtp.routes.<name>]` tables are the others
    (POSTROOM_SMTP__ROUTES__<NAME>__HOST and so on from the environment)."""

    routes: dict[str, SmtpRoute] = {}
    # The route of a campaign or automation that names none, by the domain of its sender (From).
    domain_routes: dict[str, str] = {}

    @field_validator("routes", mode="before")
    @classmethod
    def _route_names(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        out = {}
        for name, table in value.items():
            key = str(name)  # lower case only: the environment's names are (POSTROOM_SMTP__ROUTES__BULK__…)
            problem = route_name_problem(key)
            if problem:
                raise ValueError(f"route {name!r} {problem}")
            out[key] = table
        return out

    @model_validator(mode="after")
    def _known_domain_routes(self) -> SmtpSettings:
        # Keys are normalised rather than refused: "Acme.example." (upper case, or the absolute form DNS tools
        # print) is the very domain acme.example names, so there is one right reading and nothing to ask.
        # Two keys that are the same domain are refused: which route was meant is the admin's to say.
        mapped: dict[str, str] = {}
        given: dict[str, str] = {}
        for domain, route in self.domain_routes.items():
            name = route.strip().lower()
            if name not in self.route_names():
                raise ValueError(
                    f"domain_routes sends {domain} to route {route!r}, which is not configured "
                    f"(there are: {', '.join(self.route_names())})"
                )
            key = route_domain(domain)
            if key in given:
                raise ValueError(
                    f"domain_routes names {given[key]!r} and {domain!r}, which are the same domain ({key}): "
                    "keep one of them"
                )
            given[key], mapped[key] = domain, name
        self.domain_routes = mapped
        return self

    def route_names(self) -> list[str]:
        return [DEFAULT_ROUTE, *sorted(self.routes)]

    def server(self, route: str) -> SmtpServer | None:
        """The server of `route` ([smtp] for "default"); None when no such route is configured."""
        return self if route == DEFAULT_ROUTE else self.routes.get(route)

    def keys(self, route: str) -> str:
        """Where `route`'s settings live, for sentences that say what to check."""
        return "smtp" if route == DEFAULT_ROUTE else f"smtp.routes.{route}"

    def route_for(self, chosen: str | None, sender: str) -> str:
        """The route mail from `sender` takes: the one chosen, else domain_routes by its domain, else default."""
        if chosen:
            return chosen
        return self.domain_routes.get(route_domain(sender.rsplit("@", 1)[-1]), DEFAULT_ROUTE)


# What [org] holds until someone sets it: obvious placeholders, which `postroom serve` and `postroom chat`
# refuse (org_problem), so no example organisation ever names itself in real mail.
PLACEHOLDER_ORG_NAME = "Your Organisation"
PLACEHOLDER_DOMAIN = "your-company.example"
PLACEHOLDER_POSTAL_ADDRESS = "Your street, postcode and city"
MAX_ORG_NAME = 200
MAX_POSTAL_ADDRESS = 500
# The characters bot/values.py refuses in stored text (C0/C1 controls, text-direction overrides and
# isolates, unpaired surrogates): they would reach every campaign message's From: and footer.
_UNSAFE_TEXT = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def org_text_problem(value: str, limit: int) -> str | None:
    """Why `value` (already stripped) can't be org.name or org.postal_address, as the end of a sentence."""
    if not value:
        return "must not be empty"
    found = _UNSAFE_TEXT.search(value)
    if found is not None:
        return f"must not contain control or text-direction characters (it has U+{ord(found.group()):04X})"
    if len(value) > limit:
        return f"must be at most {limit} characters long (it has {len(value)})"
    return None


def normalise_domain(value: str) -> str:
    """Lower case, and an international domain in its ASCII (xn--) form, the form addresses are stored in
    (bot/addresses.py); a domain that can't be written so is left as given, for domain_problem."""
    domain = value.strip().lower().lstrip("@")
    if not domain.isascii():
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            pass
    return domain


def route_domain(value: str) -> str:
    """A domain as smtp.domain_routes keys and looks it up: normalised, without the root's trailing dot."""
    return normalise_domain(value).rstrip(".")


# One label of a host name (RFC 1123): letters, digits and inner hyphens, at most 63 characters.
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


# Mailbox providers anyone can sign up with: listed in org.domains, every one of their users would count
# as staff (internal groups, the internal/external check). An organisation's own domain is never one.
PUBLIC_MAILBOX_DOMAINS = frozenset(
    {
        "gmail.com", "googlemail.com", "outlook.com", "hotmail.com", "hotmail.co.uk", "hotmail.de",
        "hotmail.fr", "live.com", "msn.com", "yahoo.com", "yahoo.co.uk", "yahoo.de", "yahoo.fr",
        "yahoo.co.jp", "ymail.com", "icloud.com", "me.com", "mac.com", "aol.com", "proton.me",
        "protonmail.com", "pm.me", "gmx.de", "gmx.net", "gmx.com", "web.de", "t-online.de", "mail.ru",
        "yandex.ru", "yandex.com", "zoho.com", "fastmail.com", "tutanota.com", "hey.com", "qq.com",
        "foxmail.com", "163.com", "126.com", "yeah.net", "sina.com", "sohu.com", "aliyun.com",
        "naver.com", "daum.net",
    }
)  # fmt: skip


def _ip_literal(domain: str) -> bool:
    """Whether `domain` is an IP address, bare or as an address literal ([10.0.0.1], [IPv6:…])."""
    inner = domain[1:-1] if domain.startswith("[") and domain.endswith("]") else domain
    try:
        ipaddress.ip_address(inner.removeprefix("ipv6:"))
    except ValueError:
        return False
    return True


def domain_problem(domain: str) -> str | None:
    """Why `domain` (normalised) is not a mail domain, as the end of a sentence; None when it is one."""
    if _ip_literal(domain):
        # alice@10.0.0.1 goes to that host, not through the company's MX: no address there is staff's
        return (
            "is an IP address, not a mail domain: mail to an address at it goes straight to that host; list "
            "the company's mail domains, like acme.com"
        )
    if domain.rsplit(".", 1)[-1].isdigit():
        return (
            "ends in a number, which no top-level domain does (mail software reads it as an IP address); list "
            "the company's mail domains, like acme.com"
        )
    if domain in PUBLIC_MAILBOX_DOMAINS:
        return (
            "is a public mailbox provider's domain: listed, every one of its users would count as "
            "the organisation's staff; list only domains your organisation owns"
        )
    if (
        "." not in domain
        or domain.startswith(".")
        or domain.endswith(".")
        or len(domain) > 253
        or _UNSAFE_TEXT.search(domain)
        or any(c in domain for c in ' /@:,;<>"')
        or not all(_LABEL.fullmatch(label) for label in domain.split("."))
    ):
        return "is not a mail domain like acme.com"
    return None


class OrgSettings(_Section):
    name: str = PLACEHOLDER_ORG_NAME
    # What is internal (`internal_address`): exactly one of these — a subdomain only if listed itself.
    domains: list[str] = [PLACEHOLDER_DOMAIN]
    postal_address: str = PLACEHOLDER_POSTAL_ADDRESS
    # The language of the pages recipients open (unsubscribe, preview, link errors): en or zh_CN.
    locale: Literal["en", "zh_CN"] = "en"

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        v = v.strip()
        problem = org_text_problem(v, MAX_ORG_NAME)
        if problem:
            raise ValueError(problem)
        return v

    @field_validator("postal_address")
    @classmethod
    def _postal_address(cls, v: str) -> str:
        v = v.strip()
        problem = org_text_problem(v, MAX_POSTAL_ADDRESS)
        if problem:
            raise ValueError(problem)
        return v

    @field_validator("domains")
    @classmethod
    def _lower(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("must list at least one mail domain of the company")
        domains = [normalise_domain(d) for d in v]
        for d in domains:
            problem = domain_problem(d)
            if problem:
                raise ValueError(f"{d!r} {problem}")
        return domains


class RolesSettings(_Section):
    hr: list[str] = []
    senders: list[str] = []
    approvers: list[str] = []
    admins: list[str] = []

    @field_validator("hr", "senders", "approvers", "admins")
    @classmethod
    def _lower(cls, v: list[str]) -> list[str]:
        return [e.strip().lower() for e in v]


class WebSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    base_url: str = "http://127.0.0.1:8080"
    # Signs every link in mail and every preview link. No default: `postroom serve` refuses to start
    # without a strong one (bot/secret_policy.py); commands that sign nothing run without it.
    secret: str | None = Field(default=None, repr=False)
    # Unsubscribe links from before 0.2 carried the address; none are made now, but mail already sent
    # holds them and must keep working. Switch off once such mail is older than anyone acts on.
    legacy_unsubscribe_tokens: bool = True
    # Reverse proxies whose X-Forwarded-For / X-Forwarded-Proto are believed (addresses or networks).
    # None by default: the client address is the connection's, so no client can name its own address
    # and slip past the per-IP signup limit. Behind nginx/Caddy on the same host: ["127.0.0.1", "::1"].
    trusted_proxies: list[str] = []

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, v: list[str]) -> list[str]:
        for item in v:
            try:
                ipaddress.ip_network(item.strip(), strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address or network") from None
        return [item.strip() for item in v]

    @field_validator("secret", mode="before")
    @classmethod
    def _empty_secret_is_unset(cls, v: object) -> object:
        return v or None

    @field_validator("secret")
    @classmethod
    def _long_enough(cls, v: str | None) -> str | None:
        return _secret_floor(v)

    @field_validator("base_url")
    @classmethod
    def _http(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return v.rstrip("/")


class CampaignSettings(_Section):
    templates_dir: str = "templates"
    # UNSET ("") values are derived from [org] by Settings._derive_from_org, the one place that does it.
    from_address: str = UNSET  # unset: news@<org.domains[0]>
    from_name: str = UNSET  # unset: org.name
    unsubscribe_mailbox: str = UNSET  # unset: unsubscribe@<the from address's domain>
    batch_size: int = Field(default=500, ge=1, le=10_000)
    approval_ttl_hours: float = Field(default=72, gt=0)
    required_approvals: int = Field(default=1, ge=1, le=10)
    # delivery engine (bot/campaigns/engine.py)
    rate_per_s: float = Field(default=0, ge=0)  # 0: no limit
    connections_per_domain: int = Field(default=0, ge=0, le=64)  # 0: no limit beyond smtp.connections
    lease_s: float = Field(default=30, gt=0)
    max_attempts: int = Field(default=5, ge=1, le=50)
    retry_base_s: float = Field(default=60, ge=0)
    retry_max_s: float = Field(default=3600, ge=0)
    error_window: int = Field(default=200, ge=1)
    error_min_samples: int = Field(default=50, ge=1)
    error_pause_share: float = Field(default=0.5, gt=0, le=1)
    # the same bare 5xx at RCPT (no enhanced code) over one connection for this many recipients in a row
    # at more than one domain (or before the run's first delivery), nothing delivered over it in between:
    # the relay's fault, the campaign pauses and suppresses none of them (bot/campaigns/engine.py)
    same_refusal_limit: int = Field(default=3, ge=2, le=1000)
    # ... for this many distinct recipients in a row at one domain, over any connections, while other
    # domains take mail: that domain's messages wait and are tried again later (with backoff), its
    # refusals leave the error window, nobody there is suppressed
    domain_refusal_limit: int = Field(default=10, ge=2, le=100000)
    poll_s: float = Field(default=2.0, gt=0)
    # A template that takes longer than this to render one message is stopped and refused (preview,
    # submit, and each message at send time); a real one renders in well under a millisecond.
    render_timeout_s: float = Field(default=0.5, ge=0.01, le=30)
    # Previews and the review before a submit (templates nobody approved yet) render in this many
    # processes of their own, started on the first render, so the server keeps its GIL while a template
    # runs into its budget (bot/campaigns/render_pool.py); 0: in threads of the server, as before.
    render_processes: int = Field(default=1, ge=0, le=16)
    # a render process is replaced after this many renders, or when its memory passes this many MB
    render_process_renders: int = Field(default=1000, ge=1)
    render_process_mb: int = Field(default=256, ge=64, le=16384)
    # The sample's spam score at preview and submit (bot/campaigns/spam_score.py): "auto" scores when
    # `spamassassin` is installed, "required" refuses a submit without a score, "off" never runs it.
    spam_check: Literal["auto", "off", "required"] = "auto"
    spam_threshold: float = Field(default=5.0, gt=-100, le=100)  # a score at or above it stops a submit
    spam_timeout_s: float = Field(default=20, gt=0, le=300)
    # compliance
    frequency_cap: int = Field(default=0, ge=0)  # at most N campaign messages per contact per period; 0: off
    frequency_period_days: float = Field(default=7, gt=0)
    # bounces
    bounce_domain: str = UNSET  # VERP return path bounces+<token>@<domain>; unset: from_address's domain
    soft_bounce_limit: int = Field(default=3, ge=1)
    # a bounce or complaint to a return path counts only this long after the send (bot/campaigns/bounces.py)
    bounce_window_days: float = Field(default=30, gt=0, le=3650)
    webhook_secret: str = Field(default="", repr=False)  # signs POST /hooks/email-events; empty: endpoint off
    # tracking and reports
    tracking: bool = True  # opens and clicks, globally; a campaign can switch it off with --no-tracking
    reports_dir: str = "reports"
    report_files_days: float = Field(default=30, ge=1, le=3650)  # report PNGs older than this are pruned
    report_link_hours: float = 72  # the signed report page linked from a report: 1 h to 30 days

    @field_validator("report_link_hours")
    @classmethod
    def _link_hours_bounded(cls, v: float) -> float:
        if not (REPORT_LINK_HOURS[0] <= v <= REPORT_LINK_HOURS[1]):  # also false for nan
            raise ValueError(
                f"must be from {REPORT_LINK_HOURS[0]:g} to {REPORT_LINK_HOURS[1]:g} hours (1 hour to 30 days)"
            )
        return v


class SignupSettings(_Section):
    """Double opt-in signup (/s/<list>) and the contacts it brings: abuse limits, what is recorded."""

    confirm_ttl_hours: float = Field(default=48, gt=0, le=24 * 30)  # an unconfirmed signup expires then
    # What the consent record keeps of the person's connection: off unless the organisation enables it.
    record_ip: bool = False
    record_user_agent: bool = False
    # Rate limits, counted in the database so that every process shares them.
    per_ip_per_hour: int = Field(default=20, ge=1)
    per_address_per_day: int = Field(default=5, ge=1)
    mails_per_address_per_day: int = Field(default=3, ge=1)  # confirmation mails to one address
    # A server-to-server caller of POST /s/<list>.json (a CRM: every signup from one IP) sends
    # `Authorization: Bearer <api_key>` and is not held by per_ip_per_hour; per-address limits still apply.
    api_key: str | None = Field(default=None, repr=False)
    max_body_bytes: int = Field(default=8192, ge=512, le=65536)
    # Optionally refuse an address whose domain has no mail server (a DNS look-up with a timeout).
    mx_check: bool = False
    dns_timeout_s: float = Field(default=2.0, gt=0, le=30)
    dns_servers: list[str] = []  # resolvers to ask (IP addresses); empty: the system's (/etc/resolv.conf)
    dns_port: int = Field(default=53, ge=1, le=65535)
    # Contacts with no open or click for this long are inactive (/contacts inactive, sunset policy).
    sunset_days: int = Field(default=180, ge=1)

    @field_validator("api_key", mode="before")
    @classmethod
    def _empty_key_is_unset(cls, v: object) -> object:
        return v or None

    @field_validator("api_key")
    @classmethod
    def _key_floor(cls, v: str | None) -> str | None:
        return _secret_floor(v)


class AutomationSettings(_Section):
    """Automations: standing campaigns sent when something happens (bot/campaigns/automations.py)."""

    scan_cron: str = "*/10 * * * *"  # how often triggers are looked for (each fires once per contact)
    daily_cap: int = Field(default=1000, ge=1)  # messages per automation per day unless it sets its own
    approval_ttl_days: float = Field(
        default=365, gt=0
    )  # an approved automation runs this long, then asks again
    catch_up_days: int = Field(default=3, ge=0, le=60)  # a date trigger missed while down fires this late
    # An automation pauses itself, with a card, when its complaints or failures pass these shares
    # (of its last `rate_window` messages, counted once `rate_min_samples` are in).
    complaint_pause_share: float = Field(default=0.003, gt=0, le=1)
    error_pause_share: float = Field(default=0.1, gt=0, le=1)
    rate_window: int = Field(default=1000, ge=1)
    rate_min_samples: int = Field(default=20, ge=1)

    @field_validator("scan_cron")
    @classmethod
    def _cron(cls, v: str) -> str:
        from apscheduler.triggers.cron import CronTrigger

        try:
            CronTrigger.from_crontab(v)
        except ValueError as exc:
            raise ValueError(f"must be a cron expression of five fields ({exc})") from None
        return v


class RelaySettings(_Section):
    """The built-in SMTP server: the demo's mailbox, bounces, and (lifecycle issue) group addresses."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(default=2525, ge=0, le=65535)
    mailbox_dir: str | None = None
    # Peers (IP networks) allowed to post to group addresses; bounces and unsubscribe mail come from anyone.
    trusted_networks: list[str] = ["127.0.0.0/8", "::1/128"]
    # Group mail (bot/groups/): bounds on what a post may be, and the fan-out from the post store.
    max_message_bytes: int = Field(default=25 * 1024 * 1024, ge=1024, le=200 * 1024 * 1024)
    max_header_bytes: int = Field(default=256 * 1024, ge=1024, le=10 * 1024 * 1024)
    duplicate_window_hours: float = Field(default=24, gt=0, le=24 * 30)  # a client's retry is not re-sent
    hold_hours: float = Field(default=72, gt=0, le=24 * 90)  # a held post expires after this
    post_retention_days: int = Field(default=180, ge=1, le=3650)  # the post log
    batch_size: int = Field(default=500, ge=1, le=10_000)
    # At most this many copies sent and not yet written (the ones in flight included): a process killed
    # mid-fan-out repeats at most these, not the whole batch. Written as they go, from half of this.
    record_every: int = Field(default=250, ge=1, le=10_000)
    connections: int = Field(default=4, ge=1, le=64)
    # The outbound route group mail leaves by ("default": [smtp]; else a [smtp.routes.<name>]).
    route: str = DEFAULT_ROUTE
    lease_s: float = Field(default=30, gt=0)
    max_attempts: int = Field(default=10, ge=1, le=50)
    retry_base_s: float = Field(default=30, ge=0)
    retry_max_s: float = Field(default=3600, ge=0)
    # The same bare RCPT refusal (no enhanced code) for this many members in a row over one connection,
    # at more than one domain or before anything was delivered: the relay's fault, not theirs.
    same_refusal_limit: int = Field(default=3, ge=2, le=1000)
    # DMARC look-ups for From munging; empty: the system's resolver (/etc/resolv.conf).
    dns_nameservers: list[str] = []
    dns_port: int = Field(default=53, ge=1, le=65535)
    dns_timeout_s: float = Field(default=2.0, gt=0, le=30)
    dns_cache_s: float = Field(default=3600, ge=0)

    @field_validator("route")
    @classmethod
    def _route_lower(cls, value: str) -> str:
        return value.strip().lower()

    @field_validator("trusted_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        import ipaddress

        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not an IP network like 10.0.0.0/8 or 192.0.2.7") from None
        return value

    def trusts(self, peer: str | None) -> bool:
        """Whether an SMTP client at `peer` (an IP address) may post to group addresses."""
        return peer_in(peer, self.trusted_networks)


def peer_in(peer: str | None, networks: list[str]) -> bool:
    """Whether the IP address `peer` is in one of `networks` (an IPv4-mapped IPv6 address counts as IPv4)."""
    import ipaddress

    if not peer:
        return False
    try:
        ip = ipaddress.ip_address(peer.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in ipaddress.ip_network(net, strict=False) for net in networks)


class DkimKeySettings(_Section):
    """One signing key: the domain it signs for (and, lacking their own key, its subdomains), the
    selector its public key is published under, and where the private key is read from at start."""

    domain: str
    selector: str
    key_file: str | None = None  # a PEM file, readable by Postroom's user only
    key_env: str | None = None  # the name of an environment variable holding the PEM text
    algorithm: Literal["rsa-sha256", "ed25519-sha256"] | None = None  # checked against the key when given

    @field_validator("domain")
    @classmethod
    def _domain(cls, v: str) -> str:
        v = v.strip().lower().rstrip(".")
        if not _DNS_NAME.match(v):
            raise ValueError("is not a mail domain like corp.example")
        return v

    @field_validator("selector")
    @classmethod
    def _selector(cls, v: str) -> str:
        v = v.strip().lower()
        if not _SELECTOR.match(v):
            raise ValueError("is not a DKIM selector (letters, digits, - and _, dot-separated)")
        return v

    @field_validator("key_file", "key_env", mode="before")
    @classmethod
    def _empty_is_none(cls, v: object) -> object:
        return v or None

    @model_validator(mode="after")
    def _one_source(self) -> DkimKeySettings:
        if (self.key_file is None) == (self.key_env is None):
            raise ValueError(f"for {self.domain} needs one of key_file or key_env")
        return self


class DkimSettings(_Section):
    """DKIM signing of outgoing mail (bot/mail/dkim.py): each message is signed with the key(s) of its
    From domain; a domain with an RSA and an Ed25519 key gets both signatures."""

    keys: list[DkimKeySettings] = []
    # RSA signatures (about a millisecond of CPU each) made in this many other processes, so sending uses
    # more than one core; 0: on the event loop. Worth it with RSA keys on a machine with cores to spare.
    signing_processes: int = Field(default=0, ge=0, le=64)

    @field_validator("keys")
    @classmethod
    def _distinct(cls, v: list[DkimKeySettings]) -> list[DkimKeySettings]:
        seen: set[tuple[str, str]] = set()
        for k in v:
            if (k.domain, k.selector) in seen:
                raise ValueError(f"lists selector {k.selector} of {k.domain} twice")
            seen.add((k.domain, k.selector))
        return v


_DNS_NAME = re.compile(
    r"^(?=.{1,253}$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)+$"
)
_SELECTOR = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}(?:\.[a-z0-9][a-z0-9_-]{0,62})*$")


class GroupsSettings(_Section):
    """Email groups: the rules file, the lifecycle's grace period, the mass-removal and mass-addition brakes, the
    audit report."""

    rules_file: str | None = None
    leaver_grace_hours: float = Field(default=0, ge=0, le=24 * 365)
    max_remove_share: float = Field(default=0.3, gt=0, le=1)
    max_remove_count: int = Field(default=100, ge=1)
    guard_min_removals: int = Field(default=3, ge=1)
    # The mass-removal brake also counts what was removed from the group over this many hours (removing
    # a few at a time must not empty a group without an approver); 0 turns the window off.
    remove_window_hours: float = Field(default=24, ge=0, le=24 * 31)
    # A plan adding more than this many people to one group waits for an approver (not in a reconcile).
    max_add_count: int = Field(default=100, ge=1)
    audit_cron: str = "0 8 * * mon"
    manual_max_age_days: int = Field(default=365, ge=1)
    # Where a group's membership takes effect unless the group names its own (bot/groups/providers/).
    provider: Literal["local", "google", "microsoft", "wecom", "ldap", "mailman"] = "local"

    @field_validator("audit_cron")
    @classmethod
    def _cron(cls, v: str) -> str:
        from apscheduler.triggers.cron import CronTrigger

        try:
            CronTrigger.from_crontab(v)
        except ValueError as exc:
            raise ValueError(f"must be a cron expression of five fields ({exc})") from None
        return v


class ReportsSettings(_Section):
    """The usage review (/report usage): its digest to HR, and when a post to a group counts as bulk mail."""

    usage_digest: Literal["weekly", "monthly", "off"] = "off"  # Monday / the 1st, 08:00 UTC
    bulk_recipients: int = Field(default=100, ge=2, le=10_000_000)


class PostfixSettings(_Section):
    """Postfix does the fan-out (virtual_alias_maps over Postroom's database) and asks Postroom's policy
    service (check_policy_service) whether a post may go, waits or is refused (manifests/postfix/)."""

    policy_enabled: bool = False
    policy_host: str = "127.0.0.1"
    policy_port: int = Field(default=10040, ge=0, le=65535)
    # Peers allowed to ask; anyone else is disconnected. Postfix runs on the same host by default.
    policy_clients: list[str] = ["127.0.0.0/8", "::1/128"]
    # Clients (IP networks) whose envelope sender is believed: a company sender from anywhere else counts
    # only after SMTP AUTH (sasl_username) as that mailbox, else as an outsider (bot/groups/postfix_policy.py).
    trusted_networks: list[str] = ["127.0.0.0/8", "::1/128"]
    # SMTP AUTH logins that may send as any company address (an application account); empty: none.
    sasl_send_as_anyone: list[str] = []
    # Must equal main.cf's recipient_delimiter (empty: none): eng+x@ reaches eng@, so the policy checks it
    # as eng@. Each character is a delimiter, as in Postfix.
    recipient_delimiter: str = Field(default="+", max_length=10)
    max_request_bytes: int = Field(default=16384, ge=512, le=1024 * 1024)
    max_request_lines: int = Field(default=100, ge=10, le=10_000)
    answer_within_s: float = Field(default=2.0, gt=0, le=30)
    # What a request gets when Postroom can't decide it (database down, a bug): DEFER_IF_PERMIT makes the
    # client try again later, so no post skips the policy and none is lost (bot/groups/postfix_policy.py).
    on_error: Literal["DEFER_IF_PERMIT", "DUNNO"] = "DEFER_IF_PERMIT"
    # A held post waits in Postfix's hold queue; these release (-H) and delete (-d) it and read it.
    postsuper: list[str] = ["/usr/sbin/postsuper"]
    postcat: list[str] = ["/usr/sbin/postcat"]
    config_directory: str | None = None  # postsuper -c / postcat -c; None: Postfix's default

    @field_validator("policy_clients", "trusted_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        return RelaySettings._networks(value)

    @field_validator("sasl_send_as_anyone")
    @classmethod
    def _logins(cls, value: list[str]) -> list[str]:
        return [v.strip().lower() for v in value if v.strip()]

    @field_validator("recipient_delimiter")
    @classmethod
    def _delimiter(cls, value: str) -> str:
        if any(c.isalnum() or c.isspace() or c in '@."' or not c.isprintable() for c in value):
            raise ValueError("must be characters like + or - (not letters, digits, space, @, . or quotes)")
        return value


def _http_url(v: str) -> str:
    if not v.startswith(("http://", "https://")):
        raise ValueError("must start with http:// or https://")
    return v.rstrip("/")


class GoogleProviderSettings(_Section):
    """Google Workspace groups through the Admin SDK Directory API (manifests/google/README.md)."""

    service_account_file: str = ""  # the service account's JSON key (domain-wide delegation)
    delegated_admin: str = ""  # the admin the service account acts as
    api_url: str = "https://admin.googleapis.com"
    settings_api_url: str = "https://www.googleapis.com/groups/v1"  # Groups Settings: allowExternalMembers
    timeout_s: float = Field(default=20.0, gt=0, le=120)

    _api = field_validator("api_url", "settings_api_url")(lambda cls, v: _http_url(v))


class MicrosoftProviderSettings(_Section):
    """Microsoft 365 groups through Microsoft Graph, app-only (manifests/microsoft/README.md)."""

    tenant_id: str = ""
    client_id: str = ""
    client_secret: str = Field(default="", repr=False)
    authority_url: str = "https://login.microsoftonline.com"
    graph_url: str = "https://graph.microsoft.com/v1.0"
    ca_file: str = ""  # a CA bundle for the token endpoint (a TLS-inspecting proxy); empty: the system's
    timeout_s: float = Field(default=20.0, gt=0, le=120)

    _urls = field_validator("authority_url", "graph_url")(lambda cls, v: _http_url(v))


class WeComMailProviderSettings(_Section):
    """WeCom mail groups (企业微信 邮件群组, manifests/wecom-mail/README.md). Empty keys: [wecom]'s."""

    corp_id: str = ""
    secret: str = Field(default="", repr=False)  # an app with the mail-group permission
    api_url: str = ""
    timeout_s: float = Field(default=10.0, gt=0, le=60)


class LdapProviderSettings(_Section):
    """Groups kept in an LDAP directory a mail server reads (manifests/ldap/README.md)."""

    url: str = ""  # ldap://ldap.corp.example or ldaps://…
    bind_dn: str = ""
    password: str = Field(default="", repr=False)
    group_base: str = ""  # the subtree that holds the groups (the bind DN writes here)
    people_base: str = ""  # where member DNs are found by mail (groupOfNames / groupOfUniqueNames)
    schema_: Literal["groupOfNames", "groupOfUniqueNames", "mail-attribute"] = Field(
        default="groupOfNames", alias="schema"
    )
    address_attribute: str = "mail"  # the group's own address
    member_mail_attribute: str = "rfc822MailMember"  # mail-attribute schema: one value per member
    people_mail_attribute: str = "mail"
    timeout_s: float = Field(default=10.0, gt=0, le=60)

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @field_validator("url")
    @classmethod
    def _ldap_scheme(cls, v: str) -> str:
        # ldap3 reads any other scheme's "host:port" as garbage and fails at the first call with an
        # exception name (LDAPInvalidPortError for http://…): say it at start instead.
        if v and not v.lower().startswith(("ldap://", "ldaps://", "ldapi://")):
            raise ValueError(
                "must start with ldap://, ldaps:// or ldapi:// (an LDAP server, not a web address)"
            )
        return v


class MailmanProviderSettings(_Section):
    """Mailman 3 lists through its REST API (manifests/mailman/README.md)."""

    api_url: str = ""  # e.g. http://localhost:8001/3.1
    user: str = ""
    password: str = Field(default="", repr=False)
    timeout_s: float = Field(default=10.0, gt=0, le=60)


class ProvidersSettings(_Section):
    """The platforms groups can live on, and how Postroom waits for them."""

    google: GoogleProviderSettings = GoogleProviderSettings()
    microsoft: MicrosoftProviderSettings = MicrosoftProviderSettings()
    wecom: WeComMailProviderSettings = WeComMailProviderSettings()
    ldap: LdapProviderSettings = LdapProviderSettings()
    mailman: MailmanProviderSettings = MailmanProviderSettings()
    max_inline_wait_s: float = Field(default=10.0, ge=0, le=120)  # a Retry-After up to this is waited out
    retry_base_s: float = Field(default=30.0, gt=0)  # then the outbox retries after this, doubling…
    retry_max_s: float = Field(default=1800.0, gt=0)  # …up to this

    def configured(self) -> list[str]:
        """The platform providers whose settings are filled in."""
        names = []
        if self.google.service_account_file:
            names.append("google")
        if self.microsoft.tenant_id and self.microsoft.client_id:
            names.append("microsoft")
        if self.wecom.secret:
            names.append("wecom")
        if self.ldap.url:
            names.append("ldap")
        if self.mailman.api_url:
            names.append("mailman")
        return names


# The hosts Amazon SNS signs from and confirms subscriptions at: https://sns.<region>.amazonaws.com
# (and .com.cn in China). A SigningCertURL or SubscribeURL anywhere else is refused (bot/campaigns/sns.py).
SNS_HOST_RE = r"sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?"


class SesEventsSettings(_Section):
    """Amazon SES bounces and complaints through an SNS topic, at POST /hooks/ses. Off while topic_arns is empty."""

    topic_arns: list[str] = []  # the SNS topics SES publishes to; any other topic is refused
    # A regular expression the whole SigningCertURL and SubscribeURL must match INSTEAD of
    # https://sns.<region>.amazonaws.com/…: for tests against a local fake only. While it is set anyone who
    # can serve a URL it matches can sign SNS messages, so postroom serve warns at every start.
    unsafe_cert_url_pattern: str = ""

    @field_validator("unsafe_cert_url_pattern")
    @classmethod
    def _compiles(cls, v: str) -> str:
        if v:
            try:
                re.compile(v)
            except re.error as exc:
                raise ValueError(f"is not a regular expression ({exc})") from None
        return v


class SendGridEventsSettings(_Section):
    """SendGrid's signed Event Webhook at POST /hooks/sendgrid. Off while public_key is empty."""

    public_key: str = ""  # the verification key SendGrid shows (base64 DER, or PEM) for the signed webhook
    tolerance_s: int = Field(default=300, ge=30, le=3600)  # X-Twilio-Email-Event-Webhook-Timestamp


class MailgunEventsSettings(_Section):
    """Mailgun's signed webhooks at POST /hooks/mailgun. Off while signing_key is empty."""

    signing_key: SecretStr | None = None  # Sending → Webhooks → HTTP webhook signing key
    tolerance_s: int = Field(default=300, ge=30, le=3600)


class PostmarkEventsSettings(_Section):
    """Postmark's bounce and spam-complaint webhooks at POST /hooks/postmark, behind HTTP basic auth
    (Postmark does not sign webhooks). Off while password is empty."""

    user: str = "postmark"
    password: SecretStr | None = None


class EmailEventsSettings(_Section):
    """The email services' own bounce and complaint webhooks (docs/email-services.md)."""

    ses: SesEventsSettings = SesEventsSettings()
    sendgrid: SendGridEventsSettings = SendGridEventsSettings()
    mailgun: MailgunEventsSettings = MailgunEventsSettings()
    postmark: PostmarkEventsSettings = PostmarkEventsSettings()


class HrSettings(_Section):
    """HR events: the signed webhook."""

    webhook_secret: str | None = Field(default=None, repr=False)
    webhook_max_bytes: int = Field(default=65536, ge=1024, le=10 * 1024 * 1024)
    webhook_tolerance_s: int = Field(default=300, ge=1, le=3600)
    # An HR event dated further ahead than this is refused: one far-future date would make every later
    # event for that person stale (bot/hr/admission.py).
    max_future_skew_s: int = Field(default=86400, ge=0, le=30 * 86400)

    @field_validator("webhook_secret")
    @classmethod
    def _long_enough(cls, v: str | None) -> str | None:
        return _secret_floor(v)


class SlackSettings(_Section):
    """The Slack adapter (adapters/slack). Off unless bot_token is set."""

    bot_token: SecretStr | None = None  # xoxb-…
    signing_secret: SecretStr | None = None  # HTTP mode: verifies requests to /slack/events
    app_token: SecretStr | None = None  # xapp-…, Socket Mode
    mode: Literal["http", "socket"] = "http"
    approvals_channel: str | None = None  # channel id (C…) where approval cards go
    hr_channel: str | None = None  # channel id for HR notices
    api_url: str = "https://slack.com/api/"
    update_interval_s: float = Field(default=3.0, ge=0)  # at most one chat.update per message this often
    answer_within_s: float = Field(default=0.7, gt=0, le=2.5)  # answer in the ack if the core is this fast

    @field_validator("api_url")
    @classmethod
    def _slash(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return v.rstrip("/") + "/"


class DingTalkSettings(_Section):
    """DingTalk (钉钉) in Stream mode. Configured when client_id is set; see manifests/dingtalk/."""

    client_id: str = ""  # the app's AppKey / Client ID
    client_secret: str = Field(default="", repr=False)
    robot_code: str = ""  # the robot's code; empty: the client id (true for a company-internal app's robot)
    corp_id: str = ""  # the organisation's CorpId (required): clicks and events from another corp are ignored
    card_template_id: str = (
        ""  # interactive card template for approvals (manifests/dingtalk/card-template.md)
    )
    approvals_conversation: str = ""  # openConversationId of the approvers' group, or user:<staffId>
    hr_conversation: str = ""
    # The SDK reads $DINGTALK_OPENAPI_ENDPOINT at import; Postroom's own calls use these keys, which default
    # to that variable (tests point both at a local fake).
    openapi_endpoint: str = Field(
        default_factory=lambda: os.environ.get("DINGTALK_OPENAPI_ENDPOINT", "https://api.dingtalk.com")
    )
    oapi_endpoint: str = "https://oapi.dingtalk.com"  # the older API: user lookup by userid
    timeout_s: float = Field(default=10.0, gt=0, le=60)
    locale: Literal["zh_CN", "en"] = "zh_CN"

    @field_validator("openapi_endpoint", "oapi_endpoint")
    @classmethod
    def _http(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return v.rstrip("/")


class WeComSettings(_Section):
    """WeCom (企业微信) self-built app in callback mode. Configured when corp_id is set; see manifests/wecom/."""

    corp_id: str = ""
    agent_id: int = 0
    secret: str = Field(default="", repr=False)
    token: str = Field(default="", repr=False)  # the callback's Token
    encoding_aes_key: str = Field(default="", repr=False)  # the callback's EncodingAESKey (43 characters)
    approvals_users: list[str] = []  # WeCom UserIDs that receive approval cards
    hr_users: list[str] = []
    api_url: str = "https://qyapi.weixin.qq.com"
    timeout_s: float = Field(default=10.0, gt=0, le=60)
    max_clock_skew_s: int = Field(
        default=300, ge=0
    )  # refuse callbacks whose timestamp is further off than this
    locale: Literal["zh_CN", "en"] = "zh_CN"

    @field_validator("encoding_aes_key")
    @classmethod
    def _aes_key(cls, v: str) -> str:
        if v and len(v) != 43:
            raise ValueError("must be the 43-character EncodingAESKey from the WeCom admin console")
        return v

    @field_validator("api_url")
    @classmethod
    def _http(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return v.rstrip("/")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="POSTROOM_", env_nested_delimiter="__", extra="forbid", case_sensitive=False
    )

    database: DatabaseSettings = DatabaseSettings()
    smtp: SmtpSettings = SmtpSettings()
    org: OrgSettings = OrgSettings()
    roles: RolesSettings = RolesSettings()
    web: WebSettings = WebSettings()
    campaigns: CampaignSettings = CampaignSettings()
    signup: SignupSettings = SignupSettings()
    automations: AutomationSettings = AutomationSettings()
    relay: RelaySettings = RelaySettings()
    groups: GroupsSettings = GroupsSettings()
    reports: ReportsSettings = ReportsSettings()
    hr: HrSettings = HrSettings()
    email_events: EmailEventsSettings = EmailEventsSettings()
    postfix: PostfixSettings = PostfixSettings()
    providers: ProvidersSettings = ProvidersSettings()
    dkim: DkimSettings = DkimSettings()

    slack: SlackSettings = SlackSettings()

    dingtalk: DingTalkSettings = DingTalkSettings()
    wecom: WeComSettings = WeComSettings()
    console_locale: Literal["en"] = "en"

    _toml_data: ClassVar[dict[str, Any]] = {}
    _read_env: ClassVar[bool] = True

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        env = (env_settings,) if cls._read_env else ()
        return (init_settings, *env, _DictSource(settings_cls, cls._toml_data))

    @model_validator(mode="after")
    def _known_relay_route(self) -> Settings:
        if self.relay.route not in self.smtp.route_names():
            raise ValueError(
                f"relay.route is {self.relay.route!r}, which is not configured "
                f"(there are: {', '.join(self.smtp.route_names())})"
            )
        return self

    @model_validator(mode="after")
    def _derive_from_org(self) -> Settings:
        """Sender values nobody set follow [org], so no example value ends up in real mail."""
        c = self.campaigns
        from_address = c.from_address or f"news@{self.org.domains[0]}"
        domain = from_address.rsplit("@", 1)[-1].lower()
        self.campaigns = c.model_copy(
            update={
                "from_address": from_address,
                "from_name": c.from_name or self.org.name,
                "unsubscribe_mailbox": c.unsubscribe_mailbox or f"unsubscribe@{domain}",
                "bounce_domain": c.bounce_domain or domain,
            }
        )
        return self

    def is_internal(self, email: str) -> bool:
        """Whether `email` is a company address: `internal_address` over org.domains."""
        return internal_address(email, self.org.domains)


# The characters a company address's local part may have: a dot-atom (RFC 5322) without "%" and "!",
# which Postfix (allow_percent_hack, swap_bangpath) and other MTAs read as "pass this on to another
# host" — x%gmail.com@corp.example is delivered to x@gmail.com.
_PLAIN_LOCAL = re.compile(r"[A-Za-z0-9#$&'*+\-/=?^_`{|}~.]+")


def routing_form(address: str) -> str | None:
    """What in `address`'s local part (before the last @) can route mail to another host: "%", "!",
    "a quoted part", "a source route" or "other characters"; None for a plain local part."""
    local = address.rsplit("@", 1)[0] if "@" in address else address
    if _PLAIN_LOCAL.fullmatch(local):
        return None
    if local.startswith("@") or ":" in local:
        return "a source route"
    if '"' in local or "\\" in local:
        return "a quoted part"
    for char in ("%", "!"):
        if char in local:
            return char
    return "other characters"


def internal_address(address: str, domains: list[str]) -> bool:
    """The one definition of a company address: its domain (after the last @) is exactly one of
    `domains` — a subdomain counts only when it is listed itself — and its local part is plain
    (`routing_form` finds nothing), so no mail server along the way can send it elsewhere."""
    if "@" not in address:
        return False
    domain = address.rsplit("@", 1)[1].lower()
    return domain in domains and routing_form(address) is None


INIT_ORG_COMMAND = "postroom init --org-name … --domain … --postal-address …"


def org_placeholders(settings: Settings) -> list[str]:
    """The [org] keys still unset (so holding their placeholder), in the order the file lists them."""
    org = settings.org
    keys = []
    if org.name.casefold() == PLACEHOLDER_ORG_NAME.casefold():
        keys.append("org.name")
    if PLACEHOLDER_DOMAIN in org.domains:
        keys.append("org.domains")
    if org.postal_address.casefold() == PLACEHOLDER_POSTAL_ADDRESS.casefold():
        keys.append("org.postal_address")
    return keys


def org_problem(settings: Settings, command: str) -> str | None:
    """Why `postroom <command>` must not start with this [org], as one sentence; None when it may.

    Every campaign message names the organisation (From:, the postal address in the footer) and the
    domains decide who is internal: a placeholder there would reach real people."""
    keys = org_placeholders(settings)
    if not keys:
        return None
    verb = "is" if len(keys) == 1 else "are"
    return (
        f"postroom {command} won't start while {', '.join(keys)} {verb} unset (still the placeholder), "
        f"because campaign mail and the internal/external check use them: write them with "
        f"`{INIT_ORG_COMMAND}` or set them in the [org] section of the configuration file."
    )


# The domain manifests/postroom.example.toml uses for its example people and URLs.
EXAMPLE_DOMAIN = "corp.example"


def _on(domain: str, host: str) -> bool:
    return host == domain or host.endswith("." + domain)


def example_problem(settings: Settings, command: str) -> str | None:
    """Why `postroom <command>` must not start with web.base_url or [roles] still on the example config's
    domain when [org] is the company's own: List-Unsubscribe and every link would name the example's
    host, and the roles would name people outside the company. One sentence; None when it may start."""
    if any(_on(EXAMPLE_DOMAIN, d) for d in settings.org.domains):
        return None
    keys: list[str] = []
    host = (urlsplit(settings.web.base_url).hostname or "").lower()
    if _on(EXAMPLE_DOMAIN, host):
        keys.append(f"web.base_url ({settings.web.base_url})")
    roles = settings.roles
    for name in ("hr", "senders", "approvers", "admins"):
        people = [e for e in getattr(roles, name) if _on(EXAMPLE_DOMAIN, e.rpartition("@")[2])]
        if people:
            keys.append(f"roles.{name} ({', '.join(people[:3])}{', …' if len(people) > 3 else ''})")
    if not keys:
        return None
    verb = "is" if len(keys) == 1 else "are"
    return (
        f"postroom {command} won't start while {', '.join(keys)} {verb} still on the example domain "
        f"{EXAMPLE_DOMAIN}, which is not in org.domains ({', '.join(settings.org.domains)}): set them to "
        f"your own in the configuration file."
    )


def sender_problem(settings: Settings, command: str) -> str | None:
    """Why `postroom <command>` must not start with campaign mail's own addresses at a public mailbox
    provider (news@gmail.com): the bounces, with the VERP tokens in their addresses, and the mailto
    unsubscribes would go to a stranger's mailbox. One sentence; None when it may start."""
    c = settings.campaigns
    for key, address in (
        ("campaigns.from_address", c.from_address),
        ("campaigns.unsubscribe_mailbox", c.unsubscribe_mailbox),
        ("campaigns.bounce_domain", f"bounces@{c.bounce_domain}"),
    ):
        domain = address.rpartition("@")[2].lower().rstrip(".")  # gmail.com. is gmail.com to DNS
        if domain in PUBLIC_MAILBOX_DOMAINS or any(domain.endswith("." + d) for d in PUBLIC_MAILBOX_DOMAINS):
            shown = c.bounce_domain if key == "campaigns.bounce_domain" else address
            return (
                f"postroom {command} won't start with {key} {shown} at {domain}, a public mailbox provider: "
                f"bounces and unsubscribe mail would go to a mailbox there, not the company's. Use an address "
                f"on your own domain ({', '.join(settings.org.domains)})."
            )
    return None


def sender_warnings(settings: Settings) -> list[str]:
    """Sentences for serve's start: campaign mail's addresses on a domain that is not in org.domains (a
    separate mail domain is allowed — its bounces and unsubscribes must reach Postroom there)."""
    c = settings.campaigns
    out = []
    for key, address in (
        ("campaigns.from_address", c.from_address),
        ("campaigns.unsubscribe_mailbox", c.unsubscribe_mailbox),
    ):
        domain = address.rpartition("@")[2].lower()
        if domain not in settings.org.domains:
            out.append(
                f"{key} {address} is not on org.domains ({', '.join(settings.org.domains)}): make sure mail to "
                f"{domain} reaches Postroom (its MX), or bounces and unsubscribes are lost."
            )
    return out


class _DictSource(PydanticBaseSettingsSource):
    def __init__(self, settings_cls: type[BaseSettings], data: dict[str, Any]):
        super().__init__(settings_cls)
        self._data = data

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._data)


def config_path(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    if explicit:
        return Path(explicit)
    if os.environ.get("POSTROOM_CONFIG"):
        return Path(os.environ["POSTROOM_CONFIG"])
    default = Path("postroom.toml")
    return default if default.exists() else None


def load_settings(
    path: str | os.PathLike[str] | None = None,
    *,
    read_file: bool = True,
    read_env: bool = True,
    **overrides: Any,
) -> Settings:
    """Read and validate the configuration; raise ConfigError with one sentence on a bad value.

    `overrides` are sections given in code (the demo's, tests'); the environment still wins, unless
    `read_env` is false (the demo: POSTROOM_DATABASE__URL must never point it at a real database).
    """
    chosen = config_path(path) if read_file else None
    data: dict[str, Any] = {}
    if chosen is not None:
        try:
            data = tomllib.loads(chosen.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"The configuration file {chosen} does not exist.") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"The configuration file {chosen} is not valid TOML: {exc}.") from None
    for section, values in overrides.items():
        if isinstance(values, dict):
            data.setdefault(section, {}).update(values)
        else:
            data[section] = values
    Settings._toml_data = data
    Settings._read_env = read_env
    try:
        return Settings()
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc)) from None
    except SettingsError as exc:  # an environment value that should be JSON (a list) and is not
        raise ConfigError(describe_settings_error(exc)) from None
    finally:
        Settings._toml_data = {}
        Settings._read_env = True


def describe_validation_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    key = ".".join(str(p) for p in first["loc"])
    env = "POSTROOM_" + "__".join(str(p).upper() for p in first["loc"])
    if first["type"] == "extra_forbidden":
        return f"Configuration key {key} is not one Postroom knows (see manifests/postroom.example.toml)."
    msg = first["msg"].removeprefix("Value error, ")
    if not first["loc"]:  # a check across sections (Settings' own validators): its sentence says which keys
        return f"In the configuration, {msg[0].lower() + msg[1:]}."
    got = first.get("input")
    got_text = f" (got {got!r})" if got is not None and not isinstance(got, dict) else ""
    if is_secret_key(str(first["loc"][-1])):
        got_text = ""  # the sentence lands in terminals, logs and CI output: never echo a secret
        msg = _SECRET_DETAIL.sub("", msg)
    return f"Configuration key {key} (or ${env}) {msg[0].lower() + msg[1:]}{got_text}."


_SECRET_KEY = re.compile(r"secret|password|passwd|token|encoding_aes_key|api_key|private_key", re.I)
# pydantic quotes parts of a bad value in some messages ("unable to parse string ... 'abc'"): cut them.
_SECRET_DETAIL = re.compile(r",? ?(unable to parse|input was|got) .*$", re.I)


def is_secret_key(name: str) -> bool:
    """Whether a configuration key (its last part) holds a credential whose value is never printed."""
    return bool(_SECRET_KEY.search(name))


def describe_settings_error(exc: SettingsError) -> str:
    """Name the environment variable pydantic-settings could not decode (it names only the section)."""
    import json

    m = re.search(r'field "(\w+)"', str(exc))
    section = m.group(1) if m else ""
    prefix = f"POSTROOM_{section.upper()}__"
    model = Settings.model_fields[section].annotation if section in Settings.model_fields else None
    fields = getattr(model, "model_fields", {})
    for name, value in sorted(os.environ.items()):
        key = name[len(prefix) :].lower() if name.upper().startswith(prefix) else ""
        if key not in fields or "list" not in str(fields[key].annotation):
            continue
        try:
            json.loads(value)
        except ValueError:
            example = "…" if is_secret_key(key) else value
            return (
                f"Environment variable {name} can't be read: a list is written as JSON, "
                f"e.g. {name}='[\"{example}\"]'."
            )
    return f"An environment variable of the [{section}] section can't be read: lists are written as JSON."
