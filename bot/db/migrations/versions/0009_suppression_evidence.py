"""suppression evidence: how each suppression was learnt, the server's reply or DSN, and who did it

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("suppressions") as batch:
        batch.add_column(sa.Column("kind", sa.String(length=20), nullable=True))
        batch.add_column(sa.Column("evidence", sa.Text(), nullable=True))
        batch.add_column(sa.Column("actor", sa.String(length=320), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("suppressions") as batch:
        batch.drop_column("actor")
        batch.drop_column("evidence")
        batch.drop_column("kind")
