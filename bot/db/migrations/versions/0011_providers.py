"""providers: each group names where its membership takes effect; memberships wait for the platform's
confirmation (state); the outbox of changes not yet confirmed; drift found on the platforms

Revision ID: 0011
Revises: 0013 (written after 0008; re-chained at merge after 0009, 0012 and 0013 landed)
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("groups") as batch:
        batch.add_column(sa.Column("provider", sa.String(length=40), nullable=True))
    with op.batch_alter_table("memberships") as batch:
        batch.add_column(sa.Column("state", sa.String(length=20), server_default="active", nullable=False))
    op.create_table(
        "provider_ops",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("group_id", sa.Integer(), nullable=False),
        sa.Column("provider", sa.String(length=40), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("op", sa.String(length=10), nullable=False),
        sa.Column("role", sa.String(length=20), nullable=False),
        sa.Column("cause", sa.String(length=20), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("claimed_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["group_id"], ["groups.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("group_id", "email", name="uq_provider_op"),
    )
    op.create_index("ix_provider_ops_due", "provider_ops", ["provider", "next_attempt_at"], unique=False)
    op.create_table(
        "provider_drift",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("group_id", sa.Integer(), nullable=False),
        sa.Column("provider", sa.String(length=40), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("kind", sa.String(length=10), nullable=False),
        sa.Column("role", sa.String(length=20), nullable=False),
        sa.Column("found_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["group_id"], ["groups.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("group_id", "email", name="uq_provider_drift"),
    )


def downgrade() -> None:
    op.drop_table("provider_drift")
    op.drop_index("ix_provider_ops_due", table_name="provider_ops")
    op.drop_table("provider_ops")
    with op.batch_alter_table("memberships") as batch:
        batch.drop_column("state")
    with op.batch_alter_table("groups") as batch:
        batch.drop_column("provider")
