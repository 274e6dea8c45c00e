"""``agentrt serve`` as a user runs it: a subprocess on the tiny model, real clients, then SIGTERM."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import openai
import pytest

from ..runtime.test_process_hygiene import EXIT_GUARD_S, Subject

pytestmark = pytest.mark.engine


def test_agentrt_serve_answers_authenticated_clients_and_stops_cleanly(tiny_model: Path, tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"sk-team": {"tenant": "team", "max_concurrency": 2}}))
    command = [sys.executable, "-m", "runtime._cli", "serve", "--model", str(tiny_model), "--port", "0"]
    command += ["--api-keys-file", str(keys), "--max-model-len", "1024"]
    subject = Subject(command)
    try:
        found = subject.wait_for(r"agentrt serve: (http://127\.0\.0\.1:\d+)/v1 serves 'tiny'")
        base_url = f"{found.group(1)}/v1"
        with openai.OpenAI(base_url=base_url, api_key="sk-team", max_retries=0) as client:
            assert [m.id for m in client.models.list().data] == ["tiny"]
            reply = client.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": "Hello"}], max_tokens=4, temperature=0
            )
            assert reply.usage is not None and reply.usage.completion_tokens >= 1
        with (
            openai.OpenAI(base_url=base_url, api_key="sk-other", max_retries=0) as stranger,
            pytest.raises(openai.AuthenticationError),
        ):
            stranger.models.list()
        subject.proc.send_signal(signal.SIGTERM)
        assert subject.proc.wait(EXIT_GUARD_S) == 143
        output = subject.wait_output_end()
    finally:
        if subject.proc.poll() is None:
            subject.proc.kill()
    assert "Traceback" not in output, output
    assert "policy agentrt" in output
