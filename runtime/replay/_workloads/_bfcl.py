"""``bfcl``: multi-turn function calling shaped like BFCL's conversations and Autellix's call sizes."""

from __future__ import annotations

from .._trace import TraceCall, TraceProgram
from ._draw import Draw

__all__ = ["bfcl_program"]


#: User turns per conversation: 3, 4 or 5 with probabilities 1/4, 1/2, 1/4 (mean 4; BFCL multi-turn ~4).
BFCL_TURNS = ((3, 0.25), (4, 0.5), (5, 0.25))
#: LLM calls per user turn: 1, 2 or 3 with probabilities 0.5, 0.4, 0.1 (mean 1.6; BFCL ~1.6 calls/turn).
BFCL_CALLS_PER_TURN = ((1, 0.5), (2, 0.4), (3, 0.1))
#: Output tokens per call: mean 34 (Autellix), uniform 20-48 (spread: our choice).
BFCL_OUTPUT_TOKENS = (20, 48)
#: Function-call duration, uniform seconds (short tool calls; our choice 0.1-0.5 s).
BFCL_TOOL_S = (0.1, 0.5)
#: Function result tokens, uniform (our choice).
BFCL_TOOL_OUTPUT_TOKENS = (30, 90)
#: Fresh tokens: the first call carries the function docs and first question,
#: later user turns a short message.  Our choice, fitted so the mean prompt
#: per call (with the inherited conversation) is ~735 tokens (Autellix).
BFCL_FIRST_TOKENS = (400, 560)
BFCL_USER_TOKENS = (20, 60)


def bfcl_program(pid: str, arrival: float, d: Draw) -> TraceProgram:
    turns = d.choice(BFCL_TURNS)
    calls: list[TraceCall] = []
    for t in range(1, turns + 1):
        per_turn = d.choice(BFCL_CALLS_PER_TURN)
        for k in range(1, per_turn + 1):
            if k == 1:
                fresh = d.uniform_int(BFCL_FIRST_TOKENS if t == 1 else BFCL_USER_TOKENS)
            else:
                fresh = d.uniform_int((5, 15))  # the function-result framing before the model continues
            # Within a turn the model calls functions until its last call, which answers the user.
            has_tool = k < per_turn
            calls.append(
                TraceCall(
                    id=f"u{t}.c{k}",
                    new_tokens=d.tokens(fresh),
                    output_tokens=d.tokens(d.uniform_int(BFCL_OUTPUT_TOKENS)),
                    tool="function" if has_tool else None,
                    tool_s=d.seconds(d.uniform(BFCL_TOOL_S)) if has_tool else 0.0,
                    tool_output_tokens=d.tokens(d.uniform_int(BFCL_TOOL_OUTPUT_TOKENS), at_least=0) if has_tool else 0,
                    stage=f"turn{t}",
                )
            )
    return TraceProgram(id=pid, arrival_s=arrival, app="bfcl", calls=calls)
