"""audiences: consent history, double opt-in signups, rate counts, segments, automations, sunsets;
campaigns gain a kind, a segment expression and what else an approval is bound to; a delivery names
its trigger, so an automation mails a contact once per trigger

Revision ID: 0013
Revises: 0012
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

UTC_DT = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("contact_lists") as batch:
        batch.add_column(sa.Column("signup_open", sa.Boolean(), server_default="0", nullable=False))
        batch.add_column(sa.Column("consent_wording", sa.Text(), nullable=True))
        batch.add_column(sa.Column("wording_version", sa.Integer(), server_default="0", nullable=False))
    with op.batch_alter_table("list_members") as batch:
        batch.add_column(sa.Column("subscribed_at", UTC_DT, nullable=True))
    with op.batch_alter_table("campaigns") as batch:
        batch.add_column(sa.Column("kind", sa.String(length=20), server_default="campaign", nullable=False))
        batch.add_column(sa.Column("audience_where", sa.Text(), nullable=True))
        batch.add_column(sa.Column("bound", sa.Text(), nullable=True))
    with op.batch_alter_table("deliveries") as batch:
        batch.add_column(sa.Column("trigger_key", sa.String(length=200), server_default="", nullable=False))
        batch.drop_constraint("uq_delivery_campaign_email", type_="unique")
        batch.create_unique_constraint(
            "uq_delivery_campaign_email_trigger", ["campaign_id", "email", "trigger_key"]
        )

    op.create_table(
        "consent_events",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("contact_id", sa.Integer(), nullable=True),
        sa.Column("email_hash", sa.String(length=64), nullable=False),
        sa.Column("list_name", sa.String(length=200), nullable=True),
        sa.Column("kind", sa.String(length=30), nullable=False),
        sa.Column("at", UTC_DT, nullable=False),
        sa.Column("source", sa.String(length=500), nullable=True),
        sa.Column("wording", sa.Text(), nullable=True),
        sa.Column("wording_version", sa.String(length=100), nullable=True),
        sa.Column("ip", sa.String(length=64), nullable=True),
        sa.Column("user_agent", sa.String(length=400), nullable=True),
        sa.Column("actor", sa.String(length=320), nullable=True),
        sa.ForeignKeyConstraint(["contact_id"], ["contacts.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_consent_events_contact", "consent_events", ["contact_id", "id"])
    op.create_index("ix_consent_events_email_hash", "consent_events", ["email_hash"])

    op.create_table(
        "signups",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("list_id", sa.Integer(), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=True),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("created_at", UTC_DT, nullable=False),
        sa.Column("expires_at", UTC_DT, nullable=False),
        sa.Column("confirmed_at", UTC_DT, nullable=True),
        sa.Column("source", sa.String(length=500), nullable=True),
        sa.Column("wording", sa.Text(), nullable=True),
        sa.Column("wording_version", sa.String(length=100), nullable=True),
        sa.Column("ip", sa.String(length=64), nullable=True),
        sa.Column("user_agent", sa.String(length=400), nullable=True),
        sa.Column("mails_sent", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["list_id"], ["contact_lists.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("list_id", "email", name="uq_signup_list_email"),
    )
    op.create_index("ix_signups_email", "signups", ["email"])
    op.create_index("ix_signups_expires_at", "signups", ["expires_at"])

    op.create_table(
        "rate_counts",
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("window_start", UTC_DT, nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("key", "window_start"),
    )

    op.create_table(
        "segments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("list_name", sa.String(length=200), nullable=False),
        sa.Column("expression", sa.Text(), nullable=False),
        sa.Column("created_by", sa.String(length=320), nullable=False),
        sa.Column("created_at", UTC_DT, nullable=False),
        sa.Column("updated_at", UTC_DT, nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )

    op.create_table(
        "automations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("campaign_id", sa.Integer(), nullable=False),
        sa.Column("trigger", sa.String(length=20), nullable=False),
        sa.Column("trigger_list", sa.String(length=200), nullable=True),
        sa.Column("attribute", sa.String(length=100), nullable=True),
        sa.Column("offset_days", sa.Integer(), nullable=False),
        sa.Column("inactive_days", sa.Integer(), nullable=True),
        sa.Column("delay_s", sa.Integer(), nullable=False),
        sa.Column("daily_cap", sa.Integer(), nullable=False),
        sa.Column("created_by", sa.String(length=320), nullable=False),
        sa.Column("created_at", UTC_DT, nullable=False),
        sa.Column("last_scan_at", UTC_DT, nullable=True),
        sa.Column("cap_day", sa.String(length=10), nullable=True),
        sa.Column("cap_count", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["campaign_id"], ["campaigns.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("campaign_id"),
        sa.UniqueConstraint("name"),
    )

    op.create_table(
        "sunsets",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("list_name", sa.String(length=200), nullable=False),
        sa.Column("automation", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("requested_by", sa.String(length=320), nullable=False),
        sa.Column("decided_by", sa.String(length=320), nullable=True),
        sa.Column("created_at", UTC_DT, nullable=False),
        sa.Column("decided_at", UTC_DT, nullable=True),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )


def downgrade() -> None:
    for table in ("sunsets", "automations", "segments", "rate_counts", "signups", "consent_events"):
        op.drop_table(table)
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_constraint("uq_delivery_campaign_email_trigger", type_="unique")
        batch.create_unique_constraint("uq_delivery_campaign_email", ["campaign_id", "email"])
        batch.drop_column("trigger_key")
    with op.batch_alter_table("campaigns") as batch:
        batch.drop_column("bound")
        batch.drop_column("audience_where")
        batch.drop_column("kind")
    with op.batch_alter_table("list_members") as batch:
        batch.drop_column("subscribed_at")
    with op.batch_alter_table("contact_lists") as batch:
        batch.drop_column("wording_version")
        batch.drop_column("consent_wording")
        batch.drop_column("signup_open")
