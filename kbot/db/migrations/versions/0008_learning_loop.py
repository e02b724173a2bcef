"""The learning loop: adapter promotion history, one active adapter at most, reviewed corrections.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "adapter_promotions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("version", sa.String(64), nullable=True),
        sa.Column("previous", sa.String(64), nullable=True),
        sa.Column("by", sa.String(256), nullable=False),
        sa.Column("forced", sa.Boolean, nullable=False),
        sa.Column("evaluation", sa.JSON, nullable=False),
    )
    op.create_index("ix_adapter_promotions_at", "adapter_promotions", ["at"])
    # Databases from before the constraint may hold several active rows (a race the old code
    # allowed): keep the most recently activated one.
    op.execute(
        "UPDATE adapters SET active = false WHERE active AND version <> ("
        "SELECT version FROM adapters WHERE active "
        "ORDER BY activated_at DESC NULLS LAST, version DESC LIMIT 1)"
    )
    op.create_index(
        "uq_adapters_one_active",
        "adapters",
        ["active"],
        unique=True,
        sqlite_where=sa.text("active"),
        postgresql_where=sa.text("active"),
    )
    # Existing promotions become the history's first entry, so a rollback has somewhere to go.
    op.execute(
        "INSERT INTO adapter_promotions (at, kind, version, previous, by, forced, evaluation) "
        "SELECT activated_at, 'promote', version, NULL, 'before history was kept', false, '{}' "
        "FROM adapters WHERE activated_at IS NOT NULL ORDER BY activated_at"
    )
    with op.batch_alter_table("corrections") as batch:
        batch.add_column(sa.Column("status", sa.String(16), nullable=False, server_default="pending"))
        batch.add_column(sa.Column("approved_text", sa.String, nullable=True))
        batch.add_column(sa.Column("reviewer", sa.String(256), nullable=False, server_default=""))
        batch.add_column(sa.Column("reviewed_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("acl", sa.JSON, nullable=True))
    op.create_index("ix_corrections_status", "corrections", ["status"])


def downgrade() -> None:
    op.drop_index("ix_corrections_status", "corrections")
    with op.batch_alter_table("corrections") as batch:
        for column in ("acl", "reviewed_at", "reviewer", "approved_text", "status"):
            batch.drop_column(column)
    op.drop_index("uq_adapters_one_active", "adapters")
    op.drop_index("ix_adapter_promotions_at", "adapter_promotions")
    op.drop_table("adapter_promotions")
