"""Scale from zero with a real engine: a request for a model with no pod is held by the gateway
(its demand visible in /metrics), the pod comes up (here: an engine process started once the
request waits, as the operator's 0 -> 1 and the kubelet would), and the held request is
answered by it, streamed, in full.

The operator's part (held requests -> replicas 0 -> 1) runs against the emulator in
tests/operator/test_operator_scale_zero.py; this is the part a user sees.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import httpx
import openai
import pytest

from specserve_contract.metrics import GATEWAY_HELD
from specserve_engine import tiny
from specserve_engine.launcher import ServerProcess
from specserve_gateway.app import GatewayConfig
from specserve_gateway.holding import HoldConfig
from specserve_gateway.routing import RouteTable
from tests.engine.fixtures import DTYPE, FAST_START
from tests.kits.gateway_kit import MutableSource, running_gateway

pytestmark = pytest.mark.engine

TOKENS = 24


@dataclass
class Held:
    text: str = ""
    finish: str | None = None
    first_token_at: float | None = None
    error: str | None = None
    done: threading.Event = field(default_factory=threading.Event)


def ask(gateway: str, out: Held) -> None:
    client = openai.OpenAI(base_url=f"{gateway}/v1", api_key="unused", max_retries=0,
                           timeout=600)
    try:
        for event in client.completions.create(model="tiny", prompt="def main():\n    ",
                                               max_tokens=TOKENS, temperature=0.0,
                                               stream=True):
            if event.choices and out.first_token_at is None:
                out.first_token_at = time.monotonic()
            if event.choices:
                out.text += event.choices[0].text
                out.finish = event.choices[0].finish_reason or out.finish
    except openai.APIError as exc:
        out.error = f"{type(exc).__name__}: {exc}"
    finally:
        out.done.set()


def held_requests(gateway: str) -> float:
    for line in httpx.get(f"{gateway}/metrics", timeout=5).text.splitlines():
        if line.startswith(f'{GATEWAY_HELD}{{model="tiny"}}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_the_first_request_to_a_model_at_zero_is_answered_once_its_pod_is_up(
    tiny_models: tiny.TinyModels,
) -> None:
    source = MutableSource(RouteTable.from_mapping({"tiny": []}))
    config = GatewayConfig(hold=HoldConfig(max_queued=4, max_wait_s=600.0))
    with running_gateway(source, config) as gw:
        out = Held()
        sent_at = time.monotonic()
        threading.Thread(target=ask, args=(gw, out), daemon=True).start()
        deadline = time.monotonic() + 10
        while held_requests(gw) < 1:  # the demand the operator's SLO loop reads
            assert time.monotonic() < deadline and not out.done.is_set(), out.error
            time.sleep(0.1)
        engine = ServerProcess(["--model", str(tiny_models.target), "--draft", "none",
                                "--served-model-name", "tiny", "--dtype", DTYPE, *FAST_START],
                               name="from-zero")
        with engine:
            ready_at = time.monotonic()
            source.set(RouteTable.from_mapping({"tiny": [engine.url]}))
            assert out.done.wait(120), "the held request was never answered"
        assert out.error is None and out.finish == "length" and out.text
        assert out.first_token_at is not None
        assert held_requests(gw) == 0
    print(f"\nSCALE FROM ZERO: request held {ready_at - sent_at:.1f} s while the engine "
          f"started; first token {1e3 * (out.first_token_at - ready_at):.0f} ms after the pod "
          "was ready")
