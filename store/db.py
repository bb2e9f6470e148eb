"""Opening the store: URL resolution, SQLite WAL set-up, schema creation and checks."""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import event, inspect
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, DatabaseError, NoSuchModuleError, OperationalError
from sqlmodel import Session, SQLModel, create_engine, select

from canopy.errors import CanopyError
from store.schema import SCHEMA_VERSION, SchemaInfo

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


def make_engine(url: str | None = None, *, create: bool = True) -> Engine:
    """An engine for ``url`` (default: ``default_db_url()``).

    With ``create`` the SQLite file's folder and the tables are made and the
    database is checked to be writable; without it a missing SQLite file is an
    error (readers must not create databases). Raises ``StoreError`` with a
    one-line reason on any problem.
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
            if inspect(engine).get_table_names():
                check_schema(engine)
            SQLModel.metadata.create_all(engine)
            _stamp_schema(engine)
            _check_writable(engine)
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


def _stamp_schema(engine: Engine) -> None:
    with Session(engine) as session:
        if session.get(SchemaInfo, "schema_version") is None:
            session.add(SchemaInfo(key="schema_version", value=str(SCHEMA_VERSION)))
            session.commit()


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
    with Session(engine) as session:
        row = session.exec(select(SchemaInfo).where(SchemaInfo.key == "schema_version")).first()
    version = int(row.value) if row else 0
    if version != SCHEMA_VERSION:
        raise StoreError(
            f"the database has schema version {version}, this Canopy needs {SCHEMA_VERSION}; use a new --db"
        )
