"""person_ids: every source's id for a person, so any source's leaver event finds them

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "person_ids",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("namespace", sa.String(length=100), nullable=False),
        sa.Column("external_id", sa.String(length=200), nullable=False),
        sa.Column("person_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["person_id"], ["people.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("namespace", "external_id", name="uq_person_id"),
    )
    op.create_index(op.f("ix_person_ids_person_id"), "person_ids", ["person_id"], unique=False)
    # People already on record keep the id they were created with.
    op.execute(
        "INSERT INTO person_ids (namespace, external_id, person_id, created_at) "
        "SELECT CASE WHEN source IN ('hr-webhook', 'csv') THEN 'hr' ELSE source END, employee_id, id, created_at "
        "FROM people WHERE employee_id IS NOT NULL"
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_person_ids_person_id"), table_name="person_ids")
    op.drop_table("person_ids")
