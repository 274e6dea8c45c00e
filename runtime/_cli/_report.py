"""Plain-text reports of finished programs: the table `agentrt demo`, `run` and `resume` print."""

from __future__ import annotations

from .._program import Program

__all__ = ["program_report"]


def program_report(program: Program) -> str:
    """A table of the program's nodes with timings (seconds) and token counts."""
    rows = [("node", "kind", "name", "start_s", "dur_s", "engine", "prompt", "cached", "output", "status")]
    depth: dict[str, int] = {}
    for node in program.nodes.values():
        level = depth[node.id] = depth.get(node.parent, -1) + 1 if node.parent else 0
        status = "ok" if node.ok else ("running" if node.ok is None else f"failed: {node.error}")
        if node.attempts > 1:
            status += f" ({node.attempts} attempts)"
        show_tokens = node.kind.value in ("llm", "agent")
        rows.append(
            (
                node.id,
                node.kind.value,
                "  " * level + node.name,
                f"{node.started_s:.2f}",
                f"{node.duration_s:.2f}" if node.duration_s is not None else "-",
                node.engine or "",
                str(node.usage.prompt_tokens) if show_tokens else "",
                str(node.usage.cached_tokens) if show_tokens else "",
                str(node.usage.completion_tokens) if show_tokens else "",
                status,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    u = program.usage
    ratio = f"{u.cached_tokens / u.prompt_tokens:.0%}" if u.prompt_tokens else "-"
    lines.append("")
    lines.append(
        f"program {program.id} ({program.workflow}): {program.state.value} in {program.elapsed():.2f} s; "
        f"{program.llm_calls} LLM call(s), {program.tool_calls} tool call(s); tokens: prompt {u.prompt_tokens} "
        f"(cached {u.cached_tokens}, {ratio}), output {u.completion_tokens}"
    )
    return "\n".join(lines)
