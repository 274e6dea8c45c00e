"""The Text-to-SQL example end to end on the tiny model over Chinook (SQLite).

The tiny model has random weights: the test checks the DAG's shape and
contracts (parallel candidates, bounded repair, read-only execution, a vote),
not that the SQL is right.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "text2sql.py"


def _load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("text2sql_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.engine
async def test_text2sql_end_to_end_on_tiny_model(rt: Any) -> None:
    example = _load_example()
    handle = rt.submit(example.text2sql, question="How many tracks are in the album named Let There Be Rock?", n=3, k=1)
    out = await handle
    assert out["question"].startswith("How many tracks")
    assert out["tables"] and "album" in out["tables"] and "track" in out["tables"]
    assert len(out["candidates"]) == 3
    for candidate in out["candidates"]:
        assert candidate["sql"].startswith("SELECT ") and 0 <= candidate["rounds"] <= 1
        assert candidate["ok"] == bool(candidate["rows"])
    assert out["ok"] == (out["votes"] > 0)
    if out["ok"]:
        assert out["rows"]
    print(example.describe_result(out))
    assert example.describe_result(out).startswith("question: How many tracks")
    # The DAG holds the introspection and query tool calls and the LLM stages.
    names = [node.name for node in handle.program.nodes.values()]
    assert {"list_tables", "describe_table", "link_schema", "generate_sql", "sql_query"} <= set(names)
    assert names.count("generate_sql") == 3
    # Chinook is unchanged whatever the model wrote.
    db = example.open_database()
    assert (await db.query("SELECT count(*) FROM track")).rows == [[3503]]


def test_the_vote_is_the_largest_agreeing_group_and_ties_go_to_the_lowest_numbered_candidate() -> None:
    example = _load_example()
    Candidate = example.Candidate

    def ok(sql: str, rows: list[list[Any]]) -> Any:
        return Candidate(sql, True, rows, ["n"])

    failed = Candidate("SELECT x FROM album", False, error="no such column: x")
    a, b = [[3503]], [[347]]
    # The two agreeing candidates win over the first one, whatever their order.
    assert example.vote([ok("q0", b), ok("q1", a), ok("q2", a)]) == (1, 2)
    # Rows agree whatever the column names or the row order.
    assert example.vote([ok("q0", [[1], [2]]), ok("q1", [[2], [1]])]) == (0, 2)
    # A tie between groups of one: the lowest-numbered successful candidate, not the first to finish.
    assert example.vote([failed, ok("q1", b), ok("q2", a)]) == (1, 1)
    assert example.vote([ok("q0", a), ok("q1", b), ok("q2", [[1]])]) == (0, 1)
    # Nothing ran: candidate 0 with no votes.
    assert example.vote([failed, failed]) == (0, 0)
