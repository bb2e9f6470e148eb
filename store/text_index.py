"""Full-text search over every stored option, rollout and answer.

A node's searchable text is its option, its answer and its rollouts' texts.
On SQLite an FTS5 table (``node_fts``, rowid = ``node.id``) is kept current by
triggers that fire when a node is added or its option, answer or rollouts
change (not on the visit counts the search updates all the time), and ranked
by BM25. On PostgreSQL a generated ``tsvector`` column with a GIN index does the
same, ranked by ``ts_rank``. Both index words as they are (no stemming, no stop
words: model text is mostly numbers and short words).

``create_text_index`` is the schema-revision-3 index, run by migration 0003
on existing stores and when a new store is created; a later change to it
comes as a new migration.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

_SQLITE_BODY = (
    "coalesce({row}.option_text, '') || char(10) || coalesce({row}.answer, '') || char(10) || "
    "coalesce((SELECT group_concat(json_extract(value, '$.text'), char(10)) "
    "FROM json_each({row}.rollouts)), '')"
)

_SQLITE = [
    "CREATE VIRTUAL TABLE IF NOT EXISTS node_fts USING fts5(body, tokenize = 'unicode61')",
    f"""CREATE TRIGGER IF NOT EXISTS node_fts_insert AFTER INSERT ON node BEGIN
        INSERT INTO node_fts(rowid, body) VALUES (new.id, {_SQLITE_BODY.format(row="new")});
    END""",
    f"""CREATE TRIGGER IF NOT EXISTS node_fts_update
        AFTER UPDATE OF option_text, answer, rollouts ON node BEGIN
        DELETE FROM node_fts WHERE rowid = old.id;
        INSERT INTO node_fts(rowid, body) VALUES (new.id, {_SQLITE_BODY.format(row="new")});
    END""",
    """CREATE TRIGGER IF NOT EXISTS node_fts_delete AFTER DELETE ON node BEGIN
        DELETE FROM node_fts WHERE rowid = old.id;
    END""",
    f"INSERT INTO node_fts(rowid, body) SELECT node.id, {_SQLITE_BODY.format(row='node')} FROM node",
]

_POSTGRES = [
    """ALTER TABLE node ADD COLUMN IF NOT EXISTS search tsvector GENERATED ALWAYS AS (
        to_tsvector('simple', coalesce(option_text, '') || ' ' || coalesce(answer, '') || ' ' ||
                    coalesce(rollouts::text, ''))
    ) STORED""",
    "CREATE INDEX IF NOT EXISTS ix_node_search ON node USING gin (search)",
]


def create_text_index(connection: Connection) -> None:
    """Create the index (and fill it from the nodes already stored)."""
    statements = _SQLITE if connection.dialect.name == "sqlite" else _POSTGRES
    for statement in statements:
        connection.exec_driver_sql(statement)


def drop_text_index(connection: Connection) -> None:
    if connection.dialect.name == "sqlite":
        for trigger in ("node_fts_insert", "node_fts_update", "node_fts_delete"):
            connection.exec_driver_sql(f"DROP TRIGGER IF EXISTS {trigger}")
        connection.exec_driver_sql("DROP TABLE IF EXISTS node_fts")
    else:
        connection.exec_driver_sql("DROP INDEX IF EXISTS ix_node_search")
        connection.exec_driver_sql("ALTER TABLE node DROP COLUMN IF EXISTS search")


MARK = ("\x02", "\x03")
"""What surrounds each matched word in ``TextHit.snippet`` (control characters,
which model text does not hold, so a viewer can escape the rest first)."""


@dataclass(frozen=True)
class TextHit:
    """One node whose text matches: where it is, how well (higher is better),
    and a snippet of its text with the matched words between ``MARK``."""

    tree_id: int
    node_index: int
    rank: float
    snippet: str


def search_text(engine: Engine, query: str, *, limit: int = 50) -> list[TextHit]:
    """The nodes whose option, answer or rollouts hold every word of ``query``
    (case-insensitive, whole words; a word ending in ``*`` matches as a
    prefix), best first. Words are letters and digits: anything else in
    ``query`` only separates them, so no input is a syntax error."""
    words = _words(query)
    if not words:
        return []
    with engine.connect() as connection:
        if connection.dialect.name == "sqlite":
            match = " ".join(f'"{word}"*' if prefix else f'"{word}"' for word, prefix in words)
            rows = connection.execute(
                text(
                    'SELECT node.tree_id, node."index", bm25(node_fts) AS rank, '
                    "snippet(node_fts, 0, :start, :stop, ' … ', 16) "
                    "FROM node_fts JOIN node ON node.id = node_fts.rowid "
                    "WHERE node_fts MATCH :match ORDER BY rank, node.id LIMIT :limit"
                ),
                {"match": match, "limit": limit, "start": MARK[0], "stop": MARK[1]},
            ).all()
            return [TextHit(int(t), int(i), -float(r), s) for t, i, r, s in rows]
        tsquery = " & ".join(f"{word}:*" if prefix else word for word, prefix in words)
        rows = connection.execute(
            text(
                'SELECT tree_id, "index", ts_rank(search, tsq) AS rank, '
                "ts_headline('simple', option_text || ' ' || coalesce(answer, ''), tsq, :options) "
                "FROM node, to_tsquery('simple', :query) AS tsq "
                "WHERE search @@ tsq ORDER BY rank DESC, node.id LIMIT :limit"
            ),
            {
                "query": tsquery,
                "limit": limit,
                "options": f"StartSel={MARK[0]}, StopSel={MARK[1]}, MaxFragments=1, MaxWords=16, MinWords=4",
            },
        ).all()
        return [TextHit(int(t), int(i), float(r), s) for t, i, r, s in rows]


def _words(query: str) -> list[tuple[str, bool]]:
    """(word, is_prefix) per word of ``query``, lower-cased."""
    return [(match.group(1).lower(), bool(match.group(2))) for match in re.finditer(r"([^\W_]+)(\*)?", query)]
