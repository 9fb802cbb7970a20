"""Which PersonEvents the lifecycle takes, before anything is looked up or changed.

Events apply in time order per person, so one event dated in the far future would make every later
one "stale" — a leaver would stay in every group for good. An event is taken only when it is dated
between EARLIEST and now + `hr.max_future_skew_s`, and its text and attributes pass bot/values.py.

- HR's sources (the webhook, CSV snapshots) are refused whole with a sentence: HR can correct the
  record and send it again (the webhook answers 422, the importer names the line).
- A messenger's directory (Slack, DingTalk, WeCom) is cleaned instead: nobody can correct it through
  Postroom, and refusing a `left` would keep a leaver in every group. Text loses its control
  characters and overrides, attributes that are no JSON scalar are dropped, and a time outside the
  window is taken as now (in whole seconds).

A database written before this check may already hold a far-future `last_event_at` (or `left_at`):
the next event for that person clears it first (a leave dated in the far future counts from now), so
that event applies.
"""

from __future__ import annotations

import dataclasses
import logging
from datetime import UTC, datetime, timedelta

from sqlalchemy import or_, select, update

from bot import values
from bot.addresses import normalise
from bot.context import Context
from bot.db.models import Person, PersonId
from bot.errors import UserError
from bot.events import PersonEvent
from bot.i18n import t

log = logging.getLogger(__name__)
# Before any HR system Postroom talks to kept events; an earlier date is a default value, not a time.
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
DIRECTORY_SOURCES = ("slack", "dingtalk", "wecom")
MAX_EVENT_ID = 300


HR_SOURCES = ("hr-webhook", "csv")


def id_namespace(source: str) -> str:
    """Whose ids an event's external_id is: the HR system's (webhook and CSV share them) or a messenger's."""
    return "hr" if source in HR_SOURCES else source


def time_problem(
    at: datetime, now: datetime, max_future_skew_s: int, what: str = "occurred_at"
) -> str | None:
    """The sentence that refuses an event time, or None when it is inside the window."""
    if at.tzinfo is None:
        return t("The event's time has no time zone.")
    if at < EARLIEST:
        return t(
            "{what} is {when}, before {earliest}: send the time the change happened.",
            what=what,
            when=f"{at.astimezone(UTC):%Y-%m-%d %H:%M} UTC",
            earliest=f"{EARLIEST:%Y-%m-%d}",
        )
    latest = now + timedelta(seconds=max_future_skew_s)
    if at > latest:
        return t(
            "{what} is {when}, more than {hours} hours after Postroom's clock ({now}): an event can't come "
            "from the future.",
            what=what,
            when=f"{at.astimezone(UTC):%Y-%m-%d %H:%M} UTC",
            hours=f"{max_future_skew_s / 3600:g}",
            now=f"{now.astimezone(UTC):%Y-%m-%d %H:%M} UTC",
        )
    return None


async def admit(ctx: Context, event: PersonEvent) -> PersonEvent:
    """The event to apply: `event` itself, or a cleaned copy (a directory's); UserError when refused."""
    now = ctx.now()
    skew = ctx.settings.hr.max_future_skew_s
    if event.source in DIRECTORY_SOURCES:
        event = _cleaned(event, now, skew)
    else:
        check(event, now, skew)
    await _repair_future_dates(ctx, event, now, now + timedelta(seconds=skew))
    return event


def check(event: PersonEvent, now: datetime, skew: int) -> None:
    """UserError when an HR source's event is dated outside the window or carries a value bot/values.py
    refuses."""
    sentence = time_problem(event.at, now, skew, t("The event's time"))
    if sentence is not None:
        raise UserError(sentence)
    values.check_text(event.event_id, t("The event id"), MAX_EVENT_ID)
    values.check_text(event.external_id, t("The employee id"), values.MAX_ID)
    if event.email is not None:
        values.check_text(event.email, t("The email address"), 320)
    if event.name is not None:
        values.check_name(event.name, t("The name"), values.MAX_NAME)
    values.check_attributes(event.attributes)


def _cleaned(event: PersonEvent, now: datetime, skew: int) -> PersonEvent:
    at = event.at
    if time_problem(at, now, skew) is not None:
        log.warning(
            "%s event %s is dated %s, outside the window: taken as now", event.source, event.event_id, at
        )
        # Whole seconds: a later event from a source with whole-second times must not look older.
        at = now.replace(microsecond=0)
    name = (values.clean_name(event.name)[: values.MAX_NAME] or None) if event.name is not None else None
    email = (values.clean_text(event.email) or None) if event.email is not None else None
    attributes = values.clean_attributes(event.attributes)
    changed = (at, name, email, attributes) != (event.at, event.name, event.email, event.attributes)
    if not changed:
        return event
    if (name, email, attributes) != (event.name, event.email, event.attributes):
        log.warning(
            "%s event %s carried control characters or odd values: cleaned", event.source, event.event_id
        )
    return dataclasses.replace(event, at=at, name=name, email=email, attributes=attributes)


async def _repair_future_dates(ctx: Context, event: PersonEvent, now: datetime, latest: datetime) -> None:
    """The person this event is about stops being blocked by a date from before the window existed:
    a last event after `latest` is forgotten, a leave after it counts from now. One indexed read per
    event; a write only for such a person."""
    known = select(PersonId.person_id).where(
        PersonId.namespace == id_namespace(event.source), PersonId.external_id == event.external_id
    )
    who = [Person.id.in_(known), Person.employee_id == event.external_id]
    if event.email:
        try:
            who.append(Person.email == normalise(event.email, existing=True))
        except UserError:
            pass  # refused below, or by the lifecycle
    async with ctx.sessions() as session, session.begin():
        found = (
            await session.execute(
                select(Person.id, Person.last_event_at, Person.left_at).where(
                    or_(*who), or_(Person.last_event_at > latest, Person.left_at > latest)
                )
            )
        ).all()
        for person_id, last_event_at, left_at in found:
            await session.execute(
                update(Person)
                .where(Person.id == person_id)
                .values(
                    last_event_at=None if last_event_at and last_event_at > latest else last_event_at,
                    left_at=now if left_at and left_at > latest else left_at,
                )
                .execution_options(synchronize_session=False)
            )
            log.warning(
                "person #%d had a last event dated %s and a leave dated %s, after %s: cleared, so their "
                "next event applies",
                person_id,
                last_event_at,
                left_at,
                latest,
            )
