"""Delivery status notifications (RFC 3464) and abuse reports (RFC 5965), read the one way campaign
bounces and group-mail bounces both need: one `Finding` per failed recipient.

A hard bounce is the address's own permanent failure (5.1.x but 5.1.7/5.1.8, which are about our sender,
and 5.2.1 mailbox disabled); a soft one is 4.x.x and every other 5.x.x (mailbox full, policy blocks,
routing, content); an abuse report is a complaint.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import Message as EmailMessage

STATUS_RE = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")


@dataclass(frozen=True)
class Finding:
    kind: str  # hard_bounce | soft_bounce | complaint
    status: str  # the enhanced status code, e.g. 5.1.1 ("" for a complaint)
    recipient: str | None  # Final-Recipient, as the reporting MTA saw it
    diagnostic: str

    @property
    def detail(self) -> str:
        return " ".join(p for p in (self.status, self.diagnostic) if p)[:500]


def classify_status(status: str, action: str = "failed") -> str | None:
    """hard_bounce, soft_bounce, or None for a status that is not a failure (delivered, relayed)."""
    action = action.strip().lower()
    if action in ("delivered", "relayed", "expanded"):
        return None
    if action == "delayed":
        return "soft_bounce"
    m = STATUS_RE.search(status)
    if m is None:
        return "soft_bounce" if action == "failed" else None
    klass, subject, detail = m.groups()
    if klass == "2":
        return None
    if klass == "4":
        return "soft_bounce"
    if (subject == "1" and detail not in ("7", "8")) or (subject, detail) == ("2", "1"):
        return "hard_bounce"  # the address itself: no such user or domain, bad syntax, moved, disabled
    # Anything else is not shown to be the address's own fault: a full mailbox, policy or reputation
    # blocks, our sender refused (5.1.7/5.1.8), routing, content, an expired queue. It may clear up.
    return "soft_bounce"


def _field(block: EmailMessage, name: str) -> str:
    value = block.get(name)
    return str(value).strip() if value is not None else ""


def parse_report(data: bytes) -> list[Finding]:
    """What a bounce or an abuse report says, one Finding per failed recipient."""
    msg = message_from_bytes(data, policy=policy.compat32)
    found: list[Finding] = []
    if msg.get_content_type() == "multipart/report":
        report_type = (msg.get_param("report-type") or "").lower()  # type: ignore[union-attr]
        for part in msg.walk():
            ctype = part.get_content_type()
            if ctype == "message/feedback-report" or (
                report_type == "feedback-report" and not found and ctype == "text/plain"
            ):
                found.append(Finding("complaint", "", None, "abuse report (feedback-report)"))
                continue
            if ctype != "message/delivery-status":
                continue
            payload = part.get_payload()
            blocks = [b for b in payload if isinstance(b, EmailMessage)] if isinstance(payload, list) else []
            for block in blocks[1:] if len(blocks) > 1 else blocks:
                action = _field(block, "Action")
                status = _field(block, "Status")
                if not action and not status:
                    continue
                kind = classify_status(status, action or "failed")
                if kind is None:
                    continue
                recipient = _field(block, "Final-Recipient") or _field(block, "Original-Recipient")
                found.append(
                    Finding(
                        kind,
                        status,
                        recipient.split(";", 1)[-1].strip() or None,
                        " ".join(_field(block, "Diagnostic-Code").split()),
                    )
                )
        if found:
            return found
    # Not a standard report: many MTAs still quote the enhanced status code in plain text.
    text = _plain_text(msg)
    m = STATUS_RE.search(text)
    if m is not None and m.group(1) in "45":
        kind = classify_status(m.group(0))
        if kind:
            return [Finding(kind, m.group(0), None, "non-standard bounce")]
    return []


def _plain_text(msg: EmailMessage) -> str:
    for part in msg.walk():
        if part.get_content_type() == "text/plain":
            payload = part.get_payload(decode=True)
            if isinstance(payload, bytes):
                return payload.decode("utf-8", "replace")[:20000]
    return ""
