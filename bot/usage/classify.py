"""The rule-based classifier of the usage review: what a send is for, why we think so, and whether it
used the wrong tool.

Use cases: internal announcement, team coordination, marketing campaign, newsletter, lifecycle mail.
Misuse: a marketing-like post to an email group that reaches external people or goes out in bulk (it has
no consent behind it); a campaign whose whole audience is company addresses (internal news belongs in an
email group); a group whose external members keep growing (a mailing list in disguise). Every decision
carries its reasons, in words, so a person can check it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from bot.i18n import t

Category = Literal["announcement", "coordination", "marketing", "newsletter", "lifecycle"]
CATEGORIES: tuple[Category, ...] = ("announcement", "coordination", "marketing", "newsletter", "lifecycle")
Kind = Literal["post", "campaign", "automation", "test"]
KINDS: tuple[Kind, ...] = ("post", "campaign", "automation", "test")

_NEWSLETTER = re.compile(
    r"newsletter|digest|bulletin|round-?up|weekly|monthly|edition|issue\s*#?\d|通讯|周报|月报|月刊|简报", re.I
)
_MARKETING = re.compile(
    r"\d+\s*%\s*off|sale\b|discount|offer|promo|deal\b|free\b|webinar|limited|launch|buy|coupon|"
    r"优惠|促销|折扣|限时|免费|新品",
    re.I,
)
# An offer's own words (not "free" or "webinar", which colleagues use too): with external recipients a
# post that says them is marketing, footer or not.
_OFFER = re.compile(
    r"\d+\s*%\s*off|discount|\bsale\b|\boffers?\b|buy now|buy before|coupon|promo code|"
    r"限时|优惠|促销|折扣|打折|[0-9一二三四五六七八九]\s*折",
    re.I,
)
_REPLY = re.compile(r"\s*(?:re|aw|回复|答复)\s*[:：]", re.I)
_ANNOUNCE = re.compile(
    r"announce|all[- ]hands|policy|office|holiday|closure|reminder|welcome|update from|org(anisation|anization)? "
    r"change|通知|公告|放假|提醒",
    re.I,
)
ANNOUNCE_RECIPIENTS = 50  # a post to this many company people reads as an announcement


def label(category: Category) -> str:
    return {
        "announcement": t("internal announcement"),
        "coordination": t("team coordination"),
        "marketing": t("marketing campaign"),
        "newsletter": t("newsletter"),
        "lifecycle": t("lifecycle mail"),
    }[category]


def kind_label(kind: Kind) -> str:
    return {
        "post": t("group post"),
        "campaign": t("campaign"),
        "automation": t("automation"),
        "test": t("test send"),
    }[kind]


@dataclass(frozen=True)
class Send:
    """One send as the review sees it (a post, a campaign's or automation's mail in the period, a test)."""

    kind: Kind
    ref: str  # "#12" for a post, the campaign's or automation's name
    at: datetime
    target: str  # the group's address, the list, "joiners"
    subject: str
    recipients: int
    external: int  # recipients outside org.domains
    has_unsubscribe: bool = False
    has_tracking: bool = False
    has_links: bool = False
    audience_kind: str = ""  # campaigns: list | group | joiners
    trigger: str = ""  # automations: confirmed | date | joined | inactive
    example_external: tuple[str, ...] = ()  # a few of the external recipients, as evidence


@dataclass(frozen=True)
class Flag:
    what: str  # the finding, in words
    evidence: tuple[str, ...]
    fix: str
    ref: str  # what it is about ("post #12", "campaign spring", "group partners@…")


@dataclass(frozen=True)
class Verdict:
    category: Category
    reasons: tuple[str, ...]
    flag: Flag | None = None


def _fix_consent(admin: bool) -> str:
    """The fix for marketing mail in a group; /lists open is admin-only, so anyone else asks an admin."""
    if admin:
        return t(
            "Move this audience to a contact list with consent (/lists open <list> gives it a signup page) "
            "and send it as a campaign: recipients get an unsubscribe link and their consent is on record."
        )
    return t(
        "Move this audience to a contact list with consent (ask an admin to run /lists open <list>, which "
        "gives it a signup page) and send it as a campaign: recipients get an unsubscribe link and their "
        "consent is on record."
    )


def classify(send: Send, *, domains: str, bulk: int, admin: bool = False) -> Verdict:
    """What `send` is for, with the reasons; and a misuse flag when it used the wrong tool."""
    reasons: list[str] = []
    subject = send.subject or ""
    newsletter_words = _NEWSLETTER.search(subject) or _NEWSLETTER.search(send.ref)
    marketing_words = _MARKETING.search(subject)
    internal_only = send.recipients > 0 and send.external == 0
    if send.kind == "automation":
        reasons.append(t("an automation (trigger: {trigger})", trigger=send.trigger or "?"))
        return Verdict("lifecycle", tuple(reasons))
    if send.kind in ("campaign", "test"):
        if send.kind == "test":
            reasons.append(t("one test message of the campaign “{name}”", name=send.ref))
        if send.audience_kind == "joiners":
            reasons.append(t("its audience is the company's new joiners"))
            return Verdict("lifecycle", tuple(reasons))
        if newsletter_words:
            reasons.append(
                t("the subject or name reads like a newsletter (“{word}”)", word=newsletter_words[0])
            )
            category: Category = "newsletter"
        elif internal_only and send.audience_kind == "group":
            reasons.append(t("a campaign to the email group {group}", group=send.target))
            category = "announcement"
        else:
            reasons.append(t("a campaign to the contact list {name}", name=send.target))
            if marketing_words:
                reasons.append(t("the subject reads like an offer (“{word}”)", word=marketing_words[0]))
            category = "marketing"
        if send.kind == "campaign" and internal_only:
            evidence = (
                t(
                    "all {count} recipients are company addresses ({domains})",
                    count=send.recipients,
                    domains=domains,
                ),
                t("audience: {target}", target=send.target),
            )
            flag = Flag(
                t("An internal-only audience reached through a campaign"),
                evidence,
                t(
                    "Internal news belongs in an email group: post it to the group (or create one with /newgroup). "
                    "Campaigns are for people outside the company who gave consent."
                ),
                t("campaign {name}", name=send.ref),
            )
            return Verdict(category, tuple(reasons), flag)
        return Verdict(category, tuple(reasons))
    # A post to an email group: who it reached, then what it looks like.
    reach: list[str] = []
    if send.external:
        who = t(", ").join(send.example_external)
        many = (
            t("{count} external recipients", count=send.external)
            if send.external > 1
            else t("1 external recipient")
        )
        reach.append(t("{reach} ({who})", reach=many, who=who) if who else many)
    if send.recipients >= bulk:
        reach.append(
            t(
                "bulk: {count} recipients (reports.bulk_recipients is {limit})",
                count=send.recipients,
                limit=bulk,
            )
        )
    signals: list[str] = []
    if send.has_unsubscribe:
        signals.append(t("an unsubscribe footer or List-Unsubscribe header"))
    if send.has_tracking:
        signals.append(t("tracking links"))
    # An unsubscribe footer makes a post marketing-like; tracking links only when it also reaches people
    # outside or in bulk (a colleague pastes a link with utm_ parameters to the team now and then). An
    # offer's words alone ("free pizza") never do.
    # A reply ("Re: integration question") is a conversation: only a real unsubscribe footer makes it
    # marketing-like, not a link or an offer's words.
    offer = None if _REPLY.match(subject) else _OFFER.search(subject)
    marketing_like = send.has_unsubscribe or (
        not _REPLY.match(subject) and ((send.has_tracking and bool(reach)) or bool(offer and send.external))
    )
    if marketing_like and newsletter_words:
        reasons.append(t("the subject reads like a newsletter (“{word}”)", word=newsletter_words[0]))
        category = "newsletter"
    elif marketing_like:
        found = offer or marketing_words
        if found:
            reasons.append(t("the subject reads like an offer (“{word}”)", word=found[0]))
        category = "marketing"
    elif send.recipients >= ANNOUNCE_RECIPIENTS or _ANNOUNCE.search(subject):
        found = _ANNOUNCE.search(subject)
        reasons.append(
            t("the subject reads like an announcement (“{word}”)", word=found[0])
            if found
            else t("a post to {count} people", count=send.recipients)
        )
        category = "announcement"
    else:
        reasons.append(t("a post to {group}, {count} recipients", group=send.target, count=send.recipients))
        category = "coordination"
    reasons += signals or [t("no unsubscribe footer, no tracking links")]
    reasons += reach or [t("company recipients only")]
    if marketing_like and reach:
        flag = Flag(
            t("Marketing-like mail posted to an email group"),
            tuple(
                ([t("the subject reads like an offer (“{word}”)", word=offer[0])] if offer else [])
                + signals
                + reach
            ),
            _fix_consent(admin),
            t("post {ref} to {group}", ref=send.ref, group=send.target),
        )
        return Verdict(category, tuple(reasons), flag)
    return Verdict(category, tuple(reasons))


@dataclass
class Growth:
    """A group's external members at each step of the period (oldest first)."""

    group: str
    counts: list[int] = field(default_factory=list)
    newest: tuple[str, ...] = ()

    def flag(self) -> Flag | None:
        """Flagged when the external members grew at least twice (once in a one-step period) and never fell."""
        c = self.counts
        if len(c) < 2 or c[-1] <= c[0]:
            return None
        rises = sum(1 for a, b in zip(c, c[1:], strict=False) if b > a)
        falls = sum(1 for a, b in zip(c, c[1:], strict=False) if b < a)
        if falls or rises < min(2, len(c) - 1):
            return None
        evidence = [
            t(
                "external members {counts} over the period (+{delta})",
                counts=" → ".join(str(n) for n in c),
                delta=c[-1] - c[0],
            )
        ]
        if self.newest:
            evidence.append(t("newest: {who}", who=t(", ").join(self.newest)))
        return Flag(
            t("A group whose external members keep growing"),
            tuple(evidence),
            t(
                "Move the external people to a contact list with consent and turn the group internal "
                "(kind: internal in the group rules): a group is for colleagues."
            ),
            t("group {group}", group=self.group),
        )
