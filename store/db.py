"""Opening the store: URL resolution, SQLite WAL set-up, schema creation,
checks and upgrades.

A new database is created from the models and stamped with the newest Alembic
revision (``store/migrations``). An existing one must be at that revision:
``upgrade`` (``canopy db upgrade``) brings an older one there in place, its
runs, trees and examples kept; until then every command refuses it with a
one-line error that names the upgrade.
"""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import event, insert, inspect, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, DatabaseError, NoSuchModuleError, OperationalError
from sqlmodel import SQLModel, create_engine

from canopy.errors import CanopyError
from store.schema import SCHEMA_VERSION, SchemaInfo

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
"""Alembic's script folder (``env.py`` and ``versions/``)."""

HEAD_REVISION = f"{SCHEMA_VERSION:04d}"
"""The revision this code's models are: revision ids are the schema version, zero-padded."""

DB_ENV_VAR = "CANOPY_DB"
"""Environment variable holding the default database URL."""


class StoreError(CanopyError):
    """The database cannot be used as asked; the message names the fix."""


def default_db_url() -> str:
    """``$CANOPY_DB``, else SQLite at ``$XDG_DATA_HOME/canopy/canopy.db``
    (``~/.local/share/canopy/canopy.db``)."""
    if url := os.environ.get(DB_ENV_VAR):
        return url
    data_home = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return f"sqlite:///{data_home / 'canopy' / 'canopy.db'}"


def normalize_url(url_or_path: str) -> str:
    """Accept a SQLAlchemy URL or a plain file path (taken as SQLite)."""
    if "://" in url_or_path:
        return url_or_path
    return f"sqlite:///{Path(url_or_path).expanduser().absolute()}"


def _set_sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets the app read while a search writes; busy_timeout makes a writer
    # wait for another instead of failing at once.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def make_engine(url: str | None = None, *, create: bool = True, check: bool = True) -> Engine:
    """An engine for ``url`` (default: ``default_db_url()``).

    With ``create`` the SQLite file's folder and the tables are made and the
    database is checked to be writable; without it a missing SQLite file is an
    error (readers must not create databases). ``check=False`` (only without
    ``create``) skips the schema check, for ``upgrade``. Raises ``StoreError``
    with a one-line reason on any problem.
    """
    url = normalize_url(url or default_db_url())
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise StoreError(f"not a database URL: {url!r} ({exc})") from None
    is_sqlite = parsed.get_backend_name() == "sqlite"
    # SQLite URI filenames ("file:...?mode=ro&uri=true") are left to SQLite itself.
    plain_file = parsed.database and parsed.database != ":memory:" and not parsed.query.get("uri")
    if is_sqlite and plain_file:
        path = Path(parsed.database)
        if not path.exists():
            if not create:
                raise StoreError(f"no database at {path}; run a search first or pass --db")
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"cannot create the database folder {path.parent}: {exc.strerror}") from None
        elif create and not os.access(path, os.W_OK):
            raise StoreError(f"database {path} is read-only; pass a writable --db")
        if create and not os.access(path.parent, os.W_OK):
            raise StoreError(f"database folder {path.parent} is read-only; pass a writable --db")
    try:
        engine = create_engine(url, connect_args={"timeout": 30} if is_sqlite else {})
    except NoSuchModuleError:
        raise StoreError(
            f"unknown database kind {parsed.drivername!r} in {url!r}; use a SQLite path or a "
            "sqlite:/// or postgresql+psycopg:// URL"
        ) from None
    except ImportError as exc:
        raise StoreError(
            f"the driver for {parsed.drivername} is not installed ({exc.name}); pip install it"
        ) from None
    if is_sqlite:
        event.listen(engine, "connect", _set_sqlite_pragmas)
    try:
        if create:
            if inspect(engine).get_table_names() or not _create_schema(engine):
                check_schema(engine)
            _check_writable(engine)
        elif check:
            check_schema(engine)
    except (OperationalError, DatabaseError) as exc:
        engine.dispose()
        raise StoreError(f"cannot use database {url}: {exc.orig}") from None
    except StoreError:
        engine.dispose()
        raise
    return engine


def _check_writable(engine: Engine) -> None:
    """Take and release a write lock, so a read-only database fails now, not mid-search."""
    with engine.connect() as connection:
        if engine.dialect.name == "sqlite":
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        connection.exec_driver_sql("CREATE TABLE IF NOT EXISTS _canopy_write_check (x INTEGER)")
        connection.rollback()


SCHEMA_LOCK = 0x63616E6F7079
"""PostgreSQL advisory lock key ("canopy") held while a process creates the schema."""


def _create_schema(engine: Engine) -> bool:
    """Make an empty database this code's schema, in one transaction: the
    models' tables, what they do not make (the text index), and the stamps of
    the head revision. True if this call made it; False if, once it held the
    lock, another process had made it first.

    Processes opening one new store together (several ``canopy eval`` on a
    fresh shared PostgreSQL database) take turns here: the transaction holds
    the database's write lock (SQLite) or an advisory lock (PostgreSQL) and
    looks for tables again under it."""
    from alembic import command

    from store.text_index import create_text_index

    with engine.connect() as connection:
        if engine.dialect.name == "sqlite":
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK})
        if inspect(connection).get_table_names():
            connection.rollback()
            return False
        SQLModel.metadata.create_all(connection)
        create_text_index(connection)
        connection.execute(insert(SchemaInfo).values(key="schema_version", value=str(SCHEMA_VERSION)))
        command.stamp(_alembic_config(connection), HEAD_REVISION)
        connection.commit()
    return True


def _alembic_config(connection):
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def schema_revision(engine: Engine) -> str | None:
    """The Alembic revision the database is at: ``alembic_version``'s, or
    ``0001`` for a schema-version-1 store made before Alembic; None when it
    is neither (an empty or foreign database, or one older than version 1)."""
    tables = set(inspect(engine).get_table_names())
    with engine.connect() as connection:
        if "alembic_version" in tables:
            return connection.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
        if "schemainfo" in tables:
            version = connection.exec_driver_sql(
                "SELECT value FROM schemainfo WHERE key = 'schema_version'"
            ).scalar()
            return "0001" if version == "1" else None
    return None


def upgrade(engine: Engine) -> tuple[str, str]:
    """Migrate the database in place to ``HEAD_REVISION``, in one transaction
    (on SQLite and PostgreSQL a failed step leaves it as it was); returns the
    revisions before and after.

    Raises:
        StoreError: an empty or foreign database, or one older than schema 1.
    """
    from alembic import command

    before = schema_revision(engine)
    if before is None:
        check_schema(engine)  # says what the database is instead
        raise StoreError("the database has no schema revision Canopy can upgrade; use a new --db")
    if before != HEAD_REVISION:
        with engine.connect() as connection:
            if engine.dialect.name == "sqlite":
                # A migration that copies a table must not fire the foreign keys
                # of the rows that point at it (SQLite ignores this inside a transaction).
                connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
                connection.commit()
            with connection.begin():
                config = _alembic_config(connection)
                if "alembic_version" not in inspect(connection).get_table_names():
                    command.stamp(config, before)
                command.upgrade(config, HEAD_REVISION)
    return before, HEAD_REVISION


def check_schema(engine: Engine) -> None:
    """Raise ``StoreError`` unless the database holds this version's schema."""
    tables = set(inspect(engine).get_table_names())
    if "schemainfo" not in tables:
        if not tables:
            raise StoreError("the database is empty; run a search first")
        if not {"run", "tree", "node"} <= tables:
            shown = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
            raise StoreError(f"the database holds other tables ({shown}), not Canopy's; pass another --db")
        raise StoreError("the database was made by an older Canopy (no schema version); use a new --db")
    revision = schema_revision(engine)
    if revision != HEAD_REVISION:
        url = engine.url.render_as_string(hide_password=True)
        if revision is not None and revision < HEAD_REVISION:
            raise StoreError(
                f"the database is at schema revision {revision}, this Canopy needs {HEAD_REVISION}; "
                f"upgrade it in place with `canopy db upgrade --db {url}` (runs and trees are kept)"
            )
        raise StoreError(
            f"the database is at schema revision {revision}, newer or other than this Canopy's "
            f"{HEAD_REVISION}; update Canopy or use another --db"
        )
