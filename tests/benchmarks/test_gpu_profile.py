"""benchmarks/gpu_profile.py: its quick run (toy shapes on the CPU) writes a profile-ready JSON and a PNG.

Pure: no engine, no GPU; seconds.  Checks what the script writes, never how fast it ran.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from runtime.replay import CostProfile

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_profile.py"
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_profile  # noqa: E402

FIELDS = [
    "prefill_tokens_per_s",
    "decode_step_s",
    "decode_s_per_context_token",
    "kv_bytes_per_token",
    "host_to_device_bytes_per_s",
    "device_to_host_bytes_per_s",
]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    out = tmp_path_factory.mktemp("gpu_profile") / "quick.json"
    subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--quick",
            "--device",
            "cpu",
            "--layers",
            "2",
            "--repeats",
            "2",
            "--out",
            str(out),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return json.loads(out.read_text()), out


def test_the_quick_run_records_every_measurement_with_positive_times(report: tuple[dict[str, Any], Path]) -> None:
    doc, out = report
    m = doc["measurements"]
    assert doc["quick"] is True
    assert doc["config"]["dtype"] == "float32"
    assert doc["config"]["timed_layers"] == 2
    assert doc["config"]["layers_scale"] == 2.0
    assert doc["machine"]["torch"] and doc["machine"]["device"] == "cpu"
    assert doc["attention_check_max_error"] < 1e-3
    assert len(m["prefill"]) == len(gpu_profile.QUICK["offsets"])
    assert len(m["decode"]) == len(gpu_profile.QUICK["batches"]) * len(gpu_profile.QUICK["contexts"])
    assert m["skipped_prefill"] == [] and m["skipped_decode"] == []
    for row in m["prefill"] + m["decode"]:
        assert row["seconds"] > row["layers_seconds"] > 0
        assert row["profile_seconds"] > 0
        assert row["ratio"] == pytest.approx(row["seconds"] / row["profile_seconds"])
    assert {(r["direction"], r["what"]) for r in m["copies"]} == {
        (direction, what)
        for direction in ("host_to_device", "device_to_host")
        for what in ("one block", "64 blocks", "one large copy")
    }
    assert all(r["bytes"] > 0 and r["seconds"] > 0 and r["bytes_per_s"] > 0 for r in m["copies"])
    assert out.with_suffix(".png").stat().st_size > 0


def test_the_fitted_fields_make_a_valid_profile_beside_the_bundled_values(report: tuple[dict[str, Any], Path]) -> None:
    doc, _ = report
    fields = doc["profile_fields"]
    assert sorted(fields) == sorted(FIELDS) == sorted(doc["bundled"])
    # Toy shape: 2 x 4 layers x 2 KV heads x 32 dims x 4 bytes.
    assert fields["kv_bytes_per_token"] == 2048
    assert all(doc["ratio"][key] > 0 for key in doc["ratio"])
    bundled = json.loads(gpu_profile.BUNDLED.read_text())
    folded = CostProfile.model_validate({**bundled, **fields, "source": doc["source"]})
    assert folded.prefill_chunk_time(0, 64) > 0
    assert folded.decode_phase_time(4, 4 * 65) > 0


@pytest.mark.parametrize("per_context", [None, [[1, 1e-7], [64, 5e-8]]])
@pytest.mark.parametrize(("before", "chunk", "batch", "tokens"), [(0, 2048, 1, 1025), (100_000, 8192, 300, 300 * 4097)])
def test_the_script_prices_like_the_simulator(
    per_context: list[list[float]] | None, before: int, chunk: int, batch: int, tokens: int
) -> None:
    data = json.loads(gpu_profile.BUNDLED.read_text())
    if per_context is not None:  # a calibrated profile's curve over the batch size
        data["decode_s_per_context_token"] = per_context
    profile = CostProfile.model_validate(data)
    prefill, decode = gpu_profile.profile_prices(data, before, chunk, batch, tokens)
    assert prefill == pytest.approx(profile.prefill_chunk_time(before, chunk))
    assert decode == pytest.approx(profile.decode_phase_time(batch, tokens))


def test_the_decode_fit_recovers_a_fixed_part_and_a_cost_per_context_token() -> None:
    rows = [
        {"batch": b, "context": c, "seconds": 0.005 + 0.001 * b + 5e-8 * b * c} for b in (1, 8, 32) for c in (256, 4096)
    ] + [{"batch": 64, "context": 1024, "seconds": 0.005 + 0.064 + 5e-8 * 64 * 1024}]
    steps, per_token = gpu_profile.fit_decode(rows)
    assert [b for b, _ in steps] == [1, 8, 32, 64]
    for (batch, fixed), (_, k) in zip(steps, per_token, strict=True):
        assert fixed == pytest.approx(0.005 + 0.001 * batch)
        assert k == pytest.approx(5e-8, rel=1e-3)
