"""CHESS-style Text-to-SQL on Chinook: a DAG of LLM stages and read-only SQL tool calls.

    python examples/text2sql.py "How many tracks are there?"       # demo model, SQLite Chinook
    agentrt run examples/text2sql.py:text2sql --input 'question="How many albums?"'

Stages (HEXGEN-TEXT2SQL's traces have the same shape):

1. schema linking: introspect the database (tool calls), then the LLM picks
   the tables the question needs (structured output: an enum of real table
   names, so even a tiny model picks existing ones);
2. ``n`` candidate SQL generations in parallel (``ctx.gather``): candidate 0
   decodes greedily, the others sample at temperature 0.7, each with its own
   seed (``seed + i``), so a run can be repeated;
3. execution-guided repair: each candidate runs through the read-only
   ``sql_query`` tool; on an error or an empty result the LLM fixes it
   (greedily), at most ``k`` rounds;
4. selection: a vote over execution results (candidates whose rows agree);
   the largest group wins, and between equally large groups the one with
   the lowest-numbered candidate (the greedy one first): a stated rule, not
   the order in which candidates finished.

Structured output keeps every SQL reply a ``{"sql": "SELECT ..."}`` object,
and the generation prompt shows one worked example of that shape.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

from toolbridge import Database, PostgresDatabase, SQLiteDatabase, Tool, chinook_sqlite, sql_tools
from workflows import Context, ToolCall, step, workflow

__all__ = [
    "DEMO_QUESTION",
    "DEMO_REFERENCE_SQL",
    "SQL_EXAMPLE",
    "Candidate",
    "Text2SQLResult",
    "check_against_reference",
    "describe_result",
    "open_database",
    "run_demo",
    "sql_schema",
    "text2sql",
    "vote",
]

#: The question ``agentrt demo`` asks of Chinook, and a query that answers it (to check the model's against).
DEMO_QUESTION = "How many tracks are there in the database?"
DEMO_REFERENCE_SQL = "SELECT count(*) FROM track"


#: One item of a select list: a column (``name``, ``track.name``), ``*``, or an aggregate of one.
_SELECT_ITEM = r"(\*|(COUNT|SUM|AVG|MIN|MAX)\((\*|[A-Za-z_][A-Za-z0-9_.]*)\)|[A-Za-z_][A-Za-z0-9_.]*)"


def sql_schema(tables: list[str]) -> dict[str, Any]:
    """The reply: one SELECT of columns or aggregates from one of ``tables``, then any JOIN, WHERE ... text.

    The select list is items separated by ``", "``, with no other spaces, so
    that the first ``FROM`` is the query's own and must name a table of
    ``tables``: with a freer list (``SELECT [^;]+ FROM ...``) a small model
    writes ``SELECT COUNT(*) FROM some_other_table WHERE ...`` and is cut off
    by ``max_tokens`` before the constrained ``FROM`` comes.  A query of no
    table (``SELECT 1``) would run and pass with a constant.  The length is
    bounded by ``max_tokens``: xgrammar rejects ``pattern`` with
    ``maxLength`` and fails to compile a bounded repetition like ``{1,240}``.
    """
    names = "|".join(re.escape(t) for t in tables)
    clauses = "JOIN|WHERE|GROUP BY|ORDER BY|LIMIT"
    pattern = f"^SELECT {_SELECT_ITEM}(, {_SELECT_ITEM})* FROM ({names})( ({clauses}) [^;]*)?$"
    return {
        "type": "object",
        "properties": {"sql": {"type": "string", "pattern": pattern}},
        "required": ["sql"],
        "additionalProperties": False,
    }


def _reads_a_table(sql: str, tables: list[str]) -> bool:
    """Whether ``sql`` names one of ``tables`` after a FROM or JOIN (a cut-off reply may not)."""
    known = {t.lower() for t in tables}
    return any(m.lower() in known for m in re.findall(r'\b(?:from|join)\s+"?(\w+)', sql, flags=re.IGNORECASE))


@dataclass
class Candidate:
    """One candidate's history: final ``sql``, whether it ran and returned rows, repair ``rounds``."""

    sql: str
    ok: bool
    rows: list[list[Any]] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)
    error: str | None = None
    rounds: int = 0


@dataclass
class Text2SQLResult:
    """The chosen ``sql`` and its rows; every candidate; the linked tables; the winning vote count; which won."""

    question: str
    sql: str
    ok: bool
    columns: list[str]
    rows: list[list[Any]]
    tables: list[str]
    candidates: list[Candidate]
    votes: int
    #: The index in ``candidates`` of the chosen one (see :func:`vote`).
    chosen: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def open_database(database: str = "") -> Database:
    """``postgresql://...`` -> PostgreSQL; a path -> that SQLite file; empty -> Chinook in SQLite."""
    if database.startswith(("postgres://", "postgresql://")):
        return PostgresDatabase(database, max_rows=50)
    return SQLiteDatabase(database or chinook_sqlite(), max_rows=50)


class _Tools:
    """The SQL tools of one database, called through ``ctx.call_tool`` so they are nodes of the DAG."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.query, self.list_tables, self.describe = sql_tools(db)
        self.all: list[Tool] = [self.query, self.list_tables, self.describe]
        self._ids = 0

    async def call(self, ctx: Context, tool: Tool, **arguments: Any) -> Any:
        self._ids += 1
        message = await ctx.call_tool(ToolCall(f"sql-{self._ids}", tool.name, arguments), self.all)
        if not message.ok:
            raise _ToolFailed(message.content)
        return message.value


class _ToolFailed(Exception):
    pass


def _schema_text(schema: dict[str, list[dict[str, Any]]], tables: list[str]) -> str:
    lines = []
    for table in tables:
        cols = ", ".join(
            f"{c['name']} {c['type']}" + (f" -> {c['references']}" if c.get("references") else "")
            for c in schema[table]
        )
        lines.append(f"{table}({cols})")
    return "\n".join(lines)


@step(retries=1, timeout_s=120)
async def link_schema(ctx: Context, tools: _Tools, question: str) -> tuple[list[str], str]:
    """Introspect, then let the LLM pick the tables; returns (tables, schema text for prompts)."""
    names: list[str] = await tools.call(ctx, tools.list_tables)
    described = await ctx.gather(*(tools.call(ctx, tools.describe, table=t) for t in names))
    schema = dict(zip(names, described, strict=True))
    pick_schema = {
        "type": "object",
        "properties": {"tables": {"type": "array", "items": {"enum": names}, "minItems": 1, "maxItems": 4}},
        "required": ["tables"],
        "additionalProperties": False,
    }
    prompt = (
        f"Database schema ({tools.db.dialect}):\n{_schema_text(schema, names)}\n\n"
        f"Question: {question}\nWhich tables are needed to answer it? Reply as JSON."
    )
    reply = await ctx.llm([{"role": "user", "content": prompt}], json_schema=pick_schema, max_tokens=64)
    try:
        chosen = [t for t in json.loads(reply.text)["tables"] if t in schema]
    except (ValueError, KeyError, TypeError):
        chosen = []
    # Tables named in the question come first, whatever the LLM picked: a cheap recall guard for small models.
    words = question.lower()
    picked = [t for t in names if t in words] + chosen
    if not picked:
        picked = list(names)
    # Keep the tables the picked ones reference, so joins stay possible.
    for table in list(picked):
        for column in schema[table]:
            target = (column.get("references") or "").split(".")[0]
            if target:
                picked.append(target)
    picked = list(dict.fromkeys(picked))  # each table once, in the order it was first picked
    return picked, _schema_text(schema, picked)


#: The worked example the generation prompt shows (of a table no database here has): a small model copies its shape.
SQL_EXAMPLE = ("How many books are there?", "SELECT COUNT(*) FROM book")


@step(retries=1, timeout_s=120)
async def generate_sql(
    ctx: Context, dialect: str, schema_text: str, question: str, temperature: float, seed: int, tables: list[str]
) -> str:
    """One candidate SQL query, reading one of ``tables``; ``seed`` makes a sampled one repeatable."""
    example_question, example_sql = SQL_EXAMPLE
    prompt = (
        f"Schema ({dialect}):\n{schema_text}\n\n"
        f"Example, for a table book: {example_question}\n{json.dumps({'sql': example_sql})}\n\n"
        f"Write one {dialect} SELECT query that answers: {question}\n"
        'Reply as JSON: {"sql": "SELECT ..."}'
    )
    reply = await ctx.llm(
        [{"role": "user", "content": prompt}],
        json_schema=sql_schema(tables),
        max_tokens=160,
        temperature=temperature,
        seed=seed,
    )
    return _sql_of(reply.text)


@step(retries=1, timeout_s=120)
async def revise_sql(
    ctx: Context, dialect: str, schema_text: str, question: str, sql: str, problem: str, tables: list[str]
) -> str:
    """The LLM fixes a query given what went wrong when it ran."""
    prompt = (
        f"Schema ({dialect}):\n{schema_text}\n\nQuestion: {question}\nThis query:\n{sql}\n"
        f"failed: {problem[:500]}\nWrite a corrected {dialect} SELECT query. "
        'Reply as JSON: {"sql": "SELECT ..."}'
    )
    reply = await ctx.llm([{"role": "user", "content": prompt}], json_schema=sql_schema(tables), max_tokens=160)
    return _sql_of(reply.text)


def _sql_of(text: str) -> str:
    """The SQL in a reply; a reply cut off by max_tokens still yields its partial SQL ("" if none)."""
    try:
        return str(json.loads(text)["sql"]).strip()
    except (ValueError, KeyError, TypeError):
        _, found, rest = text.partition('"sql":')
        return rest.strip().lstrip('"').rstrip('"}').strip() if found else ""


async def _execute_with_repair(
    ctx: Context, tools: _Tools, schema_text: str, question: str, sql: str, k: int, tables: list[str]
) -> Candidate:
    problem = ""
    for round_ in range(k + 1):
        if round_:
            sql = await revise_sql(ctx, tools.db.dialect, schema_text, question, sql, problem, tables)
        if not sql:
            problem = "no SQL query was produced"
            continue
        try:
            result = await tools.call(ctx, tools.query, sql=sql)
        except _ToolFailed as exc:
            problem = str(exc)
            continue
        if not _reads_a_table(sql, tables):
            problem = f"the query reads none of the tables {', '.join(tables)}: a constant is not an answer"
        elif result["rows"]:
            return Candidate(sql, True, result["rows"], result["columns"], None, round_)
        else:
            problem = "the query ran but returned no rows"
    return Candidate(sql, False, error=problem, rounds=k)


def _result_key(candidate: Candidate) -> str:
    return _rows_key(candidate.rows)


def _rows_key(rows: list[list[Any]]) -> str:
    # Results agree when their rows agree, whatever the column names or order.
    return json.dumps(sorted(json.dumps(row, default=str) for row in rows))


@workflow(deadline_s=600)
async def text2sql(
    ctx: Context, question: str, database: str = "", n: int = 3, k: int = 2, seed: int = 0
) -> dict[str, Any]:
    """Answer ``question`` with SQL on ``database`` (default: Chinook in SQLite): ``n`` candidates, ``k`` repairs.

    Candidate ``i`` samples with seed ``seed + i`` (candidate 0 greedily).
    """
    tools = _Tools(open_database(database))
    tables, schema_text = await link_schema(ctx, tools, question)
    temperatures = [0.0] + [0.7] * (n - 1)
    drafts = await ctx.gather(
        *(
            generate_sql(ctx, tools.db.dialect, schema_text, question, t, seed + i, tables)
            for i, t in enumerate(temperatures)
        )
    )
    candidates = await ctx.gather(
        *(_execute_with_repair(ctx, tools, schema_text, question, sql, k, tables) for sql in drafts)
    )
    index, votes = vote(candidates)
    chosen = candidates[index]
    return Text2SQLResult(
        question, chosen.sql, chosen.ok, chosen.columns, chosen.rows, tables, list(candidates), votes, index
    ).as_dict()


def vote(candidates: list[Candidate]) -> tuple[int, int]:
    """The chosen candidate's index and its votes: how many successful candidates returned the same rows.

    The largest group of agreeing candidates wins; between equally large
    groups, the one holding the lowest-numbered candidate.  Its
    lowest-numbered member is chosen.  With no successful candidate:
    candidate 0, with 0 votes.
    """
    groups: dict[str, list[int]] = {}
    for i, candidate in enumerate(candidates):  # in order: a group's place is that of its lowest-numbered member
        if candidate.ok:
            groups.setdefault(_result_key(candidate), []).append(i)
    if not groups:
        return 0, 0
    best = max(groups.values(), key=len)  # max keeps the first of equals
    return best[0], len(best)


def describe_result(out: dict[str, Any]) -> str:
    """A few lines for a terminal: the linked tables, each candidate, the chosen SQL and its rows."""
    lines = [f"question: {out['question']}", f"linked tables: {', '.join(out['tables'])}"]
    for i, c in enumerate(out["candidates"]):
        status = f"{len(c['rows'])} row(s)" if c["ok"] else f"failed ({(c['error'] or '')[:80]})"
        lines.append(f"candidate {i}: {c['sql'][:100]!r} after {c['rounds']} repair(s): {status}")
    verdict = (
        f"candidate {out['chosen']}: {out['votes']} of {len(out['candidates'])} candidates returned these rows"
        if out["ok"]
        else "no candidate ran successfully"
    )
    lines.append(f"sql: {out['sql'][:200]} ({verdict})")
    if out["ok"]:
        lines.append(f"rows: {out['columns']} {out['rows'][:5]}")
    return "\n".join(lines)


async def check_against_reference(out: dict[str, Any], reference_sql: str, database: str = "") -> str:
    """One line: whether the chosen query's rows are those of ``reference_sql``, a query known to answer."""
    expected = (await open_database(database).query(reference_sql)).rows
    reference = f"the reference query {reference_sql} gives {expected[:5]}"
    if not out["ok"]:
        return f"check: no answer: no candidate query ran successfully ({reference})."
    if _rows_key(out["rows"]) == _rows_key(expected):
        return f"check: right: the chosen query's rows are those of {reference}."
    return f"check: WRONG: the chosen query ran, but {reference}: the model's SQL does not answer the question."


async def run_demo(rt: Any, question: str = DEMO_QUESTION) -> str:
    """Run one question on Chinook in ``rt`` (a ``runtime.Runtime``); what ``agentrt demo`` prints."""
    return describe_result(await rt.run(text2sql, question=question))


if __name__ == "__main__":  # vLLM's engine core is a spawned process: keep the guard
    from runtime import Runtime

    print(describe_result(Runtime.run_sync(text2sql, question=sys.argv[1] if len(sys.argv) > 1 else DEMO_QUESTION)))
