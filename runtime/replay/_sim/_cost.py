"""The simulator's cost model: how long one engine step takes.

A :class:`CostProfile` describes one model on one device as a few measured
curves, stored as JSON (bundled profiles live in ``profiles/``)::

    {"name": "tiny-cpu", "model": "tiny", "device": "cpu", "dtype": "float32",
     "source": "how it was measured, or the publication it follows",
     "block_size": 128, "kv_blocks": 2048,
     "max_num_seqs": 256, "max_num_batched_tokens": 2048,
     "step_overhead_s": 0.001,
     "prefill_tokens_per_s": [[context_tokens, tokens_per_s], ...],
     "decode_step_s": [[batch_size, seconds], ...],
     "decode_s_per_context_token": 0.0,   # or [[batch_size, seconds], ...]
     "request_latency_s": 0.0}

One step costs ``step_overhead_s``, plus for every prefill chunk
``chunk_tokens / prefill_tokens_per_s(context_before + chunk_tokens / 2)``
(throughput at the chunk's mean attended context, interpolated linearly and
clamped at the ends), plus, when any sequence decodes,
``decode_step_s(batch)`` (interpolated linearly, extrapolated linearly past
the last point) and ``decode_s_per_context_token`` times the context tokens
the decoding sequences attend to.  That last term is a constant, or a curve
over the batch size (interpolated linearly, clamped at the ends): on a CPU a
small batch reads its context with fewer threads busy, and pays more per
context token than a large one.  ``request_latency_s`` (optional, default
0) is the time every request spends outside the engine loop, in the frontend
and between processes: half of it before the request reaches the scheduler,
half before its first token and its completion reach the caller.
``dtype`` (optional) is the number format the engine computed in
(``bfloat16``, ``float32`` ...; ``agentrt calibrate`` records the engine's):
on a CPU without native bfloat16 it changes every price several times over.
``measurements`` (optional) keeps what ``agentrt calibrate`` measured before
fitting (``decode``: ``[batch, context, seconds per step]`` rows;
``prefill``: ``[mean context, seconds per chunk]`` rows; ``skipped_decode``:
``[batch, context]`` and ``skipped_prefill``: ``[context, chunk]``, the grid
points left out because they would not fit the KV cache), for checking the
fit; it does not enter the price.

The host-memory KV tier (optional, all ``None`` by default; used only by a
:class:`~._engine.SimEngine` built with ``host_tier``): ``kv_bytes_per_token``
(the KV a token occupies, bytes: 131,072 for Llama-3-8B in bf16),
``host_kv_bytes`` (host memory the engine may fill with KV, bytes),
``host_to_device_bytes_per_s`` and ``device_to_host_bytes_per_s`` (effective
copy bandwidth of block-granular KV copies over the host link, bytes per
second, one figure per direction).  A transfer of ``n`` blocks costs ``n *
block_size * kv_bytes_per_token / bandwidth`` seconds, one transfer after
another on each direction's link (:mod:`._host`).
"""

from __future__ import annotations

import json
import os
from bisect import bisect_right
from functools import cached_property
from importlib import resources
from itertools import pairwise
from pathlib import Path
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .._errors import ReplayError

__all__ = ["CostProfile", "ProfileError", "bundled_profiles"]

_BUNDLED = "profiles"


class ProfileError(ReplayError, ValueError):
    """A cost profile could not be found or is invalid."""


def bundled_profiles() -> list[str]:
    """Names of the profiles shipped with the package (``h100-llama3-8b`` ...)."""
    folder = resources.files(__package__).joinpath(_BUNDLED)
    return sorted(p.name.removesuffix(".json") for p in folder.iterdir() if p.name.endswith(".json"))


class _Curve:
    """A piecewise-linear function through sorted points."""

    __slots__ = ("_slopes", "_xs", "_ys", "extrapolate")

    def __init__(self, points: list[tuple[float, float]], *, extrapolate: bool) -> None:
        self._xs = [x for x, _ in points]
        self._ys = [y for _, y in points]
        self._slopes = [
            (self._ys[i + 1] - self._ys[i]) / (self._xs[i + 1] - self._xs[i]) for i in range(len(points) - 1)
        ]
        self.extrapolate = extrapolate

    def __call__(self, x: float) -> float:
        xs = self._xs
        if x <= xs[0]:
            return self._ys[0]
        i = bisect_right(xs, x) - 1
        if i >= len(xs) - 1:
            if not self.extrapolate or not self._slopes:
                return self._ys[-1]
            i = len(xs) - 2
        return self._ys[i] + self._slopes[i] * (x - xs[i])


class CostProfile(BaseModel):
    """Step-time model and engine limits of one model on one device (see the module docstring).

    Times are seconds, sizes tokens or blocks.  Load one with :meth:`load`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    model: str
    device: str
    dtype: str | None = None
    source: str
    block_size: int = Field(gt=0)
    kv_blocks: int = Field(gt=0)
    max_num_seqs: int = Field(gt=0)
    max_num_batched_tokens: int = Field(gt=0)
    step_overhead_s: float = Field(ge=0)
    prefill_tokens_per_s: list[tuple[float, float]] = Field(min_length=1)
    decode_step_s: list[tuple[float, float]] = Field(min_length=1)
    decode_s_per_context_token: float | list[tuple[float, float]]
    request_latency_s: float = Field(default=0.0, ge=0)
    measurements: dict[str, list[list[float]]] | None = None
    kv_bytes_per_token: int | None = Field(default=None, gt=0)
    host_kv_bytes: int | None = Field(default=None, ge=0)
    host_to_device_bytes_per_s: float | None = Field(default=None, gt=0)
    device_to_host_bytes_per_s: float | None = Field(default=None, gt=0)

    @field_validator("prefill_tokens_per_s", "decode_step_s")
    @classmethod
    def _sorted_positive(cls, points: list[tuple[float, float]]) -> list[tuple[float, float]]:
        xs = [x for x, _ in points]
        if any(b <= a for a, b in pairwise(xs)):
            raise ValueError("points must be sorted by strictly increasing first value")
        if any(x < 0 for x in xs) or any(y <= 0 for _, y in points):
            raise ValueError("first values must be >= 0 and second values > 0")
        return points

    @field_validator("decode_s_per_context_token")
    @classmethod
    def _per_context_curve(cls, value: float | list[tuple[float, float]]) -> float | list[tuple[float, float]]:
        if isinstance(value, float | int):
            if value < 0:
                raise ValueError("must be >= 0")
            return value
        if not value:
            raise ValueError("needs at least one [batch_size, seconds] point")
        xs = [x for x, _ in value]
        if any(b <= a for a, b in pairwise(xs)):
            raise ValueError("points must be sorted by strictly increasing batch size")
        if any(x < 0 or y < 0 for x, y in value):
            raise ValueError("batch sizes and seconds must be >= 0")
        return value

    # The curves are cached properties, not pydantic private attributes:
    # those are looked up through ``__getattr__`` (microseconds each), and
    # the simulator prices hundreds of thousands of steps.
    @cached_property
    def _prefill(self) -> _Curve:
        return _Curve(self.prefill_tokens_per_s, extrapolate=False)

    @cached_property
    def _decode(self) -> _Curve:
        return _Curve(self.decode_step_s, extrapolate=True)

    @cached_property
    def _per_context(self) -> _Curve:
        per_context = self.decode_s_per_context_token
        points = [(1.0, float(per_context))] if isinstance(per_context, float | int) else per_context
        return _Curve(points, extrapolate=False)

    @classmethod
    def load(cls, profile: str | os.PathLike[str]) -> Self:
        """A profile from a JSON file path, or the name of a bundled profile (``h100-llama3-8b``)."""
        text: str
        where: str
        path = Path(profile)
        if isinstance(profile, os.PathLike) or path.suffix == ".json" or os.sep in str(profile):
            where = str(path)
            try:
                text = path.read_text()
            except OSError as exc:
                raise ProfileError(f"cannot read cost profile {where}: {exc}") from exc
        else:
            resource = resources.files(__package__).joinpath(_BUNDLED, f"{profile}.json")
            if not resource.is_file():
                raise ProfileError(
                    f"unknown cost profile {str(profile)!r}: not a bundled profile "
                    f"({', '.join(bundled_profiles())}) nor a .json path"
                )
            where = f"bundled profile {profile}"
            text = resource.read_text()
        return cls.parse(text, where)

    @classmethod
    def parse(cls, text: str, where: str = "<string>") -> Self:
        """A profile from JSON text; ``where`` names its origin in error messages."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ProfileError(f"{where}: not valid JSON: {exc}") from exc
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(
                f"field {'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}" for err in exc.errors()
            )
            raise ProfileError(f"{where}: invalid cost profile: {problems}") from exc

    def prefill_rate(self, context_tokens: float) -> float:
        """Prefill throughput (tokens/s) for a chunk whose mean attended context is ``context_tokens``."""
        return self._prefill(context_tokens)

    def decode_time(self, batch: int) -> float:
        """Seconds of one decode step for ``batch`` sequences, before the per-context-token term."""
        return self._decode(batch)

    def prefill_chunk_time(self, context_before: int, chunk_tokens: int) -> float:
        """Seconds to prefill ``chunk_tokens`` tokens after ``context_before`` already computed ones."""
        return chunk_tokens / self._prefill(context_before + chunk_tokens / 2)

    def decode_phase_time(self, batch: int, context_tokens: int) -> float:
        """Seconds the decoding part of a step adds: ``batch`` sequences attending ``context_tokens`` in all."""
        if batch <= 0:
            return 0.0
        return self._decode(batch) + self._per_context(batch) * context_tokens

    def step_time(self, prefill_chunks: list[tuple[int, int]], decode_batch: int, decode_context_tokens: int) -> float:
        """Seconds of one engine step.

        ``prefill_chunks`` holds ``(context_before, chunk_tokens)`` per
        prefilling sequence; ``decode_context_tokens`` is the total context
        the ``decode_batch`` decoding sequences attend to.
        """
        total = self.step_overhead_s + self.decode_phase_time(decode_batch, decode_context_tokens)
        for before, tokens in prefill_chunks:
            total += self.prefill_chunk_time(before, tokens)
        return total
