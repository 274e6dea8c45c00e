"""Trace loading: every kind of bad trace is reported with its line and field path; dumps round-trip."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.replay._trace import MAX_PROBLEMS, TraceError, TraceProgram, dump_trace, load_trace, topological_order


def call(cid: str, **kw: Any) -> dict[str, Any]:
    return {"id": cid, "new_tokens": 10, "output_tokens": 5, **kw}


def program(pid: str = "p", calls: list[dict[str, Any]] | None = None, **kw: Any) -> dict[str, Any]:
    return {"id": pid, "arrival_s": 0.0, "calls": calls if calls is not None else [call("c1")], **kw}


def write(tmp_path: Path, *lines: dict[str, Any] | str) -> Path:
    path = tmp_path / "trace.jsonl"
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def problems(tmp_path: Path, *lines: dict[str, Any] | str) -> list[tuple[int | None, str, str]]:
    with pytest.raises(TraceError) as info:
        load_trace(write(tmp_path, *lines))
    err = info.value
    assert err.path == str(tmp_path / "trace.jsonl")
    assert (err.line, err.field, err.message) == (err.problems[0].line, err.problems[0].field, err.problems[0].message)
    return [(p.line, p.field, p.message) for p in err.problems]


def test_defaults_resolve_per_the_contract(tmp_path: Path) -> None:
    [p] = load_trace(
        write(
            tmp_path,
            program(
                calls=[
                    call("a"),
                    call("b"),
                    call("c", after=["a", "b"]),
                    call("d", after=["a"], context=None),
                    call("e", after=["b", "c"], context="a", tool="bash", tool_s=1.5),
                ]
            ),
        )
    )
    assert [(c.parents, c.context) for c in p.calls] == [
        ([], None),
        (["a"], "a"),
        (["a", "b"], None),
        (["a"], None),  # explicit null is kept: no inherited context
        (["b", "c"], "a"),  # a transitive predecessor through c
    ]
    assert p.calls[0].tool is None and p.calls[0].tool_s == 0 and p.calls[4].tool_output_tokens == 0
    assert p.system_tokens == 0 and p.priority == 0 and p.slo_s is None and p.app is None


def test_blank_lines_skipped_and_programs_sorted_by_arrival_stably(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        program("x", arrival_s=5.0),
        "",
        "   ",
        program("y", arrival_s=1.0),
        program("z", arrival_s=5.0),
        program("w", arrival_s=0.5),
    )
    assert [p.id for p in load_trace(path)] == ["w", "y", "x", "z"]


def test_invalid_json_and_non_objects(tmp_path: Path) -> None:
    found = problems(tmp_path, program("ok"), "{not json", "[1, 2]", '{"id": "n", "arrival_s": NaN, "calls": []}')
    assert [(line, field) for line, field, _ in found] == [(2, ""), (3, ""), (4, "")]
    assert "invalid JSON" in found[0][2] and "expected a JSON object" in found[1][2] and "NaN" in found[2][2]


def test_missing_fields_wrong_types_and_negative_values(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        {"arrival_s": 1.0, "calls": [call("c1")]},
        program("b", arrival_s=-1.0, slo_s=0, system_tokens=-3),
        program("c", calls=[{"id": "c1", "new_tokens": "10", "output_tokens": 0}]),
        program("d", calls=[call("c1", tool="bash", tool_s=-2.0, tool_output_tokens=-1), call("c2", after="c1")]),
        program("e", calls=[]),
        program("f", arrival_s="soon", priority=1.5),
    )
    by = {(line, field): msg for line, field, msg in found}
    assert by[(1, "id")] == "required field is missing"
    assert "greater than or equal to 0" in by[(2, "arrival_s")]
    assert "greater than 0" in by[(2, "slo_s")]
    assert (2, "system_tokens") in by
    assert "valid integer" in by[(3, "calls[0].new_tokens")]
    assert "greater than or equal to 1" in by[(3, "calls[0].output_tokens")]
    assert (4, "calls[0].tool_s") in by and (4, "calls[0].tool_output_tokens") in by
    assert "valid list" in by[(4, "calls[1].after")]
    assert (5, "calls") in by
    assert (6, "arrival_s") in by and (6, "priority") in by
    assert len(found) == len(by)


def test_unknown_fields_are_errors(tmp_path: Path) -> None:
    found = problems(tmp_path, program(calls=[call("c1", tool="bash", tool_secs=3.0)], deadline=5))
    assert {(line, field) for line, field, _ in found} == {(1, "deadline"), (1, "calls[0].tool_secs")}
    assert all("unknown field" in msg for _, _, msg in found)


def test_duplicate_program_and_call_ids(tmp_path: Path) -> None:
    found = problems(tmp_path, program("a"), program("b", calls=[call("c1"), call("c1")]), program("a"))
    assert found == [
        (2, "calls[1].id", "duplicate call id 'c1' (first at calls[0])"),
        (3, "id", "duplicate program id 'a' (first on line 1)"),
    ]


def test_unknown_after_and_context_ids(tmp_path: Path) -> None:
    found = problems(tmp_path, program(calls=[call("c1"), call("c2", after=["c1", "zz"]), call("c3", context="yy")]))
    assert found == [
        (1, "calls[1].after[1]", "unknown call id 'zz'"),
        (1, "calls[2].context", "unknown call id 'yy'"),
    ]


def test_context_must_be_a_transitive_predecessor(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        program("ok", calls=[call("a"), call("b"), call("c", context="a")]),  # a -> b -> c: fine
        program("bad", calls=[call("a"), call("b", after=[]), call("c", after=["b"], context="a")]),
    )
    assert len(found) == 1
    line, field, msg = found[0]
    assert (line, field) == (2, "calls[2].context")
    assert "'a' is not a predecessor of 'c'" in msg


def test_cycles_are_named(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        program(calls=[call("c1", after=["c3"]), call("c2"), call("c3"), call("c4", after=["c4"])]),
    )
    assert found == [
        (1, "calls[0].after", "cycle in after: c1 -> c2 -> c3 -> c1"),
        (1, "calls[3].after", "cycle in after: c4 -> c4"),
    ]


def test_tool_fields_without_a_tool(tmp_path: Path) -> None:
    found = problems(tmp_path, program(calls=[call("c1", tool_s=2.0), call("c2", tool_output_tokens=4)]))
    assert found == [
        (1, "calls[0].tool_s", "tool_s is 2.0 but tool is null"),
        (1, "calls[1].tool_output_tokens", "tool_output_tokens is 4 but tool is null"),
    ]


def test_all_problems_are_listed_up_to_the_limit(tmp_path: Path) -> None:
    with pytest.raises(TraceError) as info:
        load_trace(write(tmp_path, *(program(f"p{i}", arrival_s=-1) for i in range(50))))
    err = info.value
    assert len(err.problems) == MAX_PROBLEMS and err.truncated
    text = str(err)
    assert "line 1: arrival_s:" in text and f"line {MAX_PROBLEMS}: arrival_s:" in text
    assert f"stopped after {MAX_PROBLEMS} problems" in text


def test_empty_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match="no programs"):
        load_trace(write(tmp_path, ""))
    with pytest.raises(TraceError, match="cannot read trace") as info:
        load_trace(tmp_path / "nope.jsonl")
    assert info.value.line is None
    assert isinstance(info.value, ValueError)


def test_program_built_in_code_is_checked_too() -> None:
    with pytest.raises(ValueError, match=r"calls\[1\].after\[0\]: unknown call id 'x'"):
        TraceProgram.model_validate(program(calls=[call("a"), call("b", after=["x"])]))


def test_topological_order_respects_after_and_list_order() -> None:
    p = TraceProgram.model_validate(
        program(calls=[call("d", after=["b", "c"]), call("b", after=["a"]), call("c", after=[]), call("a", after=[])])
    )
    assert [c.id for c in topological_order(p)] == ["c", "a", "b", "d"]


def test_dump_round_trips(tmp_path: Path) -> None:
    original = load_trace(
        write(
            tmp_path,
            program(
                "p1",
                arrival_s=2.5,
                app="coding-agent",
                system_tokens=512,
                slo_s=60.0,
                priority=2,
                calls=[
                    call("a", tool="bash", tool_s=1.4, tool_output_tokens=300, stage="generate"),
                    call("b", after=[]),
                    call("c", after=["a", "b"], context="b"),
                    call("d", context=None),
                    call("e"),
                ],
            ),
            program("p0", arrival_s=1.0),
        )
    )
    out = dump_trace(original, tmp_path / "copy.jsonl")
    again = load_trace(out)
    assert again == original
    assert dump_trace(again, tmp_path / "copy2.jsonl").read_bytes() == out.read_bytes()
    first = json.loads(out.read_text().splitlines()[1])
    assert set(first) <= {"id", "arrival_s", "app", "system_tokens", "slo_s", "priority", "calls"}
    assert first["calls"][3] == {"id": "d", "context": None, "new_tokens": 10, "output_tokens": 5}


@st.composite
def random_programs(draw: st.DrawFn) -> list[dict[str, Any]]:
    out = []
    for i in range(draw(st.integers(1, 4))):
        calls = []
        ids: list[str] = []
        for j in range(draw(st.integers(1, 6))):
            c: dict[str, Any] = call(f"c{j}", output_tokens=draw(st.integers(1, 50)))
            if draw(st.booleans()) and ids:
                c["after"] = draw(st.lists(st.sampled_from(ids), unique=True, max_size=3))
                if c["after"] and draw(st.booleans()):
                    c["context"] = draw(st.sampled_from([None, *c["after"]]))
            if draw(st.booleans()):
                c |= {"tool": "t", "tool_s": draw(st.floats(0, 100)), "tool_output_tokens": draw(st.integers(0, 9))}
            calls.append(c)
            ids.append(c["id"])
        out.append(program(f"p{i}", arrival_s=draw(st.floats(0, 1e4)), calls=calls))
    return out


@settings(max_examples=60, deadline=None)
@given(random_programs())
def test_valid_random_traces_round_trip(tmp_path_factory: pytest.TempPathFactory, lines: list[dict[str, Any]]) -> None:
    tmp = tmp_path_factory.mktemp("rt")
    loaded = load_trace(write(tmp, *lines))
    assert load_trace(dump_trace(loaded, tmp / "out.jsonl")) == loaded
    for p in loaded:
        order = [c.id for c in topological_order(p)]
        for c in p.calls:
            assert all(order.index(a) < order.index(c.id) for a in c.parents)
