"""Workload traces: the replay input, its model and its validation.

A trace is JSON Lines, one program per line, as specified in
``TRACE_FORMAT.md`` (the contract).  :func:`load_trace` reads one and checks
*everything* before anything runs: a replay that dies after twenty minutes on
a dangling ``after`` id wastes the engines' time, so every problem in the file
(up to :data:`MAX_PROBLEMS`) is reported at once, each with its line number
and the dotted path of the offending field (``calls[2].after``).

Unknown fields are errors, not silently ignored: a misspelt ``tool_secs``
would otherwise replay as a zero-second tool.

Defaults are resolved when a program is built (by the loader or in code), so
after validation ``call.after`` is always a list and ``call.context`` is the
effective context (the contract's defaults applied):

* ``after`` defaults to the previous call in the list (``[]`` for the first);
* ``context`` defaults to the single id in ``after``, else ``None``.  An
  explicit ``"context": null`` means "no inherited context" and is kept.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, model_validator

from ._errors import ReplayError

__all__ = [
    "MAX_PROBLEMS",
    "TraceCall",
    "TraceError",
    "TraceProblem",
    "TraceProgram",
    "dump_trace",
    "load_trace",
    "program_problems",
    "program_to_json",
    "topological_order",
    "topological_order_of",
]

#: At most this many problems are collected (and reported) per file.
MAX_PROBLEMS = 20

#: Validation context key that makes :class:`TraceProgram` skip its graph checks
#: (the loader runs them itself to report each problem with its field path).
_DEFER_CHECKS = "agentrt_defer_graph_checks"


@dataclass(frozen=True)
class TraceProblem:
    """One problem in a trace: where (1-based ``line``, dotted ``field``) and what."""

    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = f"line {self.line}" if self.line is not None else "file"
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"


class TraceError(ReplayError, ValueError):
    """A trace file that cannot be replayed.

    ``path``, ``line`` (1-based, ``None`` for whole-file problems), ``field``
    (dotted path such as ``calls[2].after``) and ``message`` describe the first
    problem; ``problems`` lists all of them (at most :data:`MAX_PROBLEMS`), and
    ``str(error)`` shows every one.
    """

    def __init__(self, path: str | Path | None, problems: Sequence[TraceProblem], *, truncated: bool = False) -> None:
        if not problems:
            raise ValueError("TraceError needs at least one problem")
        self.path = None if path is None else str(path)
        self.problems = list(problems)
        self.truncated = truncated
        first = self.problems[0]
        self.line, self.field, self.message = first.line, first.field, first.message
        where = self.path or "<trace>"
        head = f"{where}: {len(self.problems)}{'+' if truncated else ''} problem(s) in trace"
        lines = [head, *(f"  {p}" for p in self.problems)]
        if truncated:
            lines.append(f"  ... stopped after {MAX_PROBLEMS} problems")
        super().__init__("\n".join(lines))


class _Strict(BaseModel):
    # Unknown fields are errors (typos must not replay as defaults); NaN and
    # infinity are not durations.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)


class TraceCall(_Strict):
    """One LLM call of a program, and the tool that runs after it.

    Token counts are tokens; durations are seconds.  ``after`` and ``context``
    are resolved by the enclosing :class:`TraceProgram` (see the module doc).
    """

    id: str = Field(min_length=1)
    after: list[str] | None = None
    context: str | None = None
    new_tokens: int = Field(ge=0)
    output_tokens: int = Field(ge=1)
    tool: str | None = None
    tool_s: float = Field(default=0.0, ge=0)
    tool_output_tokens: int = Field(default=0, ge=0)
    stage: str | None = None

    @property
    def parents(self) -> list[str]:
        """The resolved ``after`` list (ids that must finish, tools included, before this call starts)."""
        return list(self.after or [])


class TraceProgram(_Strict):
    """One program: its arrival (seconds after replay start), app prefix, deadline and calls."""

    id: str = Field(min_length=1)
    arrival_s: float = Field(ge=0)
    app: str | None = None
    system_tokens: int = Field(default=0, ge=0)
    slo_s: float | None = Field(default=None, gt=0)
    priority: int = 0
    calls: list[TraceCall] = Field(min_length=1)

    @model_validator(mode="after")
    def _resolve_and_check(self, info: ValidationInfo) -> Self:
        _resolve_defaults(self.calls)
        if not (info.context or {}).get(_DEFER_CHECKS):
            problems = program_problems(self)
            if problems:
                raise ValueError("; ".join(f"{f}: {m}" for f, m in problems))
        return self

    def call(self, call_id: str) -> TraceCall:
        """The call named ``call_id`` (``KeyError`` if none)."""
        for c in self.calls:
            if c.id == call_id:
                return c
        raise KeyError(call_id)


def _resolve_defaults(calls: list[TraceCall]) -> None:
    previous: str | None = None
    for call in calls:
        if call.after is None:
            call.after = [] if previous is None else [previous]
        if "context" not in call.model_fields_set:
            call.context = call.after[0] if len(call.after) == 1 else None
        # Resolved values are explicit now: a copy or re-validation keeps them.
        call.model_fields_set.update({"after", "context"})
        previous = call.id


def program_problems(program: TraceProgram) -> list[tuple[str, str]]:
    """Graph and consistency problems of one program, as ``(field path, message)`` pairs.

    Checks duplicate call ids, tool fields without a tool, unknown ``after``
    and ``context`` ids, a ``context`` that is not a transitive predecessor of
    its call, and cycles in ``after``.  Expects resolved defaults.
    """
    problems: list[tuple[str, str]] = []
    index: dict[str, int] = {}
    for i, call in enumerate(program.calls):
        if call.id in index:
            problems.append((f"calls[{i}].id", f"duplicate call id {call.id!r} (first at calls[{index[call.id]}])"))
        else:
            index[call.id] = i
        if call.tool is None:
            if call.tool_s > 0:
                problems.append((f"calls[{i}].tool_s", f"tool_s is {call.tool_s} but tool is null"))
            if call.tool_output_tokens > 0:
                problems.append(
                    (
                        f"calls[{i}].tool_output_tokens",
                        f"tool_output_tokens is {call.tool_output_tokens} but tool is null",
                    )
                )
    for i, call in enumerate(program.calls):
        for j, dep in enumerate(call.parents):
            if dep not in index:
                problems.append((f"calls[{i}].after[{j}]", f"unknown call id {dep!r}"))
        if call.context is not None and call.context not in index:
            problems.append((f"calls[{i}].context", f"unknown call id {call.context!r}"))
    if len(index) != len(program.calls):
        return problems  # the graph checks below need unique ids
    cycles = _cycles(program.calls, index)
    for cycle in cycles:
        problems.append((f"calls[{index[cycle[0]]}].after", "cycle in after: " + " -> ".join([*cycle, cycle[0]])))
    if not cycles:
        ancestors = _ancestors(program.calls, index)
        for i, call in enumerate(program.calls):
            if call.context is not None and call.context in index and call.context not in ancestors[call.id]:
                problems.append(
                    (
                        f"calls[{i}].context",
                        f"context {call.context!r} is not a predecessor of {call.id!r} through after "
                        "(it must have finished before the call starts)",
                    )
                )
    return problems


def _cycles(calls: Sequence[TraceCall], index: dict[str, int]) -> list[list[str]]:
    """Each distinct cycle of the ``after`` graph once, as the list of its ids."""
    white, grey, black = 0, 1, 2
    color = dict.fromkeys(index, white)
    found: list[list[str]] = []
    seen: set[frozenset[str]] = set()
    for root in index:
        if color[root] != white:
            continue
        # Iterative DFS (a 10,000-turn chain must not hit the recursion limit).
        stack: list[tuple[str, Iterable[str]]] = [(root, iter(calls[index[root]].parents))]
        path = [root]
        color[root] = grey
        while stack:
            node, children = stack[-1]
            for child in children:
                if child not in color:
                    continue  # unknown id: reported elsewhere
                if color[child] == grey:
                    cycle = path[path.index(child) :]
                    key = frozenset(cycle)
                    if key not in seen:
                        seen.add(key)
                        # ``after`` points backwards: list the cycle in execution order,
                        # starting from the call that comes first in the list.
                        cycle.reverse()
                        start = min(range(len(cycle)), key=lambda k: index[cycle[k]])
                        found.append(cycle[start:] + cycle[:start])
                elif color[child] == white:
                    color[child] = grey
                    stack.append((child, iter(calls[index[child]].parents)))
                    path.append(child)
                    break
            else:
                color[node] = black
                stack.pop()
                path.pop()
    return found


def _ancestors(calls: Sequence[TraceCall], index: dict[str, int]) -> dict[str, set[str]]:
    result: dict[str, set[str]] = {}
    for call in topological_order_of(calls, index):
        acc: set[str] = set()
        for dep in call.parents:
            if dep in index:
                acc.add(dep)
                acc |= result.get(dep, set())
        result[call.id] = acc
    return result


def topological_order_of(calls: Sequence[TraceCall], index: dict[str, int] | None = None) -> list[TraceCall]:
    """Calls ordered so each comes after its ``after`` ids; ties keep list order (Kahn's algorithm)."""
    import heapq

    if index is None:
        index = {c.id: i for i, c in enumerate(calls)}
    pending = {c.id: sum(1 for d in set(c.parents) if d in index) for c in calls}
    children: dict[str, list[str]] = {c.id: [] for c in calls}
    for c in calls:
        for d in set(c.parents):
            if d in index:
                children[d].append(c.id)
    ready = [index[cid] for cid, n in pending.items() if n == 0]
    heapq.heapify(ready)
    order: list[TraceCall] = []
    while ready:
        call = calls[heapq.heappop(ready)]
        order.append(call)
        for child in children[call.id]:
            pending[child] -= 1
            if pending[child] == 0:
                heapq.heappush(ready, index[child])
    if len(order) != len(calls):
        raise ValueError("the after graph has a cycle")
    return order


def topological_order(program: TraceProgram) -> list[TraceCall]:
    """The program's calls in an order that respects ``after`` (list order among independent calls)."""
    return topological_order_of(program.calls)


def _field_path(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


def _pydantic_problems(line: int, exc: ValidationError) -> list[TraceProblem]:
    problems = []
    for err in exc.errors(include_url=False):
        loc = err["loc"]
        if err["type"] == "extra_forbidden":
            message = "unknown field (not in the trace format)"
        elif err["type"] == "missing":
            message = "required field is missing"
        else:
            message = f"{err['msg']} (got {err['input']!r})" if "input" in err and loc else err["msg"]
        problems.append(TraceProblem(line, _field_path(loc), message))
    return problems


def load_trace(path: str | Path) -> list[TraceProgram]:
    """Read and fully validate a JSON Lines trace; programs come back sorted by ``arrival_s`` (stable).

    Raises :class:`TraceError` listing every problem found (each with its
    1-based line number and field path) before anything runs.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TraceError(path, [TraceProblem(None, "", f"cannot read trace: {exc}")]) from None
    problems: list[TraceProblem] = []
    programs: list[TraceProgram] = []
    first_line: dict[str, int] = {}
    truncated = False
    for line_no, raw in enumerate(text.splitlines(), 1):
        if len(problems) >= MAX_PROBLEMS:
            truncated = True
            break
        if not raw.strip():
            continue
        try:
            obj: Any = json.loads(raw, parse_constant=_reject_constant)
        except ValueError as exc:
            problems.append(TraceProblem(line_no, "", f"invalid JSON: {exc}"))
            continue
        if not isinstance(obj, dict):
            problems.append(
                TraceProblem(line_no, "", f"expected a JSON object (one program), got {type(obj).__name__}")
            )
            continue
        program_id = obj.get("id")
        if isinstance(program_id, str):
            if program_id in first_line:
                problems.append(
                    TraceProblem(
                        line_no, "id", f"duplicate program id {program_id!r} (first on line {first_line[program_id]})"
                    )
                )
            else:
                first_line[program_id] = line_no
        try:
            program = TraceProgram.model_validate(obj, context={_DEFER_CHECKS: True})
        except ValidationError as exc:
            problems.extend(_pydantic_problems(line_no, exc))
            continue
        problems.extend(TraceProblem(line_no, f, m) for f, m in program_problems(program))
        programs.append(program)
    if not problems and not programs:
        problems.append(TraceProblem(None, "", "trace has no programs"))
    if problems:
        if len(problems) > MAX_PROBLEMS:
            problems, truncated = problems[:MAX_PROBLEMS], True
        raise TraceError(path, problems, truncated=truncated)
    return sorted(programs, key=lambda p: p.arrival_s)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def program_to_json(program: TraceProgram) -> dict[str, Any]:
    """A program as its compact trace object: contract fields only, defaults left out.

    ``after`` and ``context`` are written only where they differ from the
    defaults the loader resolves, so loading the line gives back an equal program.
    """
    out: dict[str, Any] = {"id": program.id, "arrival_s": program.arrival_s}
    if program.app is not None:
        out["app"] = program.app
    if program.system_tokens:
        out["system_tokens"] = program.system_tokens
    if program.slo_s is not None:
        out["slo_s"] = program.slo_s
    if program.priority:
        out["priority"] = program.priority
    calls: list[dict[str, Any]] = []
    previous: str | None = None
    for call in program.calls:
        c: dict[str, Any] = {"id": call.id}
        after = call.parents
        if after != ([] if previous is None else [previous]):
            c["after"] = after
        default_context = after[0] if len(after) == 1 else None
        if call.context != default_context:
            c["context"] = call.context
        c["new_tokens"] = call.new_tokens
        c["output_tokens"] = call.output_tokens
        if call.tool is not None:
            c["tool"] = call.tool
            c["tool_s"] = call.tool_s
            c["tool_output_tokens"] = call.tool_output_tokens
        if call.stage is not None:
            c["stage"] = call.stage
        calls.append(c)
        previous = call.id
    out["calls"] = calls
    return out


def dump_trace(programs: Iterable[TraceProgram], path: str | Path) -> Path:
    """Write ``programs`` as JSON Lines (in the given order) that :func:`load_trace` reads back equal."""
    path = Path(path)
    lines = [json.dumps(program_to_json(p), separators=(",", ":")) for p in programs]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def prompt_lengths(program: TraceProgram) -> dict[str, int]:
    """Each call's prompt length in tokens, by call id.

    A prompt is the full context of the call it continues (that call's
    prompt, output and tool output) or the app prefix, plus fresh tokens.
    """
    full: dict[str, int] = {}
    lengths: dict[str, int] = {}
    for call in topological_order(program):
        prompt = (full[call.context] if call.context is not None else program.system_tokens) + call.new_tokens
        lengths[call.id] = prompt
        full[call.id] = prompt + call.output_tokens + (call.tool_output_tokens if call.tool else 0)
    return lengths
