"""Full-text search over stored options, rollouts and answers (``store.text_index``).

Revision ID: 0003
Revises: 0002
"""

from alembic import op

from store.text_index import create_text_index, drop_text_index

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_text_index(op.get_bind())
    op.execute("UPDATE schemainfo SET value = '3' WHERE key = 'schema_version'")


def downgrade() -> None:
    drop_text_index(op.get_bind())
    op.execute("UPDATE schemainfo SET value = '2' WHERE key = 'schema_version'")
