"""The README's contract: summarize documents in parallel.

python examples/summarize.py                 # on the demo model (smollm2-135m)
agentrt run examples/summarize.py:pipeline --input 'docs=["one text", "another"]'
"""

from __future__ import annotations

from runtime import Runtime
from workflows import Context, step, workflow


@step(retries=2, timeout_s=60)
async def summarize(ctx: Context, text: str) -> str:
    reply = await ctx.llm([{"role": "user", "content": f"Summarize in one sentence:\n\n{text}"}], max_tokens=64)
    return reply.text


@workflow(deadline_s=120)
async def pipeline(ctx: Context, docs: list[str]) -> list[str]:
    return await ctx.gather(*(summarize(ctx, d) for d in docs))


if __name__ == "__main__":  # vLLM's engine core is a spawned process: keep the guard
    docs = [
        "The Eiffel Tower was completed in 1889 for the World's Fair in Paris and is 330 metres tall.",
        "Python is a programming language created by Guido van Rossum and first released in 1991.",
    ]
    for summary in Runtime.run_sync(pipeline, docs=docs):
        print("-", summary.strip())
