"""Alembic migrations of the store's schema (``store.db.upgrade``).

Revision ``0001`` is schema version 1, the schema before Alembic: a database
with ``schemainfo.schema_version = 1`` and no ``alembic_version`` table is at
``0001``. A new database is created from the models and stamped at the head.
Each later revision changes the schema in place, data kept, on SQLite (through
batch mode) and PostgreSQL alike.
"""
