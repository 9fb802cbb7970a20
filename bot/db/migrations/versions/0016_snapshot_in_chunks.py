"""snapshot in chunks: how far a sending campaign's audience has been written into delivery rows (NULL: whole)

Revision ID: 0016
Revises: 0015
"""

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("campaigns") as batch:
        batch.add_column(sa.Column("snapshot_after", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("snapshot_upto", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("campaigns") as batch:
        batch.drop_column("snapshot_upto")
        batch.drop_column("snapshot_after")
