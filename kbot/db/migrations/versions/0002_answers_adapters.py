"""Answer log and adapter registry.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "adapters",
        sa.Column("version", sa.String(64), primary_key=True),
        sa.Column("base_model", sa.String(512), nullable=False),
        sa.Column("path", sa.String(2048), nullable=False),
        sa.Column("active", sa.Boolean, nullable=False),
        sa.Column("training", sa.JSON, nullable=False),
        sa.Column("scores", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("activated_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_adapters_active", "adapters", ["active"])
    op.create_table(
        "answers",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("platform", sa.String(32), nullable=False),
        sa.Column("asker", sa.String(256), nullable=False),
        sa.Column("channel", sa.String(256), nullable=False),
        sa.Column("thread", sa.String(256), nullable=False),
        sa.Column("collections", sa.JSON, nullable=False),
        sa.Column("question", sa.String, nullable=False),
        sa.Column("search_query", sa.String, nullable=False),
        sa.Column("messages", sa.JSON, nullable=False),
        sa.Column("retrieved", sa.JSON, nullable=False),
        sa.Column("answer", sa.String, nullable=False),
        sa.Column("citations", sa.JSON, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error", sa.String, nullable=False),
        sa.Column("base_model", sa.String(512), nullable=False),
        sa.Column("adapter_version", sa.String(64), nullable=True),
        sa.Column("latency_ms", sa.Integer, nullable=False),
    )
    op.create_index("ix_answers_created_at", "answers", ["created_at"])
    op.create_index("ix_answers_thread", "answers", ["thread"])


def downgrade() -> None:
    op.drop_table("answers")
    op.drop_table("adapters")
