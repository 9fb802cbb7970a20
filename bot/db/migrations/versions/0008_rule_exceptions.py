"""rule exceptions: a person HR removed by hand from a group their rules put them in stays out;
stored scheduled jobs name a handler instead of a code path

Revision ID: 0008
Revises: 0007
"""

import pickle

import sqlalchemy as sa
from alembic import op

# Jobs stored before 0008 named the function that ran them; they now name a handler that the
# composition root registers (bot/scheduler.py). A pending grace-period removal must survive the
# upgrade: APScheduler drops a stored job whose function it cannot import.
LEGACY_JOBS = {
    "bot.hr.lifecycle:finish_leaver": "hr.finish-leaver",
    "bot.hr.lifecycle:retry_event": "hr.retry-event",
    "bot.hr.lifecycle:retry_unknown_leaver": "hr.retry-unknown-leaver",
    "bot.campaigns.jobs:start_campaign": "campaigns.start",
    "bot.groups.planner:announce_pending_job": "groups.announce-plans",
    "bot.groups.report:scheduled_report": "groups.audit-report",
}
STORED_JOB = "bot.scheduler:stored_job"


def _rename_stored_jobs(old_to_new: dict[str, str], new_ref: str | None) -> None:
    bind = op.get_bind()
    if "apscheduler_jobs" not in sa.inspect(bind).get_table_names():
        return
    jobs = sa.table("apscheduler_jobs", sa.column("id", sa.String), sa.column("job_state", sa.LargeBinary))
    for job_id, state in bind.execute(sa.select(jobs.c.id, jobs.c.job_state)).all():
        data = pickle.loads(state)
        if new_ref is not None and data.get("func") in old_to_new:
            data["kwargs"] = {"handler": old_to_new[data["func"]], **(data.get("kwargs") or {})}
            data["func"] = new_ref
        elif new_ref is None and data.get("func") == STORED_JOB:
            handler = (data.get("kwargs") or {}).pop("handler", None)
            back = {v: k for k, v in LEGACY_JOBS.items()}
            if handler not in back:
                continue
            data["func"] = back[handler]
        else:
            continue
        bind.execute(
            jobs.update()
            .where(jobs.c.id == job_id)
            .values(job_state=pickle.dumps(data, pickle.HIGHEST_PROTOCOL))
        )


revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rule_exceptions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("group_id", sa.Integer(), nullable=False),
        sa.Column("person_id", sa.Integer(), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("rule", sa.String(length=120), nullable=False),
        sa.Column("created_by", sa.String(length=320), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["group_id"], ["groups.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["person_id"], ["people.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("group_id", "person_id", name="uq_rule_exception"),
    )
    op.create_index(op.f("ix_rule_exceptions_person_id"), "rule_exceptions", ["person_id"], unique=False)
    _rename_stored_jobs(LEGACY_JOBS, STORED_JOB)


def downgrade() -> None:
    _rename_stored_jobs(LEGACY_JOBS, None)
    op.drop_index(op.f("ix_rule_exceptions_person_id"), table_name="rule_exceptions")
    op.drop_table("rule_exceptions")
