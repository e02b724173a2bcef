"""The model's own draft and the grounding check's verdict on it, kept beside the shown answer.

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
    with op.batch_alter_table("answers") as batch:
        # NULL for answers logged before the check existed: their shown text was the model's own.
        batch.add_column(sa.Column("generated", sa.String, nullable=True))
        batch.add_column(sa.Column("grounding", sa.JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("answers") as batch:
        batch.drop_column("grounding")
        batch.drop_column("generated")
