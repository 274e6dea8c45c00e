"""``text2sql``: a CHESS-style Text-to-SQL pipeline shaped like HEXGEN-TEXT2SQL's traces."""

from __future__ import annotations

from .._trace import TraceCall, TraceProgram
from ._draw import Draw

__all__ = ["T2S_CANDIDATES", "text2sql_program"]


#: Mean (prompt, output) tokens per stage (HEXGEN-TEXT2SQL's CHESS traces).
T2S_RETRIEVAL = (308, 5)
T2S_KEYWORDS = (667, 45)
T2S_CANDIDATE = (11_748, 678)
T2S_REVISE = (5_963, 79)
T2S_UNIT_TEST = (1_109, 103)
T2S_EVALUATE = (961, 22)
#: LLM calls per query: 16-22 (HEXGEN); revise rounds per candidate 0-5 (HEXGEN).
T2S_CALLS = (16, 22)
T2S_MAX_REVISE = 5
#: Parallel SQL candidates (CHESS generates several; 3 makes 16-22 calls reachable).
T2S_CANDIDATES = 3
#: Executing a candidate or revision ("sql" tool): uniform seconds, result tokens.
#: Not published: our choice (a read-only query on a benchmark database).
T2S_SQL_S = (0.05, 0.5)
T2S_SQL_OUTPUT_TOKENS = (20, 200)
#: Retrieval's tool (schema/value lookup) after the retrieval call: our choice.
T2S_RETRIEVE_S = (0.05, 0.3)
T2S_RETRIEVE_OUTPUT_TOKENS = (20, 80)
#: Fresh tokens of a revise round that continues the previous round's
#: conversation (the execution feedback framing): our choice.
T2S_REVISE_FOLLOWUP_TOKENS = 60
#: Multiplicative spread (lognormal sigma, mean 1) of prompt and output sizes around the stage means: our choice.
T2S_PROMPT_SIGMA = 0.2
T2S_OUTPUT_SIGMA = 0.3


def _spread_revisions(total: int, candidates: int, d: Draw) -> list[int]:
    """``total`` revise rounds spread at random over the candidates, at most T2S_MAX_REVISE each."""
    rounds = [0] * candidates
    for _ in range(total):
        open_ = [i for i, r in enumerate(rounds) if r < T2S_MAX_REVISE]
        rounds[d.rng.choice(open_)] += 1
    return rounds


def text2sql_program(pid: str, arrival: float, d: Draw, candidates: int) -> TraceProgram:
    calls: list[TraceCall] = []

    def llm(
        cid: str,
        stage: str,
        mean: tuple[float, float],
        after: list[str],
        *,
        context: str | None = None,
        fresh: float | None = None,
        tool: tuple[str, tuple[float, float], tuple[int, int]] | None = None,
    ) -> str:
        prompt = d.around(mean[0], T2S_PROMPT_SIGMA) if fresh is None else fresh
        name, tool_s, tool_out = None, 0.0, 0
        if tool is not None:
            name = tool[0]
            tool_s = d.seconds(d.uniform(tool[1]))
            tool_out = d.tokens(d.uniform_int(tool[2]), at_least=0)
        calls.append(
            TraceCall(
                id=cid,
                after=after,
                context=context,
                new_tokens=d.tokens(prompt),
                output_tokens=d.tokens(d.around(mean[1], T2S_OUTPUT_SIGMA)),
                tool=name,
                tool_s=tool_s,
                tool_output_tokens=tool_out,
                stage=stage,
            )
        )
        return cid

    sql = ("sql", T2S_SQL_S, T2S_SQL_OUTPUT_TOKENS)
    # Fixed calls: retrieval, keywords, the candidates, unit-test generation, one evaluation per candidate.
    fixed = 3 + 2 * candidates
    target = d.uniform_int(T2S_CALLS)
    revisions = _spread_revisions(min(candidates * T2S_MAX_REVISE, max(0, target - fixed)), candidates, d)
    # Round r > 1 continues round r-1's conversation, so its prompt is the
    # previous round's plus ~(output + result + follow-up) tokens; the first
    # round's fresh prompt is lowered so the mean over rounds is the published 5,963.
    growth = T2S_REVISE[1] + sum(T2S_SQL_OUTPUT_TOKENS) / 2 + T2S_REVISE_FOLLOWUP_TOKENS
    weights = [T2S_MAX_REVISE + 1 - r for r in range(1, T2S_MAX_REVISE + 1)]  # P(rounds >= r), uniform 0-5
    mean_extra = growth * sum((r - 1) * w for r, w in enumerate(weights, 1)) / sum(weights)
    first_revise = (T2S_REVISE[0] - mean_extra, T2S_REVISE[1])

    retrieval = llm(
        "retrieval", "retrieval", T2S_RETRIEVAL, [], tool=("retrieve", T2S_RETRIEVE_S, T2S_RETRIEVE_OUTPUT_TOKENS)
    )
    # Stages use their own prompt templates: no inherited context unless a stage continues one.
    keywords = llm("keywords", "keywords", T2S_KEYWORDS, [retrieval])
    ends = []
    for c in range(1, candidates + 1):
        last = llm(f"cand{c}", "candidate", T2S_CANDIDATE, [keywords], tool=sql)
        for r in range(1, revisions[c - 1] + 1):
            if r == 1:
                last = llm(f"cand{c}.rev1", "revise", first_revise, [last], tool=sql)
            else:
                fresh = d.uniform(
                    (T2S_REVISE_FOLLOWUP_TOKENS / 2, T2S_REVISE_FOLLOWUP_TOKENS * 3 / 2)
                )  # mean T2S_REVISE_FOLLOWUP_TOKENS
                last = llm(f"cand{c}.rev{r}", "revise", T2S_REVISE, [last], context=last, fresh=fresh, tool=sql)
        ends.append(last)
    unit_tests = llm("unit_tests", "unit_test", T2S_UNIT_TEST, ends)
    for c in range(1, candidates + 1):
        llm(f"eval{c}", "evaluate", T2S_EVALUATE, [unit_tests])
    return TraceProgram(id=pid, arrival_s=arrival, app="text2sql", calls=calls)
