"""benchmarks/memory_bound.py: its policy rows are checked before any replay, its capacity rules, a tiny run.

Pure: the replays are simulated (a few programs, tokens x0.05, on two
simulated engines), seconds each.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "memory_bound.py"
sys.path.insert(0, str(ROOT / "benchmarks"))

import memory_bound  # noqa: E402

#: Rows whose options exist today (the memory-bound switches are not part of this test).
ROWS: list[dict[str, Any]] = [
    {"label": "vllm", "policy": "vllm"},
    {"label": "llm-d", "policy": "llm-d"},
    {"label": "agentrt", "policy": "agentrt", "engine": {"kv_blocks": 1500}},
    {"label": "agentrt-waiting", "policy": "agentrt", "kwargs": {"max_waiting": None}, "ablates": "max_waiting"},
]


def test_rows_with_options_the_code_has_pass_the_check() -> None:
    memory_bound.check_rows(ROWS)


@pytest.mark.parametrize(
    ("row", "said"),
    [
        ({"label": "x", "policy": "agentrt", "kwargs": {"no_such_switch": False}}, "has no option no_such_switch"),
        ({"label": "x", "policy": "llm-d", "engine": {"no_such_tier": "lru"}}, "SimEngine has no option no_such_tier"),
        ({"label": "x", "policy": "no-such-policy"}, "no policy 'no-such-policy'"),
        ({"label": "x", "policy": "vllm", "kwarg": {}}, "unknown keys"),
    ],
)
def test_a_row_the_code_cannot_run_stops_the_benchmark_naming_it(row: dict[str, Any], said: str) -> None:
    with pytest.raises(SystemExit) as stopped:
        memory_bound.check_rows([ROWS[0], row])
    assert "row x" in str(stopped.value)
    assert said in str(stopped.value)


def test_the_real_check_takes_a_trace_kind_and_a_seed_not_a_tuning_seed(capsys: pytest.CaptureFixture[str]) -> None:
    args = memory_bound.parse_args(["--real", "--real-trace", "agent", "--real-seed", "202"])
    assert (args.real_trace, args.real_seed) == ("agent", 202)
    assert memory_bound.parse_args(["--real"]).real_seed == memory_bound.REAL_SEED
    with pytest.raises(SystemExit):
        memory_bound.parse_args(["--real", "--real-seed", str(memory_bound.REAL_TUNING_SEEDS[0])])
    assert "is a tuning seed" in capsys.readouterr().err


def test_a_policy_capacity_is_interpolated_at_the_first_crossing_of_the_bound() -> None:
    found = memory_bound.policy_capacity([(1.0, 100.0), (2.0, 150.0), (3.0, 250.0), (4.0, 190.0)], 200.0)
    assert found["capacity"] == pytest.approx(2.5)
    assert memory_bound.policy_capacity([(1.0, 300.0), (2.0, 100.0)], 200.0)["capacity"] is None
    censored = memory_bound.policy_capacity([(1.0, 100.0), (2.0, 150.0)], 200.0)
    assert censored["capacity"] == 2.0
    assert censored["censored"]


def test_kendall_tau_counts_pairs_in_the_same_order() -> None:
    same = memory_bound.kendall({"a": 1.0, "b": 2.0, "c": 3.0}, {"a": 10.0, "b": 20.0, "c": 30.0})
    assert same["kendall_tau"] == 1.0
    assert same["same_order"]
    swapped = memory_bound.kendall({"a": 1.0, "b": 2.0, "c": 3.0}, {"a": 20.0, "b": 10.0, "c": 30.0})
    assert swapped["kendall_tau"] == pytest.approx(1 / 3)
    assert swapped["sim_order"] == ["b", "a", "c"]


def _run(tmp_path: Path, *extra: str) -> dict[str, Any]:
    rows = tmp_path / "rows.json"
    rows.write_text(json.dumps(ROWS))
    argv = [
        sys.executable, str(SCRIPT), "--quick", "--traces", "agent", "--programs", "4", "--loads", "light,0.7",
        "--capacity", "agent=0.5", "--extend-to", "0", "--workers", "1", "--rows", str(rows),
        "--out-dir", str(tmp_path), *extra,
    ]  # fmt: skip
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report: dict[str, Any] = json.loads((tmp_path / "memory_bound_quick.json").read_text())
    return report


def test_a_tiny_sweep_reports_every_row_at_every_load_and_resumes_without_replaying(tmp_path: Path) -> None:
    report = _run(tmp_path)
    agent = report["sim"]["agent"]
    assert agent["capacity"]["capacity"] == 0.5
    assert set(agent["table"]) == {r["label"] for r in ROWS}
    for cells in agent["table"].values():
        assert set(cells) == {"light", "0.7"}
        assert cells["0.7"]["rate"] == pytest.approx(0.35)
        assert cells["0.7"]["failed"] == 0
        assert cells["0.7"]["jct_p95_s"] >= cells["0.7"]["jct_mean_s"] > 0
    assert set(agent["capacities"]) == {r["label"] for r in ROWS}
    assert set(agent["ablation"]) == {"agentrt-waiting"}
    assert "agentrt" in agent["ratios_vs_baseline"]
    assert (tmp_path / "memory_bound_quick.png").is_file()
    # 4 rows x 2 loads, the baseline's light load shared with the capacity's light-load replay.
    assert report["replays"] == {"ran": 8, "reused": 1}
    again = _run(tmp_path, "--resume")
    assert again["replays"]["ran"] == 0
    assert again["sim"]["agent"]["table"] == agent["table"]
    # Report only: what the JSONL holds, nothing run, the rest left out.
    jsonl = tmp_path / "memory_bound_quick.jsonl"
    lines = jsonl.read_text().splitlines()
    jsonl.write_text("\n".join(line for line in lines if '"label": "agentrt-waiting"' not in line) + "\n")
    reported = _run(tmp_path, "--report-only")
    assert reported["replays"]["ran"] == 0
    assert set(reported["sim"]["agent"]["table"]) == {r["label"] for r in ROWS} - {"agentrt-waiting"}
