"""The result document: summary statistics on known numbers, write/load, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runtime.replay._results import (
    CallResult,
    ProgramResult,
    ReplayResult,
    ResultError,
    format_summary,
    load_result,
    percentile,
    summarize,
)


def prog(
    pid: str, arrival: float, jct: float | None, *, slo: float | None = None, prompt: int = 100, cached: int = 0
) -> ProgramResult:
    met = None if slo is None else (jct is not None and jct <= slo)
    return ProgramResult(
        id=pid,
        arrival_s=arrival,
        finish_s=None if jct is None else arrival + jct,
        jct_s=jct,
        slo_met=met,
        slo_s=slo,
        error=None if jct is not None else "engine died",
        calls=[
            CallResult(
                id="c1", engine=0, queued_s=0.1, ttft_s=0.2, e2e_s=0.5, prompt_tokens=prompt, cached_tokens=cached
            )
        ],
    )


def test_percentile_matches_numpy_linear() -> None:
    values = [15.0, 20.0, 35.0, 40.0, 50.0]
    # numpy.percentile(values, q) with the default linear method:
    assert percentile(values, 0) == 15.0
    assert percentile(values, 50) == 35.0
    assert percentile(values, 40) == pytest.approx(29.0)
    assert percentile(values, 95) == pytest.approx(48.0)
    assert percentile(values, 99) == pytest.approx(49.6)
    assert percentile([7.0], 99) == 7.0
    with pytest.raises(ValueError):
        percentile([], 50)


def test_summary_on_known_programs() -> None:
    jcts = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0]
    programs = [prog(f"p{i}", float(i), j, slo=5.5, prompt=100, cached=50) for i, j in enumerate(jcts)]
    programs.append(prog("dead", 2.0, None, slo=100.0, prompt=100, cached=0))
    programs.append(prog("free", 3.0, 1.0))  # no deadline: not in the SLO denominator
    s = summarize(programs, preemptions=3, pins=4, pin_hits=2, pins_expired=1, pins_released_pressure=1)
    all_jcts = [*jcts, 1.0]
    assert (s.programs, s.completed, s.failed) == (12, 11, 1)
    assert s.jct_mean_s == pytest.approx(sum(all_jcts) / 11)
    assert s.jct_p50_s == pytest.approx(percentile(all_jcts, 50)) == pytest.approx(5.0)
    assert s.jct_p95_s == pytest.approx(9.5)
    assert s.jct_p99_s == pytest.approx(9.9)
    # 5 of 10 completed programs meet 5.5 s; the failed one counts as missed: 5 / 11.
    assert s.slo_attainment == pytest.approx(5 / 11)
    # Last finish: p9 at 9 + 10 = 19; first arrival 0.
    assert s.makespan_s == pytest.approx(19.0)
    assert s.programs_per_s == pytest.approx(11 / 19)
    assert (s.prompt_tokens, s.cached_prompt_tokens) == (1200, 500)
    assert s.cached_token_ratio == pytest.approx(500 / 1200)
    assert (s.preemptions, s.pins, s.pin_hits, s.pins_expired, s.pins_released_pressure) == (3, 4, 2, 1, 1)


def test_summary_when_nothing_completed_or_no_slo() -> None:
    s = summarize([prog("a", 0.0, None), prog("b", 1.0, None)])
    assert (s.completed, s.failed) == (0, 2)
    assert s.jct_mean_s is s.jct_p50_s is s.jct_p99_s is s.makespan_s is s.programs_per_s is None
    assert s.slo_attainment is None
    s = summarize([prog("a", 0.0, 2.0, prompt=0)])
    assert s.slo_attainment is None and s.cached_token_ratio is None and s.jct_p99_s == 2.0


def result(policy: str = "vllm", trace: str = "t.jsonl") -> ReplayResult:
    programs = [prog("a", 0.0, 2.0, slo=3.0), prog("b", 1.0, 4.0, slo=3.0)]
    return ReplayResult(
        policy=policy, engine="sim", engines=2, trace=trace, summary=summarize(programs), programs=programs, seed=7
    )


def test_write_and_load_round_trip(tmp_path: Path) -> None:
    r = result()
    path = r.write(tmp_path / "r.json")
    doc = json.loads(path.read_text())
    assert doc["summary"]["slo_attainment"] == 0.5 and doc["programs"][1]["slo_met"] is False
    assert set(doc["summary"]) >= {"programs", "jct_p99_s", "pins_released_pressure", "cached_token_ratio"}
    assert path.read_text().startswith('{\n  "policy"')
    assert load_result(path) == r


def test_load_result_errors(tmp_path: Path) -> None:
    with pytest.raises(ResultError, match="cannot read result"):
        load_result(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{oops")
    with pytest.raises(ResultError, match="not a JSON document"):
        load_result(bad)
    doc = result().model_dump(mode="json")
    doc["engine"] = "gpu"
    del doc["summary"]
    bad.write_text(json.dumps(doc))
    with pytest.raises(ResultError, match=r"not a replay result document: engine: .*; summary: Field required"):
        load_result(bad)


def test_format_summary_shows_the_numbers() -> None:
    text = format_summary(result())
    assert "vllm / sim x2" in text
    assert "2 (2 completed, 0 failed)" in text
    assert "3.00 / 3.00 / 3.90 / 3.98" in text  # mean / p50 / p95 / p99 of [2, 4]
    assert "50.0%" in text


def test_the_number_format_is_recorded_and_old_documents_still_load(tmp_path: Path) -> None:
    with_dtype = result().model_copy(update={"dtype": "float32", "model": "tiny"})
    path = with_dtype.write(tmp_path / "new.json")
    assert json.loads(path.read_text())["dtype"] == "float32"
    assert load_result(path).dtype == "float32"
    # A document written before the field existed has none.
    doc = result().model_dump(mode="json")
    del doc["dtype"]
    old = tmp_path / "old.json"
    old.write_text(json.dumps(doc))
    assert load_result(old).dtype is None


def test_format_summary_shows_the_model_and_its_format() -> None:
    lines = format_summary(result().model_copy(update={"dtype": "bfloat16", "model": "tiny"})).splitlines()
    assert any(line.split() == ["model", "tiny", "(bfloat16)"] for line in lines)
    assert "(float32)" in format_summary(result().model_copy(update={"dtype": "float32"}))  # no model name
    assert "model" not in format_summary(result())  # neither: no row
