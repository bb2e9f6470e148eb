"""People label steps; nodes keep each token's log-probability.

``label`` holds a person's verdict on a node (``store.schema.Label``).
``node.token_logprobs`` (default ``[]`` for nodes stored before) holds the
policy's log-probability of each of the option's tokens when it was sampled;
the server-side default also lets a writer of revision 0003 keep inserting.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A plain ADD COLUMN: a batch copy of ``node`` would drop the text index's triggers on it.
    column = sa.Column("token_logprobs", sa.JSON(), nullable=False, server_default=sa.text("'[]'"))
    op.add_column("node", column)
    op.create_table(
        "label",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("tree_id", sa.Integer(), nullable=False),
        sa.Column("node_index", sa.Integer(), nullable=False),
        sa.Column("verdict", sa.String(), nullable=False),
        sa.Column("note", sa.String(), nullable=False),
        sa.Column("author", sa.String(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.ForeignKeyConstraint(["run_id"], ["run.id"]),
        sa.ForeignKeyConstraint(["tree_id"], ["tree.id"]),
        sa.UniqueConstraint("tree_id", "node_index", "author"),
    )
    op.create_index("ix_label_run_id", "label", ["run_id"])
    op.create_index("ix_label_tree_id", "label", ["tree_id"])
    op.execute("UPDATE schemainfo SET value = '4' WHERE key = 'schema_version'")


def downgrade() -> None:
    op.drop_index("ix_label_tree_id", "label")
    op.drop_index("ix_label_run_id", "label")
    op.drop_table("label")
    # SQLite >= 3.35 drops a column in place, keeping the text index's triggers.
    op.execute("ALTER TABLE node DROP COLUMN token_logprobs")
    op.execute("UPDATE schemainfo SET value = '3' WHERE key = 'schema_version'")
