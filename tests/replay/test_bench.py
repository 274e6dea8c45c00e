"""``compare`` and the two offline CLI commands (``workload``, ``bench compare``), run as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.replay._bench import compare, plot_labels, slo_attainment_at
from runtime.replay._results import CallResult, ProgramResult, ReplayResult, summarize
from runtime.replay._trace import load_trace

ROOT = Path(__file__).resolve().parents[2]


def agentrt(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runtime._cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=dict(os.environ),
        timeout=120,
    )


def make_result(
    tmp_path: Path,
    name: str,
    policy: str,
    jcts: list[float | None],
    *,
    slo: float | None = 10.0,
    trace: str = "t.jsonl",
) -> Path:
    programs = []
    for i, jct in enumerate(jcts):
        programs.append(
            ProgramResult(
                id=f"p{i}",
                arrival_s=float(i),
                finish_s=None if jct is None else i + jct,
                jct_s=jct,
                slo_s=slo,
                slo_met=None if slo is None else (jct is not None and jct <= slo),
                calls=[CallResult(id="c", engine=0, prompt_tokens=100, cached_tokens=25)],
            )
        )
    r = ReplayResult(
        policy=policy,
        engine="sim",
        engines=1,
        trace=trace,
        summary=summarize(programs, preemptions=7),
        programs=programs,
    )
    return r.write(tmp_path / name)


def test_slo_attainment_at_scales(tmp_path: Path) -> None:
    from runtime.replay._results import load_result

    r = load_result(make_result(tmp_path, "a.json", "vllm", [2.0, 6.0, 12.0, None]))
    assert slo_attainment_at(r, 1.0) == 0.5
    assert slo_attainment_at(r, 0.25) == 0.25  # 2 <= 2.5
    assert slo_attainment_at(r, 4.0) == 0.75  # the failed program never meets
    no_slo = load_result(make_result(tmp_path, "b.json", "vllm", [1.0], slo=None))
    assert slo_attainment_at(no_slo, 1.0) is None


def test_plot_labels_tell_apart_results_of_the_same_policy_and_engine(tmp_path: Path) -> None:
    from runtime.replay._results import load_result

    paths = [
        make_result(tmp_path, "base.json", "vllm", [1.0]),
        make_result(tmp_path, "other.json", "vllm", [2.0]),
        make_result(tmp_path, "mine.json", "agentrt", [1.5]),
    ]
    labels = plot_labels([(p, load_result(p)) for p in paths])
    assert labels == ["vllm/sim (base)", "vllm/sim (other)", "agentrt/sim"]


def test_compare_table_and_png(tmp_path: Path) -> None:
    import matplotlib.image

    a = make_result(tmp_path, "a.json", "vllm", [2.0, 4.0, 6.0, 8.0])
    b = make_result(tmp_path, "b.json", "agentrt", [1.0, 2.0, 3.0, 20.0])
    png = tmp_path / "cmp.png"
    table = compare([a, b], png=png)
    lines = table.splitlines()
    assert lines[0].split()[:4] == ["file", "policy", "engine", "engines"]
    row_a = lines[2].split()
    row_b = lines[3].split()
    # file policy engine engines programs completed mean p50 p95 p99 slo cached programs/s preemptions
    assert row_a == [
        "a.json",
        "vllm",
        "sim",
        "1",
        "4",
        "4",
        "5.00",
        "5.00",
        "7.70",
        "7.94",
        "100.0%",
        "25.0%",
        "0.364",
        "7",
    ]
    assert row_b[:11] == ["b.json", "agentrt", "sim", "1", "4", "4", "6.50", "2.50", "17.45", "19.49", "75.0%"]
    assert "WARNING" not in table
    image = matplotlib.image.imread(png)
    assert image.ndim == 3 and image.shape[1] > 1000  # two panels side by side


def test_compare_without_slos_has_one_panel_and_warns_on_different_traces(tmp_path: Path) -> None:
    import matplotlib.image

    a = make_result(tmp_path, "a.json", "vllm", [2.0, None], slo=None, trace="one.jsonl")
    b = make_result(tmp_path, "b.json", "vllm", [3.0, 4.0], slo=None, trace="two.jsonl")
    png = tmp_path / "one.png"
    table = compare([a, b], png=png)
    assert "WARNING: results come from different traces (one.jsonl, two.jsonl)" in table
    assert table.splitlines()[2].split()[4:7] == ["2", "1", "2.00"]
    assert matplotlib.image.imread(png).shape[1] < 1000


@pytest.mark.parametrize("kind", ["agent", "coding"])
def test_cli_workload_writes_a_valid_trace(tmp_path: Path, kind: str) -> None:
    out = tmp_path / f"{kind}.jsonl"
    args = [
        "workload",
        kind,
        "--programs",
        "12",
        "--rate",
        "0.5",
        "--seed",
        "3",
        "--scale",
        "0.02",
        "--slo-scale",
        "2",
        "--out",
        str(out),
    ]
    done = agentrt(*args)
    assert done.returncode == 0, done.stderr
    programs = load_trace(out)
    calls = sum(len(p.calls) for p in programs)
    outputs = sum(c.output_tokens for p in programs for c in p.calls)
    line = done.stdout.strip()
    assert f"12 {kind} programs, {calls} calls" in line
    assert f"{outputs} output tokens" in line
    assert f"arrivals {programs[0].arrival_s:.3f}-{programs[-1].arrival_s:.3f} s" in line
    assert all(p.slo_s for p in programs)
    first = out.read_bytes()
    assert agentrt(*args).returncode == 0 and out.read_bytes() == first


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["workload", "bfcl", "--programs", "0", "--rate", "1", "--seed", "1"], "programs must be >= 1"),
        (["workload", "bfcl", "--programs", "3", "--rate", "-1", "--seed", "1"], "rate must be > 0"),
    ],
)
def test_cli_workload_bad_parameters(tmp_path: Path, args: list[str], message: str) -> None:
    done = agentrt(*args, "--out", str(tmp_path / "x.jsonl"))
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr


def test_cli_bench_compare(tmp_path: Path) -> None:
    a = make_result(tmp_path, "a.json", "vllm", [2.0, 4.0])
    b = make_result(tmp_path, "b.json", "agentrt", [1.0, 2.0])
    done = agentrt("bench", "compare", str(a), str(b))
    assert done.returncode == 0, done.stderr
    assert "a.json" in done.stdout and "agentrt" in done.stdout and "3.00" in done.stdout
    assert (tmp_path / "compare.png").stat().st_size > 1000


def test_cli_bench_compare_bad_file_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"policy": "x"}))
    done = agentrt("bench", "compare", str(bad), "--png", str(tmp_path / "p.png"))
    assert done.returncode == 2
    assert "not a replay result document" in done.stderr and "summary" in done.stderr
    assert "Traceback" not in done.stderr
    missing = agentrt("bench", "compare", str(tmp_path / "nope.json"))
    assert missing.returncode == 2 and "cannot read result" in missing.stderr
