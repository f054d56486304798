"""Streams survive the loss of a backend: the gateway resumes them on another one.

The backends are fake OpenAI servers (tests/kits/gateway_kit.py `fake_openai_backend`): small
real HTTP servers whose "model" picks each next token as a pure function of all ids so far, so
a continuation from `prompt + sent tokens` goes on exactly as the unbroken run, as greedy
decoding does on a real engine. One of them dies mid-stream (a connection reset, as a killed
pod, or vLLM's in-stream server error event). Each test compares what the client sees with the
same request through the gateway to a backend that does not die.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import httpx
import openai
import pytest

from specserve_contract.metrics import (
    GATEWAY_RESUME_FAILURES,
    GATEWAY_RESUME_SECONDS,
    GATEWAY_RESUMES,
)
from specserve_gateway.app import GatewayConfig
from specserve_gateway.resume import (
    ResumePlan,
    StreamSplicer,
    continuation_request,
    plan_resume,
    unsupported_reason,
)
from specserve_gateway.routing import RouteTable
from tests.kits.gateway_kit import (
    FakeBackend,
    fake_generate,
    fake_openai_backend,
    fake_render_chat,
    fake_text,
    fake_tokenize,
    running_gateway,
)

PROMPT = "def resume(stream):"
MESSAGES = [{"role": "user", "content": "keep going"}]
MAX_TOKENS = 40


def completion_body(**extra: Any) -> dict[str, Any]:
    return {"model": "tiny", "prompt": PROMPT, "max_tokens": MAX_TOKENS, "stream": True,
            "stream_options": {"include_usage": True}, **extra}


def chat_body(**extra: Any) -> dict[str, Any]:
    return {"model": "tiny", "messages": MESSAGES, "max_tokens": MAX_TOKENS, "stream": True,
            "stream_options": {"include_usage": True}, **extra}


def sse(gw: str, path: str, body: dict[str, Any]) -> list[Any]:
    """The client's stream: each event's JSON (or "[DONE]"), in order."""
    with httpx.stream("POST", gw + path, json=body, timeout=30) as resp:
        assert resp.status_code == 200
        raw = resp.read().decode()
    events = [e.removeprefix("data: ") for e in raw.split("\n\n") if e.strip()]
    return [e if e == "[DONE]" else json.loads(e) for e in events]


def text_of(events: list[Any]) -> str:
    out = []
    for e in events:
        for c in e.get("choices", []) if isinstance(e, dict) else []:
            out.append(c.get("text") or (c.get("delta") or {}).get("content") or "")
    return "".join(out)


def metric(gw: str, name: str, **labels: str) -> float:
    text = httpx.get(f"{gw}/metrics").text
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        m = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line)
        if m and all(part in m.group(1).split(",") for part in want.split(",") if part):
            return float(m.group(2))
    return 0.0


@contextmanager
def pair(first_dies_after: Sequence[int | None], other_dies_after: Sequence[int | None] = (),
         **kw: Any) -> Iterator[tuple[FakeBackend, FakeBackend]]:
    """Two fake backends; the one the gateway tries first (an idle pool is ordered by URL)
    dies as `first_dies_after` says, the other as `other_dies_after`."""
    with fake_openai_backend(**kw) as a, fake_openai_backend(**kw) as b:
        first, other = sorted((a, b), key=lambda x: x.url)
        first.die_after[:] = list(first_dies_after)
        other.die_after[:] = list(other_dies_after)
        yield first, other


def unbroken(path: str, body: dict[str, Any]) -> list[Any]:
    with fake_openai_backend() as healthy, running_gateway(
        RouteTable.from_mapping({"tiny": [healthy.url]})
    ) as gw:
        return sse(gw, path, body)


# -------------------------------------------------------------------------------- over HTTP


def test_a_completion_stream_is_resumed_on_another_backend_unchanged() -> None:
    reference = unbroken("/v1/completions", completion_body())
    with pair([5]) as (dying, other), running_gateway(
        RouteTable.from_mapping({"tiny": [dying.url, other.url]})
    ) as gw:
        events = sse(gw, "/v1/completions", completion_body())
        resumed = metric(gw, GATEWAY_RESUMES, model="tiny")
        latency = metric(gw, f"{GATEWAY_RESUME_SECONDS}_count", model="tiny")
        routes = httpx.get(f"{gw}/gateway/routes").json()["backends"]
    # One unbroken stream: the same events, ids, text and usage as the run that did not break.
    assert events == reference
    assert events[-1] == "[DONE]"
    assert all(c["token_ids"] is None and c["prompt_token_ids"] is None
               for e in events if isinstance(e, dict) for c in e["choices"])
    prompt = fake_tokenize(PROMPT)
    sent = fake_generate(prompt, MAX_TOKENS)[:5]
    usage = events[-2]["usage"]
    assert usage["prompt_tokens"] == len(prompt)
    assert usage["completion_tokens"] == len(fake_generate(prompt, MAX_TOKENS))
    # The continuation: the prompt's ids plus the 5 tokens sent, the budget reduced by 5.
    [(path, body)] = other.requests
    assert path == "/v1/completions"
    assert body["prompt"] == prompt + sent
    assert body["max_tokens"] == MAX_TOKENS - 5
    assert body["return_token_ids"] is True
    assert dying.requests[0][1]["return_token_ids"] is True
    assert resumed == 1 and latency == 1
    assert routes[dying.url]["down"] is True
    assert all(b["outstanding"] == 0 for b in routes.values())


def test_a_chat_stream_is_resumed_as_a_completion_on_the_rendered_prompt() -> None:
    reference = unbroken("/v1/chat/completions", chat_body())
    with pair([7]) as (dying, other), running_gateway(
        RouteTable.from_mapping({"tiny": [dying.url, other.url]})
    ) as gw:
        events = sse(gw, "/v1/chat/completions", chat_body())
    assert events == reference
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert events[0]["prompt_token_ids"] is None
    [(path, body)] = other.requests
    rendered = fake_render_chat(MESSAGES)
    assert path == "/v1/completions"
    assert body["prompt"][: len(rendered)] == rendered
    assert body["max_tokens"] == MAX_TOKENS - (len(body["prompt"]) - len(rendered))
    usage = events[-2]["usage"]
    assert usage["prompt_tokens"] == len(rendered)
    assert usage["completion_tokens"] == len(fake_generate(rendered, MAX_TOKENS))


def test_the_official_client_sees_no_error_and_the_whole_text() -> None:
    with pair([3]) as (dying, other), running_gateway(
        RouteTable.from_mapping({"tiny": [dying.url, other.url]})
    ) as gw:
        client = openai.OpenAI(base_url=f"{gw}/v1", api_key="unused", max_retries=0)
        pieces = [e.choices[0].delta.content or "" for e in client.chat.completions.create(
            model="tiny", messages=MESSAGES, max_tokens=MAX_TOKENS, stream=True)  # type: ignore[arg-type]
            if e.choices]
    expected = fake_generate(fake_render_chat(MESSAGES), MAX_TOKENS)
    assert "".join(pieces) == "".join(fake_text(t) for t in expected)


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_a_stream_without_a_limit_cut_by_a_server_error_event_is_resumed(path: str) -> None:
    # vLLM's API server outlives a dead EngineCore and says so in the stream: resume too.
    body = {**(completion_body() if path == "/v1/completions" else chat_body()),
            "max_tokens": None}
    reference = unbroken(path, body)
    with pair([9], failure="error_event") as (dying, other), running_gateway(
        RouteTable.from_mapping({"tiny": [dying.url, other.url]})
    ) as gw:
        events = sse(gw, path, body)
    assert events == reference
    assert other.requests[0][1]["max_tokens"] is None  # up to the context, as the original


@pytest.mark.parametrize("die", [-1, 0])
@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_a_backend_dying_before_any_token_is_retried(path: str, die: int) -> None:
    body = completion_body() if path == "/v1/completions" else chat_body()
    reference = unbroken(path, body)
    with pair([die]) as (dying, other), running_gateway(
        RouteTable.from_mapping({"tiny": [dying.url, other.url]})
    ) as gw:
        events = sse(gw, path, body)
    assert events == reference
    assert len(other.requests) == 1


def test_the_resume_limit_ends_the_stream_with_todays_error() -> None:
    config = GatewayConfig(max_resumes=2)
    with pair([3] * 5, [3] * 5) as (a, b), running_gateway(
        RouteTable.from_mapping({"tiny": [a.url, b.url]}), config
    ) as gw:
        events = sse(gw, "/v1/completions", completion_body())
        failed = metric(gw, GATEWAY_RESUME_FAILURES, model="tiny",
                        reason="limit")
        resumed = metric(gw, GATEWAY_RESUMES, model="tiny")
    expected = fake_generate(fake_tokenize(PROMPT), MAX_TOKENS)[:9]
    assert text_of(events) == "".join(fake_text(t) for t in expected)  # 3 tokens x 3 backends
    assert events[-1]["error"]["code"] == "backend_failed"
    assert "limit" in events[-1]["error"]["message"]
    assert len(a.requests) + len(b.requests) == 3
    assert (resumed, failed) == (2, 1)


def test_no_resume_starts_after_the_request_deadline() -> None:
    with pair([3]) as (a, b), running_gateway(
        RouteTable.from_mapping({"tiny": [a.url, b.url]}), GatewayConfig(request_deadline_s=0.0)
    ) as gw:
        events = sse(gw, "/v1/completions", completion_body())
        failed = metric(gw, GATEWAY_RESUME_FAILURES, model="tiny",
                        reason="deadline")
    assert events[-1]["error"]["code"] == "backend_failed"
    assert "deadline" in events[-1]["error"]["message"]
    assert failed == 1 and b.requests == []


def test_resuming_off_keeps_todays_behaviour() -> None:
    with pair([3]) as (a, b), running_gateway(
        RouteTable.from_mapping({"tiny": [a.url, b.url]}), GatewayConfig(max_resumes=0)
    ) as gw:
        events = sse(gw, "/v1/completions", completion_body())
    assert events[-1]["error"]["code"] == "backend_failed"
    assert "return_token_ids" not in a.requests[0][1]
    assert b.requests == []


def test_a_request_with_stop_strings_is_not_resumed_and_says_why() -> None:
    with pair([3]) as (a, b), running_gateway(
        RouteTable.from_mapping({"tiny": [a.url, b.url]})
    ) as gw:
        events = sse(gw, "/v1/completions", completion_body(stop=["\n"]))
        failed = metric(gw, GATEWAY_RESUME_FAILURES, model="tiny",
                        reason="unsupported")
    assert events[-1]["error"]["code"] == "backend_failed"
    assert "stop strings" in events[-1]["error"]["message"]
    assert "return_token_ids" not in a.requests[0][1]  # the upstream request is the client's
    assert failed == 1 and b.requests == []


def test_token_ids_the_client_asked_for_stay_in_its_stream() -> None:
    body = completion_body(return_token_ids=True)
    reference = unbroken("/v1/completions", body)
    with pair([4]) as (dying, other), running_gateway(
        RouteTable.from_mapping({"tiny": [dying.url, other.url]})
    ) as gw:
        events = sse(gw, "/v1/completions", body)
    assert events == reference
    ids = [t for e in events if isinstance(e, dict) for c in e["choices"] for t in c["token_ids"]]
    assert ids == fake_generate(fake_tokenize(PROMPT), MAX_TOKENS)
    assert sum(c["prompt_token_ids"] is not None for e in events if isinstance(e, dict)
               for c in e["choices"]) == 1


def test_a_non_streamed_answer_cut_off_mid_body_is_asked_again() -> None:
    body = {"model": "tiny", "prompt": PROMPT, "max_tokens": MAX_TOKENS}
    with fake_openai_backend() as healthy, running_gateway(
        RouteTable.from_mapping({"tiny": [healthy.url]})
    ) as gw:
        reference = httpx.post(f"{gw}/v1/completions", json=body).json()
    with pair([1]) as (dying, other), running_gateway(
        RouteTable.from_mapping({"tiny": [dying.url, other.url]})
    ) as gw:
        answer = httpx.post(f"{gw}/v1/completions", json=body, timeout=30).json()
        resumed = metric(gw, GATEWAY_RESUMES, model="tiny")
    assert answer["choices"] == reference["choices"]
    assert answer["usage"] == reference["usage"]
    assert resumed == 1


# ------------------------------------------------------------------------------------ pure


@pytest.mark.parametrize(
    ("path", "extra", "reason"),
    [
        ("/v1/completions", {}, None),
        ("/v1/completions", {"n": 2}, "n > 1"),
        ("/v1/completions", {"logprobs": 0}, "logprobs"),
        ("/v1/completions", {"stop": "x"}, "stop strings"),
        ("/v1/completions", {"stop": []}, None),
        ("/v1/completions", {"stop_token_ids": [7]}, None),
        ("/v1/completions", {"echo": True}, "echo"),
        ("/v1/completions", {"prompt": ["a", "b"]}, "several prompts"),
        ("/v1/completions", {"prompt": [1, 2, 3]}, None),
        ("/v1/completions", {"presence_penalty": 0.5}, "presence/frequency penalties"),
        ("/v1/completions", {"response_format": {"type": "json_object"}}, "response format"),
        ("/v1/chat/completions", {}, None),
        ("/v1/chat/completions", {"tools": [{"type": "function"}]}, "tool calls"),
        ("/v1/chat/completions", {"logprobs": True}, "logprobs"),
        ("/v1/chat/completions", {"response_format": {"type": "text"}}, None),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "x"}}]}]}, "non-text message content"),
    ],
)
def test_which_requests_can_be_resumed(path: str, extra: dict[str, Any],
                                       reason: str | None) -> None:
    base = ({"prompt": "p"} if path == "/v1/completions" else {"messages": MESSAGES})
    assert unsupported_reason(path, {"model": "m", **base, **extra}) == reason


def test_a_chat_continuation_carries_the_sampling_fields_and_reduced_budgets() -> None:
    plan = plan_resume("/v1/chat/completions", {
        "model": "m", "messages": MESSAGES, "max_completion_tokens": 20, "min_tokens": 4,
        "temperature": 0.0, "seed": 3, "stream": True, "stream_options": {"include_usage": True},
        "chat_template_kwargs": {"x": 1}})
    assert isinstance(plan, ResumePlan)
    path, body = continuation_request(plan, [1, 2, 3], [9, 9, 9, 9, 9])
    assert path == "/v1/completions"
    assert body == {"model": "m", "temperature": 0.0, "seed": 3,
                    "stream_options": {"include_usage": True}, "prompt": [1, 2, 3, 9, 9, 9, 9, 9],
                    "max_tokens": 15, "min_tokens": 0, "stream": True, "return_token_ids": True}


def test_a_completions_continuation_defaults_to_vllms_16_tokens() -> None:
    plan = plan_resume("/v1/completions", {"model": "m", "prompt": "p", "stream": True,
                                           "truncate_prompt_tokens": 5})
    assert isinstance(plan, ResumePlan)
    _, body = continuation_request(plan, [1], [5, 6])
    assert body["max_tokens"] == 14
    assert "truncate_prompt_tokens" not in body


def test_a_stream_cut_after_its_last_token_is_closed_by_the_gateway() -> None:
    plan = plan_resume("/v1/completions", completion_body())
    assert isinstance(plan, ResumePlan)
    splicer = StreamSplicer(plan)
    first = {"id": "c", "created": 1, "model": "tiny", "object": "text_completion",
             "choices": [{"index": 0, "text": "ab", "finish_reason": "length",
                          "prompt_token_ids": [1, 2, 3], "token_ids": [97, 98]}]}
    out = splicer.feed(b"data: " + json.dumps(first).encode() + b"\n\ndata: {\"id\"")
    splicer.upstream_ended()
    assert splicer.finished and not splicer.done
    closing = [json.loads(p[6:]) if p != b"data: [DONE]\n\n" else "[DONE]"
               for p in splicer.closing()]
    assert json.loads(out[0][6:])["choices"][0] == {
        "index": 0, "text": "ab", "finish_reason": "length", "prompt_token_ids": None,
        "token_ids": None}
    assert closing == [{"id": "c", "created": 1, "model": "tiny", "object": "text_completion",
                        "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2,
                                                 "total_tokens": 5}}, "[DONE]"]
