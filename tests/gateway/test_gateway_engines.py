"""The gateway in front of two real vLLM engines (tests/conftest.py: `spec_engine` with
speculation, `plain_engine` without; both serve the tiny target as model "tiny"), driven with
the official `openai` client.

Routes:
    tiny       -> both engines (least-outstanding choice between them)
    tiny-b     -> the plain engine only (sent upstream as "tiny")
    tiny-half  -> a dead backend (refused port: a killed pod) and the speculative engine
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import openai
import pytest

from specserve_engine.launcher import ServerProcess
from specserve_gateway.routing import RouteTable
from tests.kits.gateway_kit import refused_port, running_gateway

pytestmark = pytest.mark.engine

PROMPT = "def fibonacci(n):\n    "
MAX_TOKENS = 24


@pytest.fixture(scope="module")
def dead() -> Iterator[str]:
    with refused_port() as url:
        yield url


@pytest.fixture(scope="module")
def gateway(spec_engine: ServerProcess, plain_engine: ServerProcess, dead: str) -> Iterator[str]:
    table = RouteTable.from_mapping(
        {
            "tiny": [spec_engine.url, plain_engine.url],
            "tiny-b": [plain_engine.url],
            "tiny-half": [dead, spec_engine.url],
        },
        {"tiny-b": "tiny", "tiny-half": "tiny"},
    )
    with running_gateway(table) as url:
        yield url


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)


def routes(gateway: str) -> dict[str, Any]:
    return httpx.get(f"{gateway}/gateway/routes").json()["backends"]


def complete(url: str, model: str) -> str:
    out = client(url).completions.create(
        model=model, prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=0.0)
    return out.choices[0].text


def test_models_lists_every_served_model(gateway: str) -> None:
    assert sorted(m.id for m in client(gateway).models.list().data) == [
        "tiny", "tiny-b", "tiny-half"]


def test_completion_through_the_gateway_equals_the_engine_answer(
    gateway: str, plain_engine: ServerProcess
) -> None:
    direct = complete(plain_engine.url, "tiny")
    assert direct  # the tiny model says something
    assert complete(gateway, "tiny-b") == direct
    # Greedy speculation is lossless: whichever engine answers "tiny", the text is the same.
    assert complete(gateway, "tiny") == direct


def test_chat_completion_is_routed(gateway: str) -> None:
    out = client(gateway).chat.completions.create(
        model="tiny-b", messages=[{"role": "user", "content": "import os"}],
        max_tokens=8, temperature=0.0)
    assert out.choices[0].message.role == "assistant"
    assert out.usage is not None and out.usage.completion_tokens >= 1


def test_streaming_is_passed_through_as_it_is_generated(gateway: str) -> None:
    whole = complete(gateway, "tiny-b")
    start = time.monotonic()
    arrivals: list[float] = []
    pieces: list[str] = []
    stream = client(gateway).completions.create(
        model="tiny-b", prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=0.0, stream=True)
    for event in stream:
        if event.choices and event.choices[0].text:
            arrivals.append(time.monotonic() - start)
            pieces.append(event.choices[0].text)
    assert "".join(pieces) == whole
    assert len(pieces) >= 4, pieces
    # Relayed as generated: tokens arrive spread over the generation, not in one burst at the
    # end (a buffering proxy would deliver every chunk within a millisecond or so).
    spread = arrivals[-1] - arrivals[0]
    assert spread > 0.2 * arrivals[-1], arrivals


def test_streaming_chat(gateway: str) -> None:
    stream = client(gateway).chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "for i in"}], max_tokens=8,
        temperature=0.0, stream=True)
    chunks = list(stream)
    assert len(chunks) >= 2
    assert chunks[-1].choices == [] or chunks[-1].choices[0].finish_reason is not None
    assert all(routes(gateway)[u]["outstanding"] == 0 for u in routes(gateway))


def test_concurrent_requests_go_to_the_least_busy_engine(
    gateway: str, spec_engine: ServerProcess, plain_engine: ServerProcess
) -> None:
    before = routes(gateway)
    with ThreadPoolExecutor(6) as pool:
        texts = list(pool.map(lambda _: complete(gateway, "tiny"), range(6)))
    after = routes(gateway)
    assert len(set(texts)) == 1  # both engines answer the same (greedy, lossless)
    served = {u: after[u]["served"] - before[u]["served"] for u in
              (spec_engine.url, plain_engine.url)}
    assert sum(served.values()) == 6
    assert min(served.values()) >= 2, served  # not all on one engine
    assert after[spec_engine.url]["outstanding"] == after[plain_engine.url]["outstanding"] == 0


def test_a_dead_backend_fails_over_to_the_live_one(
    gateway: str, dead: str, spec_engine: ServerProcess
) -> None:
    before = routes(gateway)
    answers = [complete(gateway, "tiny-half") for _ in range(4)]
    after = routes(gateway)
    assert all(answers)
    assert after[spec_engine.url]["served"] - before[spec_engine.url]["served"] == 4
    assert after[dead]["failures"] >= 1
    # Marked down after the first refusal: later requests go to the live engine first.
    assert after[dead]["failures"] - before[dead]["failures"] <= 2
