"""approval submissions: each submit opens a new round, so a rejection voids earlier approvals

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("campaigns") as batch:
        batch.add_column(sa.Column("submission", sa.Integer(), nullable=False, server_default="0"))
    with op.batch_alter_table("approvals") as batch:
        batch.add_column(sa.Column("submission", sa.Integer(), nullable=False, server_default="0"))
        batch.drop_constraint("uq_approval_once", type_="unique")
        batch.create_unique_constraint(
            "uq_approval_once", ["campaign_id", "submission", "approver", "content_hash"]
        )


def downgrade() -> None:
    with op.batch_alter_table("approvals") as batch:
        batch.drop_constraint("uq_approval_once", type_="unique")
        batch.create_unique_constraint("uq_approval_once", ["campaign_id", "approver", "content_hash"])
        batch.drop_column("submission")
    with op.batch_alter_table("campaigns") as batch:
        batch.drop_column("submission")
