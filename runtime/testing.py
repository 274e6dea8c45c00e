"""Test doubles for code that uses the runtime (like ``httpx.MockTransport``).

:class:`ScriptedEngine` answers every request at once with fixed text, or
fails like a dead engine, and records what it was sent.  It is for testing
pure runtime logic (dispatch, failover, spans, overhead) without vLLM; real
engine behaviour is tested on real engines.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator

from ._engines import Completion, Engine, GenerateRequest, TokenDelta
from ._errors import EngineUnavailableError

__all__ = ["ScriptedEngine"]


class ScriptedEngine(Engine):
    """An engine that replies ``text`` (one token) to everything, or raises as if dead.

    ``prompt_tokens`` is what each completion reports as its prompt length;
    ``seen`` lists every request in the order it arrived.
    """

    def __init__(self, name: str = "scripted", *, text: str = "ok", dies: bool = False, prompt_tokens: int = 3) -> None:
        super().__init__(name, "scripted")
        self.text = text
        self.dies = dies
        self.prompt_tokens = prompt_tokens
        self.seen: list[GenerateRequest] = []

    async def _start(self) -> None:
        pass

    async def _stream(self, request: GenerateRequest) -> AsyncGenerator[TokenDelta | Completion, None]:
        self.seen.append(request)
        if self.dies:
            raise EngineUnavailableError(f"{self.name} died")
        yield TokenDelta(self.text, (1,))
        yield Completion(
            request.request_id,
            self.name,
            self.model,
            self.text,
            (1,),
            "stop",
            self.prompt_tokens,
            1,
            0,
            ttft_s=1e-5,
            e2e_s=2e-5,
            queued_s=0.0,
        )

    async def _abort(self, request_id: str) -> None:
        pass

    async def _check_health(self) -> None:
        pass

    async def _aclose(self) -> None:
        pass
