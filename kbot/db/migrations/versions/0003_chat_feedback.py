"""Inbound event ledger, answer messages, votes and corrections.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def _answer_fk() -> sa.Column:  # type: ignore[type-arg]
    return sa.Column(
        "answer_id", sa.String(36), sa.ForeignKey("answers.id", ondelete="CASCADE"), nullable=False
    )


def upgrade() -> None:
    op.create_table(
        "inbound_events",
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("platform", sa.String(32), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("actor", sa.String(256), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_inbound_events_received_at", "inbound_events", ["received_at"])
    # The rate limit counts one person's recent questions.
    op.create_index("ix_inbound_events_actor", "inbound_events", ["platform", "actor", "received_at"])
    op.create_table(
        "answer_messages",
        sa.Column("platform", sa.String(32), primary_key=True),
        sa.Column("channel", sa.String(256), primary_key=True),
        sa.Column("message_id", sa.String(256), primary_key=True),
        _answer_fk(),
    )
    op.create_index("ix_answer_messages_answer_id", "answer_messages", ["answer_id"])
    op.create_index("ix_answers_platform_channel_thread", "answers", ["platform", "channel", "thread"])
    op.create_table(
        "votes",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        _answer_fk(),
        sa.Column("platform", sa.String(32), nullable=False),
        sa.Column("voter", sa.String(256), nullable=False),
        sa.Column("value", sa.Integer, nullable=False),
        sa.Column("origin", sa.String(32), nullable=False),
        sa.Column("comment", sa.String, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("answer_id", "voter", name="uq_votes_answer_voter"),
    )
    op.create_index("ix_votes_answer_id", "votes", ["answer_id"])
    op.create_index("ix_votes_updated_at", "votes", ["updated_at"])
    op.create_table(
        "corrections",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        _answer_fk(),
        sa.Column("platform", sa.String(32), nullable=False),
        sa.Column("author", sa.String(256), nullable=False),
        sa.Column("text", sa.String, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("answer_id", "author", name="uq_corrections_answer_author"),
    )
    op.create_index("ix_corrections_answer_id", "corrections", ["answer_id"])
    op.create_index("ix_corrections_updated_at", "corrections", ["updated_at"])


def downgrade() -> None:
    op.drop_table("corrections")
    op.drop_table("votes")
    op.drop_index("ix_answers_platform_channel_thread", "answers")
    op.drop_table("answer_messages")
    op.drop_table("inbound_events")
