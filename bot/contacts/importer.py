"""`postroom contacts import <file.csv> --list <name> [--dry-run]`: external contacts with their consent.

Columns: `email`, `name`, `consent_at` (ISO 8601), `consent_source`, optional `consent_method`,
and any attribute columns. A row without consent is kept but never mailed by a campaign; a bad
row is reported with its line number and the good rows are kept. Someone erased on request is
not imported again. Each consent a row brings is kept in the consent history (bot/consent.py); with
`signup.mx_check` on, an address whose domain has no mail server is reported and left out. `--dry-run`
reads and checks everything in a transaction it rolls back: the report says what would happen.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select

from bot import audit, consent, values
from bot.addresses import domain_of, email_hash, normalise
from bot.contacts.mx import domain_receives_mail
from bot.context import Context
from bot.csvfiles import read_utf8, refuse_unclosed_quote, unguard
from bot.db.models import Contact, ContactList, ListMember, Suppression
from bot.db.upsert import insert_ignore
from bot.errors import UserError
from bot.i18n import t

CORE_COLUMNS = {
    "email",
    "name",
    "consent_at",
    "consent_source",
    "consent_method",
    "lists",
    "list",
    "wording_version",
    "suppressed",
}  # lists, list, wording_version, suppressed: an export's (a suppression is read from the database)
MAX_ATTRIBUTE_LENGTH = 1000


@dataclass
class ImportReport:
    list_name: str
    rows: int = 0
    added: int = 0
    updated: int = 0
    without_consent: int = 0
    erased_skipped: int = 0
    internal: int = 0  # company addresses (org.domains): never on an external list
    internal_domains: set[str] = field(default_factory=set)
    repeated: int = 0  # an export's further rows for a contact's other lists
    bad: list[tuple[int, str]] = field(default_factory=list)
    dry_run: bool = False

    def summary(self) -> str:
        verb = "Would import" if self.dry_run else "Imported"
        lines = [
            f"{verb} {self.added + self.updated} of {self.rows} row{'' if self.rows == 1 else 's'} into list "
            f"“{self.list_name}” "
            f"({self.added} new, {self.updated} updated)."
        ]
        if self.without_consent:
            lines.append(
                f"{self.without_consent} contact{'s have' if self.without_consent != 1 else ' has'} no consent "
                "record (consent_at) and will not be mailed by any campaign."
            )
        if self.internal:
            lines.append(
                f"{self.internal} row{'s were company addresses' if self.internal != 1 else ' was a company address'}"
                f" ({', '.join(sorted(self.internal_domains))}) and {'were' if self.internal != 1 else 'was'} not "
                "imported: campaigns are for people outside the company; colleagues get internal mail through "
                "groups."
            )
        if self.repeated:
            lines.append(
                f"{self.repeated} row{'s' if self.repeated != 1 else ''} of the file repeated a contact "
                "for another list; the first row of each contact was used."
            )
        if self.erased_skipped:
            lines.append(
                f"{self.erased_skipped} row{'s were' if self.erased_skipped != 1 else ' was'} skipped: "
                "erased on request, never imported again."
            )
        if self.bad:
            lines.append(f"{len(self.bad)} row{'s were' if len(self.bad) != 1 else ' was'} not imported:")
            lines += [f"  line {line}: {why}" for line, why in self.bad[:50]]
            if len(self.bad) > 50:
                lines.append(f"  … and {len(self.bad) - 50} more")
        if self.dry_run:
            lines.append("Dry run: nothing was changed.")
        return "\n".join(lines)


def parse_time(text: str) -> datetime:
    value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    if value.tzinfo is None:
        raise ValueError("has no time zone offset")
    return value.astimezone(UTC)


def check_list_name(list_name: str) -> str:
    if (
        not list_name
        or len(list_name) > 200
        or not list_name.isascii()
        or not list_name.replace("-", "").replace("_", "").replace(".", "").isalnum()
    ):
        raise UserError(
            t(
                "“{name}” cannot be a list name: use letters, digits, dot, dash or underscore.",
                name=list_name[:60],
            )
        )
    return list_name


class _DryRun(Exception):
    """Raised at the end of a dry run so its transaction rolls back."""


async def import_contacts(
    ctx: Context, path: str | Path, list_name: str, *, actor: str = "cli", dry_run: bool = False
) -> ImportReport:
    check_list_name(list_name)
    p = Path(path)
    _raw, text = read_utf8(p)
    refuse_unclosed_quote(text)
    reader = csv.DictReader(io.StringIO(text))
    headers = [unguard(h).strip().lower() for h in (reader.fieldnames or [])]
    if "email" not in headers:
        raise UserError(
            t(
                "{path} has no “email” column; the first line must name the columns (email, name, consent_at, …).",
                path=p,
            )
        )
    for column in headers:
        unsafe = values.problem(column, t("A column name in the header"))
        if unsafe is not None:
            raise UserError(unsafe)
    reader.fieldnames = headers
    report = ImportReport(list_name=list_name, dry_run=dry_run)
    try:
        await _import(ctx, reader, p, list_name, actor, report)
    except _DryRun:
        pass
    return report


async def _import(
    ctx: Context, reader: csv.DictReader, p: Path, list_name: str, actor: str, report: ImportReport
) -> None:
    now = ctx.now()
    mx: dict[str, bool] = {}
    async with ctx.sessions() as session, session.begin():
        lst = (
            await session.execute(select(ContactList).where(ContactList.named(list_name)))
        ).scalar_one_or_none()
        if lst is None:
            lst = ContactList(name=list_name)
            session.add(lst)
            await session.flush()
        list_name = report.list_name = lst.name  # the spelling it was made with, in any case typed
        seen: set[str] = set()
        for raw in reader:
            line = reader.line_num
            report.rows += 1
            if None in raw:
                report.bad.append((line, "has more fields than the header"))
                continue
            # an export's cells kept from a spreadsheet's formulas read back as they were
            row = {k: unguard(v) if isinstance(v, str) else v for k, v in raw.items()}
            try:
                email = normalise(row.get("email") or "")
            except UserError as exc:
                report.bad.append((line, exc.sentence))
                continue
            if ctx.settings.is_internal(email):  # the rule signup and /contacts add follow
                report.internal += 1
                domain = domain_of(email)
                report.internal_domains.update(
                    d for d in ctx.settings.org.domains if domain == d or domain.endswith("." + d)
                )
                continue
            if email in seen and "list" in row:  # an export: one row per list, the first row for each
                report.repeated += 1
                continue
            if email in seen:
                report.bad.append((line, f"{email} appears earlier in the file"))
                continue
            seen.add(email)
            if ctx.settings.signup.mx_check:
                domain = domain_of(email)
                if domain not in mx:
                    mx[domain] = await domain_receives_mail(ctx.settings.signup, domain)
                if not mx[domain]:
                    report.bad.append((line, f"{domain} does not receive email (no MX or A record)"))
                    continue
            consent_at = None
            if (row.get("consent_at") or "").strip():
                try:
                    consent_at = parse_time(row["consent_at"])
                except ValueError:
                    report.bad.append(
                        (
                            line,
                            f"consent_at “{row['consent_at'][:40]}” is not an ISO 8601 time with an offset",
                        )
                    )
                    continue
                if consent_at > now:
                    report.bad.append((line, "consent_at is in the future"))
                    continue
            attributes = {
                k: v.strip() for k, v in row.items() if k not in CORE_COLUMNS and k and v and v.strip()
            }
            if any(len(v) > MAX_ATTRIBUTE_LENGTH for v in attributes.values()):
                report.bad.append((line, f"a value is longer than {MAX_ATTRIBUTE_LENGTH} characters"))
                continue
            unsafe = next(
                (
                    found
                    for column, value in (
                        ("name", row.get("name") or ""),
                        ("consent_source", row.get("consent_source") or ""),
                        ("consent_method", row.get("consent_method") or ""),
                        *attributes.items(),
                    )
                    if (found := values.problem(value, column)) is not None
                ),
                None,
            )
            if unsafe is not None:  # a NUL or a VT in a name reaches the To: of every campaign message
                report.bad.append((line, unsafe.rstrip(".")))
                continue
            too_long = [
                f"{column} is longer than {limit} characters"
                for column, limit in (("name", 200), ("consent_source", 500), ("consent_method", 200))
                if len((row.get(column) or "").strip()) > limit
            ]
            if too_long:
                report.bad.append((line, too_long[0]))
                continue
            erased = (
                await session.execute(
                    select(Suppression.reason).where(Suppression.email_hash == email_hash(email))
                )
            ).scalar_one_or_none()
            if erased == "erased":
                report.erased_skipped += 1
                continue
            left_at = await consent.own_leave(session, email, list_name)
            if left_at is not None:  # their own leave wins over the file's claim
                report.bad.append(
                    (
                        line,
                        f"{email} left “{list_name}” themselves on {left_at:%Y-%m-%d}; only their own fresh signup brings them back",
                    )
                )
                continue
            contact = (
                await session.execute(select(Contact).where(Contact.email == email))
            ).scalar_one_or_none()
            name = (row.get("name") or "").strip() or None
            consent_before = contact.consent_at if contact is not None else None
            on_list_before = (
                contact is not None
                and (
                    await session.execute(
                        select(ListMember.contact_id).where(
                            ListMember.list_id == lst.id, ListMember.contact_id == contact.id
                        )
                    )
                ).first()
                is not None
            )
            if contact is None:
                contact = Contact(
                    email=email,
                    name=name,
                    attributes=attributes,
                    consent_at=consent_at,
                    consent_source=(row.get("consent_source") or "").strip() or None,
                    consent_method=(row.get("consent_method") or "").strip() or None,
                )
                session.add(contact)
                await session.flush()
                report.added += 1
            else:
                contact.name = name or contact.name
                contact.attributes = {**(contact.attributes or {}), **attributes}
                if consent_at is not None:  # a file without consent never erases a recorded consent
                    contact.consent_at = consent_at
                    contact.consent_source = (
                        row.get("consent_source") or ""
                    ).strip() or contact.consent_source
                    contact.consent_method = (
                        row.get("consent_method") or ""
                    ).strip() or contact.consent_method
                report.updated += 1
            if contact.consent_at is None:
                report.without_consent += 1
            elif contact.consent_at != consent_before or not on_list_before:  # consent for this list too
                consent.record(
                    session,
                    email=email,
                    kind="imported",
                    at=now,
                    contact_id=contact.id,
                    list_name=list_name,
                    proof=consent.Proof(
                        source=consent.imported_source(
                            f"csv {p.name}: {contact.consent_source or 'no source given'}", contact.consent_at
                        ),
                        wording=contact.consent_method,
                        actor=actor,
                    ),
                )
            await insert_ignore(
                session,
                ListMember,
                [{"list_id": lst.id, "contact_id": contact.id, "subscribed_at": contact.consent_at or now}],
                ["list_id", "contact_id"],
            )
        audit.record(
            session,
            actor=actor,
            via="csv",
            action="contacts.import",
            subject=f"list:{list_name}",
            after={"added": report.added, "updated": report.updated, "bad": len(report.bad)},
            detail=str(p.name),
        )
        if report.dry_run:
            raise _DryRun
