"""group posts: the durable relay's store and post log, per-member deliveries, moderation

Revision ID: 0012
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0009"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("groups") as batch:
        batch.add_column(sa.Column("moderation", sa.String(length=20), server_default="none", nullable=False))
        batch.add_column(sa.Column("moderators", sa.JSON(), nullable=True))
    op.create_table(
        "group_posts",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("group_id", sa.Integer(), sa.ForeignKey("groups.id", ondelete="SET NULL"), nullable=True),
        sa.Column("group_address", sa.String(length=320), nullable=False),
        sa.Column("via", sa.String(length=20), nullable=False),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("sender", sa.String(length=320), nullable=False),
        sa.Column("author", sa.String(length=500), nullable=True),
        sa.Column("subject", sa.String(length=500), nullable=True),
        sa.Column("message_id", sa.String(length=300), nullable=True),
        sa.Column("dedupe_key", sa.String(length=64), nullable=True, unique=True),
        sa.Column("queue_id", sa.String(length=40), nullable=True),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("recipient_count", sa.Integer(), nullable=False),
        sa.Column("has_links", sa.Boolean(), nullable=False),
        sa.Column("has_unsubscribe", sa.Boolean(), nullable=False),
        sa.Column("moderated", sa.Boolean(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("decided_by", sa.String(length=320), nullable=True),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("body", sa.LargeBinary(), nullable=True),
    )
    op.create_index("ix_group_posts_state", "group_posts", ["state"])
    op.create_index("ix_group_posts_group_received", "group_posts", ["group_id", "received_at"])
    op.create_table(
        "group_post_deliveries",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("post_id", BigId, sa.ForeignKey("group_posts.id", ondelete="CASCADE"), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("claimed_by", sa.String(length=100), nullable=True),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.UniqueConstraint("post_id", "email", name="uq_group_post_delivery"),
    )
    op.create_index("ix_group_post_deliveries_claim", "group_post_deliveries", ["post_id", "status", "id"])
    op.create_table(
        "group_sender_allows",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("group_id", sa.Integer(), sa.ForeignKey("groups.id", ondelete="CASCADE"), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("created_by", sa.String(length=320), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("group_id", "email", name="uq_group_sender_allow"),
    )


def downgrade() -> None:
    op.drop_table("group_sender_allows")
    op.drop_index("ix_group_post_deliveries_claim", table_name="group_post_deliveries")
    op.drop_table("group_post_deliveries")
    op.drop_index("ix_group_posts_group_received", table_name="group_posts")
    op.drop_index("ix_group_posts_state", table_name="group_posts")
    op.drop_table("group_posts")
    with op.batch_alter_table("groups") as batch:
        batch.drop_column("moderators")
        batch.drop_column("moderation")
