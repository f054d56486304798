"""A stopping engine drains: a stream in flight when the engine gets SIGTERM (what the kubelet
sends once the pod's preStop hook is done) runs to its last token; requests after it are refused,
and the process exits by itself.

Its own engine (the session engines must outlive it), SIGTERM to the server process alone as a
container runtime sends it to PID 1 (`specserve serve` execs vLLM's server).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from typing import Any

import httpx
import pytest

from specserve_engine import tiny
from specserve_engine.launcher import ServerProcess
from tests.engine.fixtures import DTYPE, FAST_START

TOKENS = 96


@pytest.mark.engine
def test_a_stream_in_flight_at_sigterm_completes_and_the_engine_exits(
    tiny_models: tiny.TinyModels,
) -> None:
    server = ServerProcess(
        ["--model", str(tiny_models.target), "--draft", str(tiny_models.draft),
         "--served-model-name", "tiny", "--profile", "none", "--dtype", DTYPE,
         "--drain-seconds", "60", *FAST_START], name="drain")
    with server:
        assert server.proc is not None
        body = {"model": "tiny", "prompt": tiny.heldout_prompts(tiny_models, 1, seed=5)[0],
                "max_tokens": TOKENS, "temperature": 0, "ignore_eos": True, "stream": True,
                "stream_options": {"include_usage": True}}
        chunks: list[dict[str, Any]] = []
        signalled_at: float | None = None
        with httpx.stream("POST", f"{server.url}/v1/completions", json=body,
                          timeout=120) as resp:
            assert resp.status_code == 200
            for line in resp.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunks.append(json.loads(line.removeprefix("data: ")))
                if len(chunks) == 3:
                    os.kill(server.proc.pid, signal.SIGTERM)
                    signalled_at = time.monotonic()
        assert signalled_at is not None, "the stream ended before it could be interrupted"
        assert chunks[-1]["usage"]["completion_tokens"] == TOKENS
        finished = [c["choices"][0]["finish_reason"] for c in chunks if c.get("choices")]
        assert finished[-1] == "length"
        # Drained: nothing new is taken (refused, or the port already closed).
        try:
            late = httpx.post(f"{server.url}/v1/completions", timeout=30,
                              json={**body, "stream": False})
            assert late.status_code >= 400
        except httpx.TransportError:
            pass
        try:
            code = server.proc.wait(90)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the engine did not exit after draining:\n{server.log_tail()}")
        log = server.log_path.read_text(errors="replace")
        assert "mode=drain" in log, server.log_tail()
        assert code is not None
