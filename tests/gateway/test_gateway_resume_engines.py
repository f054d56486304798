"""A real engine killed mid-stream: the gateway resumes its streams on the other one.

Two real vLLM engines of their own (not the session engines, which must outlive this test), the
tiny target without speculation, in float32 so the continuation's prefill and the dead engine's
decode steps pick the same greedy tokens. Twelve streamed greedy completions of 48 tokens run
through the gateway twice: once unbroken, once with one engine SIGKILLed (its whole process
group: API server, EngineCore, worker) while every stream is under way. Every client stream
must end normally, with the unbroken run's text and usage.

Bounded for 2 CPU cores: two engines starting side by side, 2 x 12 requests x 48 tokens.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx
import openai
import pytest

from specserve_contract.metrics import (
    GATEWAY_RESUME_FAILURES,
    GATEWAY_RESUME_SECONDS,
    GATEWAY_RESUMES,
)
from specserve_engine import tiny
from specserve_engine.launcher import ServerProcess
from specserve_gateway.routing import RouteTable
from tests.kits.gateway_kit import running_gateway

pytestmark = pytest.mark.engine

REQUESTS = 12
MAX_TOKENS = 48
PROMPTS = [f"def function_{i}(x, y):\n    " if i % 2 else f"import os\n\nclass C{i}:\n    "
           for i in range(REQUESTS)]


@pytest.fixture(scope="module")
def two_engines(tiny_models: tiny.TinyModels) -> Iterator[list[ServerProcess]]:
    servers = [ServerProcess(["--model", str(tiny_models.target), "--draft", "none",
                              "--served-model-name", "tiny", "--dtype", "float32",
                              "--", "--enforce-eager"], name=f"resume-{i}")
               for i in range(2)]
    try:
        for s in servers:
            s.start()
        for s in servers:
            s.wait_ready()
        yield servers
    finally:
        for s in servers:
            s.stop()


@dataclass
class Streamed:
    text: str = ""
    chunks: int = 0
    usage: tuple[int, int] | None = None
    finish: str | None = None
    error: str | None = None
    started: threading.Event = field(default_factory=threading.Event)


def stream(gateway: str, prompt: str, out: Streamed) -> Streamed:
    client = openai.OpenAI(base_url=f"{gateway}/v1", api_key="unused", max_retries=0,
                           timeout=120)
    try:
        for event in client.completions.create(
            model="tiny", prompt=prompt, max_tokens=MAX_TOKENS, temperature=0.0, stream=True,
            stream_options={"include_usage": True},
        ):
            if event.choices:
                out.text += event.choices[0].text
                out.chunks += 1
                out.finish = event.choices[0].finish_reason or out.finish
                if out.chunks >= 3:
                    out.started.set()
            if event.usage is not None:
                out.usage = (event.usage.prompt_tokens, event.usage.completion_tokens)
    except openai.APIError as exc:
        out.error = f"{type(exc).__name__}: {exc}"
    out.started.set()
    return out


def run_all(gateway: str, outs: list[Streamed]) -> list[Streamed]:
    with ThreadPoolExecutor(REQUESTS) as pool:
        return list(pool.map(lambda i: stream(gateway, PROMPTS[i], outs[i]), range(REQUESTS)))


def test_killing_an_engine_mid_stream_loses_no_stream(two_engines: list[ServerProcess]) -> None:
    table = RouteTable.from_mapping({"tiny": [s.url for s in two_engines]})
    with running_gateway(table) as gw:
        reference = run_all(gw, [Streamed() for _ in range(REQUESTS)])
        assert all(r.error is None and r.usage for r in reference), reference

        outs = [Streamed() for _ in range(REQUESTS)]
        with ThreadPoolExecutor(1) as pool:
            running = pool.submit(run_all, gw, outs)
            for o in outs:
                assert o.started.wait(120)
            # Kill the engine with the most streams in flight, every stream under way.
            load = httpx.get(f"{gw}/gateway/routes").json()["backends"]
            victim = max(two_engines, key=lambda s: load[s.url]["outstanding"])
            in_flight = load[victim.url]["outstanding"]
            assert victim.proc is not None
            os.killpg(victim.proc.pid, signal.SIGKILL)
            killed_at = time.monotonic()
            broken = running.result(timeout=300)
        metrics = httpx.get(f"{gw}/metrics").text

    assert in_flight >= 1
    assert [b.error for b in broken] == [None] * REQUESTS
    assert [b.text for b in broken] == [r.text for r in reference]
    assert [b.usage for b in broken] == [r.usage for r in reference]
    assert [b.finish for b in broken] == [r.finish for r in reference]
    resumed = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                  if line.startswith(f"{GATEWAY_RESUMES}{{"))
    assert resumed >= 1, metrics
    seconds = {line.split("{")[0].rsplit("_", 1)[1]: float(line.rsplit(" ", 1)[1])
               for line in metrics.splitlines()
               if line.startswith((f"{GATEWAY_RESUME_SECONDS}_sum{{",
                                   f"{GATEWAY_RESUME_SECONDS}_count{{"))}
    print(f"\nRESUMED {resumed:.0f} of {in_flight} streams in flight on the killed engine; "
          f"mean resume latency {seconds['sum'] / max(seconds['count'], 1) * 1e3:.0f} ms")
    assert f"{GATEWAY_RESUME_FAILURES}{{" not in metrics
    assert time.monotonic() - killed_at < 120
