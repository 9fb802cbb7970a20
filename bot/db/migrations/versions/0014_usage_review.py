"""usage review: a post's tracking links in the post log; what each groups audit counted (its trends)

Revision ID: 0014
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("group_posts") as batch:
        batch.add_column(sa.Column("has_tracking_links", sa.Boolean(), server_default="0", nullable=False))
    op.create_table(
        "group_health",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("taken_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("groups", sa.Integer(), nullable=False),
        sa.Column("members", sa.Integer(), nullable=False),
        sa.Column("external", sa.Integer(), nullable=False),
        sa.Column("empty", sa.Integer(), nullable=False),
        sa.Column("no_owner", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("group_health") as batch:
        batch.create_index(batch.f("ix_group_health_taken_at"), ["taken_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("group_health") as batch:
        batch.drop_index(batch.f("ix_group_health_taken_at"))
    op.drop_table("group_health")
    with op.batch_alter_table("group_posts") as batch:
        batch.drop_column("has_tracking_links")
