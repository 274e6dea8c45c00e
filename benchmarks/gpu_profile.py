"""Time a Llama-3-8B-shaped forward pass on a GPU: the figures behind the simulator's ``h100-llama3-8b`` profile.

The bundled profile (``runtime/replay/_sim/profiles/h100-llama3-8b.json``) is a
roofline estimate.  This measures what it prices, with plain PyTorch (2.5 or
later) and no vLLM: Llama-3-8B's decoder stack (hidden 4096, 32 query and 8 KV heads of 128,
MLP 14336, 32 layers, vocabulary 128256; random weights), attention by
``scaled_dot_product_attention`` (FlashAttention only on CUDA, grouped query
heads, causal mask aligned to the cache's end) over a preallocated KV cache,
timed with CUDA events (warm-up, median of ``--repeats``):

- prefill: one sequence's chunk of ``--chunk`` tokens after 0 to 128K cached
  ones (``prefill_chunk_time``; stored as ``prefill_tokens_per_s`` at the
  chunk's mean context);
- decode: one step of ``B`` sequences at context ``c``, replayed as a CUDA graph
  as vLLM does, fitted per batch size to ``decode_step_s(B) +
  decode_s_per_context_token(B) * B * c``;
- copies from pinned host memory and back: one KV block (16 tokens of all
  layers, 2 MiB), 256 blocks one after another (the profile's block-granular
  ``*_bytes_per_s``; here with the GPU idle, in vLLM beside compute), 1 GiB.

Logits are computed for each sequence's last token.  Not measured: the
engine's own time (``step_overhead_s``, ``request_latency_s``), so the
profile's prices are compared without it.  ``--layers N`` times N layers and
scales them to 32 (the output head is timed apart, added once).  ``--quick``:
toy shapes, seconds on a CPU, to test the script.  Writes JSON (measurements,
machine, fitted profile fields beside the bundled ones, ratios) and a PNG.

    python benchmarks/gpu_profile.py --out benchmarks/results/gpu_profile_h100.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.bias import causal_lower_right

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from _machine import machine  # noqa: E402 - after the path set-up above

BUNDLED = ROOT / "runtime" / "replay" / "_sim" / "profiles" / "h100-llama3-8b.json"
BLOCK_TOKENS = 16  # the bundled profile's block_size


@dataclass(frozen=True)
class Shape:
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    mlp: int
    layers: int
    vocab: int


LLAMA3_8B = Shape(hidden=4096, heads=32, kv_heads=8, head_dim=128, mlp=14336, layers=32, vocab=128256)
TOY = Shape(hidden=256, heads=8, kv_heads=2, head_dim=32, mlp=512, layers=4, vocab=1024)

# The grid: prefill chunk and contexts before it, decode batches and contexts, copies (blocks, bytes of the large one).
FULL: dict[str, Any] = dict(chunk=2048, offsets=[0, 8192, 32768, 65536, 129024], batches=[1, 8, 32, 64, 128, 256])
FULL |= dict(contexts=[256, 1024, 4096, 16384, 65536], blocks=256, large=1 << 30)
QUICK: dict[str, Any] = dict(chunk=64, offsets=[0, 256, 1024], batches=[1, 4, 8], contexts=[64, 512])
QUICK |= dict(blocks=64, large=8 << 20)


def kv_bytes_per_token(shape: Shape, layers: int, dtype: torch.dtype) -> int:
    return 2 * layers * shape.kv_heads * shape.head_dim * dtype.itemsize


class Stack:
    """Random weights of ``layers`` decoder layers and the output head, and one flat KV buffer per layer."""

    def __init__(self, shape: Shape, layers: int, kv_tokens: int, device: str, dtype: torch.dtype) -> None:
        self.shape, self.device, self.dtype = shape, device, dtype
        h, d = shape.hidden, shape.head_dim

        def w(*size: int) -> torch.Tensor:
            return torch.randn(*size, device=device, dtype=dtype) * 0.02

        self.layers = [
            {
                "qkv": w((shape.heads + 2 * shape.kv_heads) * d, h),
                "o": w(h, shape.heads * d),
                "gate_up": w(2 * shape.mlp, h),
                "down": w(h, shape.mlp),
                "kv": w(2 * kv_tokens * shape.kv_heads * d),
            }
            for _ in range(layers)
        ]
        self.norm = torch.ones(h, device=device, dtype=dtype)
        self.head = w(shape.vocab, h)

    def cache(self, layer: dict[str, torch.Tensor], batch: int, tokens: int) -> torch.Tensor:
        """Keys and values of ``batch`` sequences of ``tokens``: ``[2, batch, kv_heads, tokens, head_dim]``."""
        s = self.shape
        return layer["kv"][: 2 * batch * s.kv_heads * tokens * s.head_dim].view(2, batch, s.kv_heads, tokens, -1)

    def rope(self, start: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        d = self.shape.head_dim
        inv = 1.0 / (500000.0 ** (torch.arange(0, d, 2, device=self.device, dtype=torch.float32) / d))
        angles = torch.outer(torch.arange(start, start + n, device=self.device, dtype=torch.float32), inv)
        angles = torch.cat([angles, angles], dim=-1)
        return angles.cos().to(self.dtype), angles.sin().to(self.dtype)

    def forward_layers(self, x: torch.Tensor, start: int, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """``x``: ``[batch, n, hidden]``, every sequence's ``n`` new tokens at positions ``start..start+n``."""
        s, (batch, n, _) = self.shape, x.shape
        cos, sin = rope
        mask = causal_lower_right(n, start + n) if n > 1 else None
        for layer in self.layers:
            q, k, v = F.linear(F.rms_norm(x, (s.hidden,), self.norm), layer["qkv"]).split(
                [s.heads * s.head_dim, s.kv_heads * s.head_dim, s.kv_heads * s.head_dim], dim=-1
            )
            q = _rotate(q.view(batch, n, s.heads, -1).transpose(1, 2), cos, sin)
            k = _rotate(k.view(batch, n, s.kv_heads, -1).transpose(1, 2), cos, sin)
            kv = self.cache(layer, batch, start + n)
            kv[0, :, :, start:] = k
            kv[1, :, :, start:] = v.view(batch, n, s.kv_heads, -1).transpose(1, 2)
            attn = F.scaled_dot_product_attention(q, kv[0], kv[1], attn_mask=mask, enable_gqa=True)
            x = x + F.linear(attn.transpose(1, 2).reshape(batch, n, -1), layer["o"])
            gate, up = F.linear(F.rms_norm(x, (s.hidden,), self.norm), layer["gate_up"]).chunk(2, dim=-1)
            x = x + F.linear(F.silu(gate) * up, layer["down"])
        return x

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.rms_norm(x[:, -1], (self.shape.hidden,), self.norm), self.head)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], dim=-1) * sin


def check_attention(device: str, dtype: torch.dtype) -> float:
    """Largest error of the masked grouped-query attention against repeated heads and an explicit mask."""
    q = torch.randn(2, 8, 16, 64, device=device, dtype=dtype)
    k, v = (torch.randn(2, 2, 80, 64, device=device, dtype=dtype) for _ in range(2))
    prefill = F.scaled_dot_product_attention(q, k, v, attn_mask=causal_lower_right(16, 80), enable_gqa=True)
    decode = F.scaled_dot_product_attention(q[:, :, -1:], k, v, enable_gqa=True)
    allowed = torch.ones(16, 80, dtype=torch.bool, device=device).tril(80 - 16)
    with sdpa_kernel(SDPBackend.MATH):
        reference = F.scaled_dot_product_attention(
            q.float(), k.float().repeat_interleave(4, 1), v.float().repeat_interleave(4, 1), attn_mask=allowed
        )
    errors = (prefill.float() - reference, decode.float() - reference[:, :, -1:])
    return max(float(e.abs().max()) for e in errors)


def median_s(fn: Callable[[], object], device: str, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device != "cuda":
            began = time.perf_counter()
            fn()
            times.append(time.perf_counter() - began)
            continue
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def graphed(fn: Callable[[], object], device: str) -> Callable[[], object]:
    """``fn`` replayed as one CUDA graph (vLLM's decode), or ``fn`` itself off CUDA."""
    if device != "cuda":
        return fn
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def copies(block_bytes: int, blocks: int, large: int, device: str, repeats: int) -> list[dict[str, Any]]:
    """Host <-> device copy rates from pinned memory (plain host memory off CUDA)."""
    pinned = device == "cuda"
    host = torch.empty(max(large, blocks * block_bytes), dtype=torch.uint8, pin_memory=pinned)
    dev = torch.empty_like(host, device=device)
    rows = []
    for direction, dst, src in (("host_to_device", dev, host), ("device_to_host", host, dev)):
        for what, count, size in (
            ("one block", 1, block_bytes),
            (f"{blocks} blocks", blocks, block_bytes),
            ("one large copy", 1, large),
        ):

            def copy(dst: torch.Tensor = dst, src: torch.Tensor = src, count: int = count, size: int = size) -> None:
                for i in range(count):
                    dst[i * size : (i + 1) * size].copy_(src[i * size : (i + 1) * size], non_blocking=pinned)

            seconds = median_s(copy, device, repeats)
            rows.append(dict(direction=direction, what=what, bytes=count * size, seconds=seconds))
            rows[-1]["bytes_per_s"] = count * size / seconds
    return rows


def curve(points: list[list[float]], x: float, extrapolate: bool = False) -> float:
    """The simulator's piecewise-linear curve (runtime/replay/_sim/_cost.py ``_Curve``)."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    if x <= xs[0]:
        return ys[0]
    if x >= xs[-1] and (not extrapolate or len(xs) == 1):
        return ys[-1]
    i = min(max(j for j in range(len(xs)) if xs[j] <= x), len(xs) - 2)
    return ys[i] + (ys[i + 1] - ys[i]) / (xs[i + 1] - xs[i]) * (x - xs[i])


def profile_prices(profile: dict[str, Any], before: int, chunk: int, batch: int, tokens: int) -> tuple[float, float]:
    """The profile's seconds for a prefill chunk, and for decoding ``batch`` sequences attending ``tokens`` in all.

    As the simulator prices them (``prefill_chunk_time``, ``decode_phase_time``): without ``step_overhead_s``.
    """
    prefill = chunk / curve(profile["prefill_tokens_per_s"], before + chunk / 2)
    per_context = profile["decode_s_per_context_token"]
    per_token = curve(per_context, batch) if isinstance(per_context, list) else per_context
    return prefill, curve(profile["decode_step_s"], batch, extrapolate=True) + per_token * tokens


def fit_decode(rows: list[dict[str, Any]]) -> tuple[list[list[float]], list[list[float]]]:
    """Per batch size, least squares of step seconds over context tokens: ``decode_step_s``, per-token curves."""
    fits: dict[int, tuple[float, float | None]] = {}
    for batch in sorted({r["batch"] for r in rows}):
        mine = [(r["batch"] * r["context"], r["seconds"]) for r in rows if r["batch"] == batch]
        if len({t for t, _ in mine}) < 2:
            fits[batch] = (mine[0][1], None)
            continue
        mean_t, mean_s = statistics.fmean(t for t, _ in mine), statistics.fmean(s for _, s in mine)
        slope = sum((t - mean_t) * (s - mean_s) for t, s in mine) / sum((t - mean_t) ** 2 for t, _ in mine)
        slope = max(slope, 0.0)
        fits[batch] = (mean_s - slope * mean_t, slope)
    fitted = [b for b, (_, k) in fits.items() if k is not None]
    steps, per_token = [], []
    for batch, (intercept, slope) in fits.items():
        if slope is None:  # one context measured: the nearest batch size's cost per context token
            slope = fits[min(fitted, key=lambda b: abs(b - batch))][1] if fitted else 0.0
            intercept -= (slope or 0.0) * next(r["batch"] * r["context"] for r in rows if r["batch"] == batch)
        steps.append([batch, max(intercept, 1e-7)])
        per_token.append([batch, float(f"{slope:.4g}")])
    return steps, per_token


def time_steps(args: argparse.Namespace, shape: Shape, grid: dict[str, Any], kv_tokens: int) -> dict[str, Any]:
    """Prefill and decode times (seconds; ``layers_seconds`` for the timed layers alone) and the attention check."""
    device, dtype, chunk = args.device, getattr(torch, args.dtype), args.chunk or grid["chunk"]
    scale = shape.layers / (args.layers or shape.layers)
    torch.manual_seed(0)
    stack = Stack(shape, args.layers or shape.layers, kv_tokens, device, dtype)
    heads: dict[int, float] = {}

    def timed(rows: int, start: int, n: int, graph: bool) -> dict[str, float]:
        x, rope = torch.randn(rows, n, shape.hidden, device=device, dtype=dtype), stack.rope(start, n)
        step = graphed(lambda: stack.forward_layers(x, start, rope), device) if graph else None
        layers_s = median_s(step or (lambda: stack.forward_layers(x, start, rope)), device, args.repeats)
        if rows not in heads:
            last = torch.randn(rows, 1, shape.hidden, device=device, dtype=dtype)
            heads[rows] = median_s(graphed(lambda: stack.logits(last), device), device, args.repeats)
        return {"layers_seconds": layers_s, "seconds": layers_s * scale + heads[rows]}

    out: dict[str, Any] = {"prefill": [], "decode": [], "skipped_prefill": [], "skipped_decode": []}
    flash = sdpa_kernel(SDPBackend.FLASH_ATTENTION) if device == "cuda" else contextlib.nullcontext()
    with torch.inference_mode(), flash:
        out["attention_check_max_error"] = error = check_attention(device, dtype)
        if error > 0.05:
            raise SystemExit(f"attention check failed: largest error {error:.3g} against the reference")
        for before in grid["offsets"]:
            if before + chunk > kv_tokens:
                out["skipped_prefill"].append([before, chunk])
            else:
                out["prefill"].append({"context_before": before, "chunk": chunk, **timed(1, before, chunk, False)})
        for context in grid["contexts"]:
            for batch in grid["batches"]:
                if batch * (context + 1) > kv_tokens:
                    out["skipped_decode"].append([batch, context + 1])
                else:
                    out["decode"].append({"batch": batch, "context": context + 1, **timed(batch, context, 1, True)})
    out["head_seconds"] = {str(rows): s for rows, s in heads.items()}
    return out


def measure(args: argparse.Namespace) -> dict[str, Any]:
    shape, grid = (TOY, QUICK) if args.quick else (LLAMA3_8B, FULL)
    dtype, timed = getattr(torch, args.dtype), args.layers or shape.layers
    kv_tokens = 16384 if args.quick else int(args.kv_gib * 2**30) // kv_bytes_per_token(shape, timed, dtype)
    m = time_steps(args, shape, grid, kv_tokens)
    error = m.pop("attention_check_max_error")
    kv_token = kv_bytes_per_token(shape, shape.layers, dtype)
    m["copies"] = copies(BLOCK_TOKENS * kv_token, grid["blocks"], grid["large"], args.device, args.repeats)
    profile = json.loads(BUNDLED.read_text())
    for row in m["prefill"]:
        price = profile_prices(profile, row["context_before"], row["chunk"], 1, 0)[0]
        row.update(tokens_per_s=row["chunk"] / row["seconds"], profile_seconds=price, ratio=row["seconds"] / price)
    for row in m["decode"]:
        price = profile_prices(profile, 0, 1, row["batch"], row["batch"] * row["context"])[1]
        row.update(profile_seconds=price, ratio=row["seconds"] / price)
    steps, per_token = fit_decode(m["decode"])
    blockwise = {r["direction"]: r["bytes_per_s"] for r in m["copies"] if r["what"].endswith(" blocks")}
    fields: dict[str, Any] = {
        "prefill_tokens_per_s": [
            [r["context_before"] + r["chunk"] / 2, round(r["tokens_per_s"], 1)] for r in m["prefill"]
        ],
        "decode_step_s": [[b, round(s, 7)] for b, s in steps],
        "decode_s_per_context_token": per_token,
        "kv_bytes_per_token": kv_token,
        **{f"{d}_bytes_per_s": float(f"{blockwise[d]:.4g}") for d in ("host_to_device", "device_to_host")},
    }
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    how = ": toy shapes (--quick), not a profile" if args.quick else ""
    if args.device == "cuda":
        how = ": FlashAttention through SDPA, decode as CUDA graphs; copies from pinned memory with the GPU idle"
    config = {"shape": asdict(shape), "timed_layers": timed, "layers_scale": shape.layers / timed}
    config |= {"dtype": args.dtype, "device": args.device, "repeats": args.repeats, "kv_cache_tokens": kv_tokens}
    return {
        "script": "benchmarks/gpu_profile.py",
        "quick": args.quick,
        "when": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "machine": {**machine(), "torch": torch.__version__, "cuda": torch.version.cuda, "device": name},
        "config": config,
        "attention_check_max_error": error,
        "measurements": m,
        "profile_fields": fields,
        "bundled": {key: profile.get(key) for key in fields},
        "ratio": {
            "prefill_chunk_time": statistics.median(r["ratio"] for r in m["prefill"]) if m["prefill"] else None,
            "decode_phase_time": statistics.median(r["ratio"] for r in m["decode"]) if m["decode"] else None,
            **{key: fields[key] / profile[key] for key in ("host_to_device_bytes_per_s", "device_to_host_bytes_per_s")},
        },
        "not_measured": "step_overhead_s and request_latency_s (the engine's CPU time, outside the forward pass); "
        "kv_blocks, host_kv_bytes and the scheduler limits (settings, not speeds)",
        "source": f"measured by benchmarks/gpu_profile.py on {name} with torch {torch.__version__}, {args.dtype}, "
        f"{timed} of {shape.layers} layers timed and scaled, random weights, medians of {args.repeats}{how}",
    }


def plot(report: dict[str, Any], png: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no PNG", file=sys.stderr)
        return
    m = report["measurements"]
    fig, (pre, dec, cp) = plt.subplots(1, 3, figsize=(15, 4.5))
    before = [r["context_before"] for r in m["prefill"]]
    pre.plot(before, [r["seconds"] for r in m["prefill"]], "o-", label="measured")
    pre.plot(before, [r["profile_seconds"] for r in m["prefill"]], "x--", color="C0", label="profile")
    pre.legend(fontsize=7)
    pre.set(xlabel="context before the chunk (tokens)", ylabel="prefill chunk (s)", title="prefill")
    for context in sorted({r["context"] for r in m["decode"]}):
        rows = [r for r in m["decode"] if r["context"] == context]
        (line,) = dec.plot([r["batch"] for r in rows], [r["seconds"] * 1e3 for r in rows], "o-", label=f"c={context}")
        dec.plot([r["batch"] for r in rows], [r["profile_seconds"] * 1e3 for r in rows], "x--", color=line.get_color())
    dec.set(xlabel="batch", ylabel="decode step (ms)", title="decode (o measured, x profile)", xscale="log")
    dec.legend(fontsize=7)
    labels = [f"{r['direction'][:1]}2{r['direction'].split('_')[-1][:1]}\n{r['what']}" for r in m["copies"]]
    cp.bar(labels, [r["bytes_per_s"] / 1e9 for r in m["copies"]])
    cp.axhline(report["bundled"]["host_to_device_bytes_per_s"] / 1e9, color="k", ls="--", label="profile")
    cp.set(ylabel="GB/s", title="copies")
    cp.tick_params(axis="x", labelsize=7)
    fig.suptitle(report["source"][:150], fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="bfloat16 on CUDA, float32 on the CPU by default")
    parser.add_argument("--layers", type=int, default=None, help="time this many layers and scale to the model's")
    parser.add_argument("--quick", action="store_true", help="toy shapes, seconds on a CPU: tests the script")
    parser.add_argument("--chunk", type=int, default=None, help="prefill chunk (tokens; 2048, 64 with --quick)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--kv-gib", type=float, default=40.0, help="KV cache to preallocate (GiB, not --quick)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gpu_profile.json")
    args = parser.parse_args()
    args.dtype = args.dtype or ("bfloat16" if args.device == "cuda" else "float32")
    if args.quick and args.device == "cpu":
        torch.set_num_threads(1)  # toy matrices: on a busy machine, idle threads only spin
    report = measure(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    plot(report, args.out.with_suffix(".png"))
    print(json.dumps({"profile_fields": report["profile_fields"], "ratio": report["ratio"]}, indent=1))


if __name__ == "__main__":
    main()
