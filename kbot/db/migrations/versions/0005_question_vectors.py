"""Question embeddings in the answer log, for the feedback export.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("answers") as batch:
        batch.add_column(sa.Column("question_vector", sa.JSON, nullable=True))
        batch.add_column(sa.Column("embedding_model", sa.String(512), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("answers") as batch:
        batch.drop_column("embedding_model")
        batch.drop_column("question_vector")
