"""Runs record their backend; every version-1 store gets the program-checker table.

``run.backend`` (NULL for runs made before: unknown) lets an evaluation resume
only on the backend it began on. ``verifierprogram`` was added to version 1
stores by ``create_all`` when they were opened; stores never opened since lack
it.

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
    with op.batch_alter_table("run") as batch:
        batch.add_column(sa.Column("backend", sa.String(), nullable=True))
    if "verifierprogram" not in sa.inspect(op.get_bind()).get_table_names():
        op.create_table(
            "verifierprogram",
            sa.Column("id", sa.Integer(), nullable=False),
            sa.Column("tree_id", sa.Integer(), nullable=False),
            sa.Column("index", sa.Integer(), nullable=False),
            sa.Column("text", sa.String(), nullable=False),
            sa.Column("tokens", sa.Integer(), nullable=False),
            sa.Column("status", sa.String(), nullable=False),
            sa.Column("output", sa.String(), nullable=False),
            sa.Column("error", sa.String(), nullable=False),
            sa.Column("verdict", sa.String(), nullable=True),
            sa.PrimaryKeyConstraint("id"),
            sa.ForeignKeyConstraint(["tree_id"], ["tree.id"]),
        )
        op.create_index("ix_verifierprogram_tree_id", "verifierprogram", ["tree_id"])
    op.execute("UPDATE schemainfo SET value = '2' WHERE key = 'schema_version'")


def downgrade() -> None:
    with op.batch_alter_table("run") as batch:
        batch.drop_column("backend")
    op.execute("UPDATE schemainfo SET value = '1' WHERE key = 'schema_version'")
