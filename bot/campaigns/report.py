"""`/campaign report`: what happened to a campaign, as figures, rates and a chart (PNG).

Rates are over messages delivered to the mail server (sent less later hard bounces). Opens are
flagged against the common 20% benchmark and clicks against 3%; opens are inflated by
mail-privacy proxies (Apple Mail Privacy Protection fetches every image), so clicks are the
engagement figure to trust.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from sqlalchemy import distinct, exists, func, select

from bot.campaigns import service
from bot.campaigns.notes import state_name, status_name
from bot.context import Context
from bot.db.models import Campaign, CampaignEvent, Delivery, Suppression
from bot.i18n import t

OPEN_BENCHMARK = 0.20
CLICK_BENCHMARK = 0.03
COMPLAINT_LIMIT = 0.003  # the bulk-sender rules' spam-rate ceiling


@dataclass
class Figures:
    campaign: str
    state: str
    recipients: int = 0
    sent: int = 0
    delivered: int = 0
    hard_bounces: int = 0
    soft_bounces: int = 0
    unsubscribes: int = 0
    complaints: int = 0
    opens: int = 0
    clicks: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    suppressed_before: int = (
        0  # already suppressed when their turn came: not mailed, not this campaign's doing
    )
    tracking: bool = True
    sent_times: list[datetime] = field(default_factory=list)
    open_times: list[datetime] = field(default_factory=list)
    click_times: list[datetime] = field(default_factory=list)

    def rate(self, n: int) -> float:
        return n / self.delivered if self.delivered else 0.0

    def text(self) -> str:
        def pct(x: float) -> str:
            return f"{x:.1%}"

        attempted = self.sent + self.statuses.get("bounced", 0)
        lines = [
            t("Report for “{name}” ({state}): 1 recipient.", name=self.campaign, state=state_name(self.state))
            if self.recipients == 1
            else t(
                "Report for “{name}” ({state}): {count} recipients.",
                name=self.campaign,
                state=state_name(self.state),
                count=self.recipients,
            ),
            "  "
            + t(
                "sent {sent}, delivered {delivered} ({share} of attempts)",
                sent=self.sent,
                delivered=self.delivered,
                share=pct(self.delivered / attempted) if attempted else "—",
            ),
            "  "
            + t(
                "hard bounces {hard} ({share}), soft bounces {soft}",
                hard=self.hard_bounces,
                share=pct(self.hard_bounces / attempted) if attempted else "—",
                soft=self.soft_bounces,
            ),
            "  "
            + t(
                "unsubscribes {unsubscribes} ({unsubscribe_rate}), complaints {complaints} ({complaint_rate})",
                unsubscribes=self.unsubscribes,
                unsubscribe_rate=pct(self.rate(self.unsubscribes)),
                complaints=self.complaints,
                complaint_rate=pct(self.rate(self.complaints)),
            )
            + (
                "  " + t("⚠ above the 0.3% spam-rate ceiling")
                if self.rate(self.complaints) > COMPLAINT_LIMIT
                else ""
            ),
        ]
        if self.tracking:
            o, c = self.rate(self.opens), self.rate(self.clicks)
            if o > OPEN_BENCHMARK:
                lines.append(
                    "  "
                    + t(
                        "opens {opens} ({rate}) — above the common 20% benchmark",
                        opens=self.opens,
                        rate=pct(o),
                    )
                )
            else:
                lines.append(
                    "  "
                    + t(
                        "opens {opens} ({rate}) — below the common 20% benchmark",
                        opens=self.opens,
                        rate=pct(o),
                    )
                )
            values = {"clicks": self.clicks, "rate": pct(c)}
            if self.opens:
                values["share"] = f"{self.clicks / self.opens:.0%}"
                if c > CLICK_BENCHMARK:
                    clicks = t(
                        "clicks {clicks} ({rate} click-through) — above the common 3% benchmark; {share} of "
                        "openers clicked",
                        **values,
                    )
                else:
                    clicks = t(
                        "clicks {clicks} ({rate} click-through) — below the common 3% benchmark; {share} of "
                        "openers clicked",
                        **values,
                    )
            elif c > CLICK_BENCHMARK:
                clicks = t("clicks {clicks} ({rate} click-through) — above the common 3% benchmark", **values)
            else:
                clicks = t("clicks {clicks} ({rate} click-through) — below the common 3% benchmark", **values)
            lines.append("  " + clicks)
            lines.append(
                "  "
                + t(
                    "Note: opens are inflated by mail-privacy proxies (Apple Mail Privacy Protection "
                    "loads every image), so clicks are the engagement figure to trust."
                )
            )
        else:
            lines.append("  " + t("opens and clicks: not tracked for this campaign."))
        if self.suppressed_before:
            lines.append(
                "  "
                + (
                    t("1 contact was suppressed already when its turn came: not mailed, not counted here.")
                    if self.suppressed_before == 1
                    else t(
                        "{count} contacts were suppressed already when their turn came: not mailed, not "
                        "counted here.",
                        count=self.suppressed_before,
                    )
                )
            )
        others = {k: v for k, v in self.statuses.items() if k not in ("sent", "bounced", "suppressed")}
        if others:
            lines.append(
                "  "
                + t(
                    "not sent: {counts}",
                    counts=", ".join(f"{status_name(k)} {v}" for k, v in sorted(others.items())),
                )
            )
        return "\n".join(lines)


async def build_report(ctx: Context, campaign: Campaign) -> Figures:
    f = Figures(
        campaign=campaign.name,
        state=campaign.state,
        tracking=bool(ctx.settings.campaigns.tracking and campaign.tracking),
    )
    async with ctx.sessions() as session:
        f.statuses = await service.counts(session, campaign.id)
        # A delivery skipped because its address was suppressed already (a bounce or an unsubscribe from
        # elsewhere) is no recipient of this campaign and none of its doing: shown apart.
        f.suppressed_before = f.statuses.get("suppressed", 0)
        f.recipients = sum(f.statuses.values()) - f.suppressed_before
        f.sent = f.statuses.get("sent", 0)
        events = dict(
            (
                await session.execute(
                    select(CampaignEvent.kind, func.count(distinct(CampaignEvent.delivery_id)))
                    .where(CampaignEvent.campaign_id == campaign.id)
                    .group_by(CampaignEvent.kind)
                )
            ).all()
        )
        late_hard = events.get("hard_bounce", 0)
        f.hard_bounces = f.statuses.get("bounced", 0) + late_hard
        f.soft_bounces = events.get("soft_bounce", 0)
        f.complaints = events.get("complaint", 0)
        f.opens = events.get("open", 0)
        f.clicks = events.get("click", 0)
        f.delivered = max(0, f.sent - late_hard)
        f.unsubscribes = (
            await session.execute(
                select(func.count())
                .select_from(Suppression)
                .where(
                    Suppression.campaign_id == campaign.id,
                    Suppression.reason == "unsubscribed",
                    # from a message of its own that reached them before they left
                    exists(
                        select(Delivery.id).where(
                            Delivery.campaign_id == campaign.id,
                            Delivery.email == Suppression.email,
                            Delivery.status == "sent",
                            Delivery.sent_at <= Suppression.created_at,
                        )
                    ),
                )
            )
        ).scalar_one()
        f.sent_times = list(
            (
                await session.execute(
                    select(Delivery.sent_at)
                    .where(Delivery.campaign_id == campaign.id, Delivery.status == "sent")
                    .order_by(Delivery.sent_at)
                )
            ).scalars()
        )
        for kind, target in (("open", f.open_times), ("click", f.click_times)):
            first = (
                select(func.min(CampaignEvent.at))
                .where(CampaignEvent.campaign_id == campaign.id, CampaignEvent.kind == kind)
                .group_by(CampaignEvent.delivery_id)
            )
            target.extend(sorted((await session.execute(first)).scalars()))
    return f


def _unit(span_s: float) -> tuple[float, str]:
    if span_s < 120:
        return 1.0, "seconds"
    if span_s < 2 * 3600:
        return 60.0, "minutes"
    if span_s < 3 * 86400:
        return 3600.0, "hours"
    return 86400.0, "days"


def _cumulative(ax, times: list[datetime], t0: datetime, scale: float, label: str, colour: str) -> None:
    xs = [0.0] + [max(0.0, (t - t0).total_seconds() / scale) for t in times]
    ys = [0] + list(range(1, len(times) + 1))
    ax.step(xs, ys, where="post", label=f"{label} ({len(times)})", color=colour)


def _draw(path: Path, f: Figures, started: datetime | None) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 6), dpi=100)
    top, bottom = fig.subplots(2, 1)
    t0 = started or (f.sent_times[0] if f.sent_times else None)
    top.set_title(
        f"“{f.campaign}”: send — {f.sent} sent, {f.hard_bounces} hard bounces, {f.soft_bounces} soft"
    )
    top.set_ylabel("messages sent")
    if t0 is not None and f.sent_times:
        scale, unit = _unit((f.sent_times[-1] - t0).total_seconds())
        _cumulative(top, f.sent_times, t0, scale, "sent", "#2563eb")
        top.set_xlabel(f"{unit} since the start ({t0:%Y-%m-%d %H:%M} UTC)")
        top.set_ylim(bottom=0)
    else:
        top.text(0.5, 0.5, "nothing sent yet", ha="center", va="center", transform=top.transAxes)
    bottom.set_title("engagement" + ("" if f.tracking else " (tracking off)"))
    bottom.set_ylabel("recipients (cumulative)")
    engaged = f.open_times + f.click_times
    if t0 is not None and engaged:
        scale, unit = _unit((max(engaged) - t0).total_seconds())
        if f.open_times:
            _cumulative(bottom, f.open_times, t0, scale, "opened", "#16a34a")
        if f.click_times:
            _cumulative(bottom, f.click_times, t0, scale, "clicked", "#dc2626")
        bottom.set_xlabel(f"{unit} since the start")
        bottom.set_ylim(bottom=0)
        bottom.legend(loc="upper left")
    else:
        bottom.text(
            0.5,
            0.5,
            "no opens or clicks recorded" if f.tracking else "not tracked",
            ha="center",
            va="center",
            transform=bottom.transAxes,
        )
    fig.tight_layout()
    fig.savefig(path, format="png")


async def render_chart(ctx: Context, campaign: Campaign, figures: Figures) -> Path | None:
    """The chart as a PNG under campaigns.reports_dir; None when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return None
    folder = Path(ctx.settings.campaigns.reports_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = (folder / f"{campaign.name}-{ctx.now():%Y%m%d-%H%M%S}.png").resolve()
    await asyncio.get_running_loop().run_in_executor(None, _draw, path, figures, campaign.started_at)
    return path
