"""Answers that showed the model restricted text, kept out of training exports.

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
    with op.batch_alter_table("answers") as batch:
        # NULL for answers logged before: the export judges those by their retrieved chunks.
        batch.add_column(sa.Column("restricted", sa.Boolean, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("answers") as batch:
        batch.drop_column("restricted")
