"""vLLM's OpenAI server with SpecServe speculation, driven by the official `openai` client."""

from __future__ import annotations

import pytest
from openai import OpenAI

from specserve_engine.launcher import ServerProcess

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def client(spec_engine: ServerProcess) -> OpenAI:
    return OpenAI(base_url=f"{spec_engine.url}/v1", api_key="unused", timeout=120)


def test_models_lists_the_served_name(client: OpenAI) -> None:
    assert [m.id for m in client.models.list().data] == ["tiny"]


def test_completion(client: OpenAI) -> None:
    resp = client.completions.create(
        model="tiny", prompt="def main():\n    ", max_tokens=16, temperature=0
    )
    assert resp.choices[0].text
    assert resp.usage is not None and 0 < resp.usage.completion_tokens <= 16


def test_chat_completion(client: OpenAI) -> None:
    resp = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "import os"}],
        max_tokens=16, temperature=0,
    )
    assert resp.choices[0].message.role == "assistant"
    assert resp.choices[0].message.content


def test_chat_completion_streaming_matches_non_streaming(client: OpenAI) -> None:
    messages = [{"role": "user", "content": "class Config:"}]
    whole = client.chat.completions.create(
        model="tiny", messages=messages, max_tokens=24, temperature=0
    ).choices[0].message.content
    chunks = [
        c.choices[0].delta.content
        for c in client.chat.completions.create(
            model="tiny", messages=messages, max_tokens=24, temperature=0, stream=True
        )
        if c.choices and c.choices[0].delta.content
    ]
    assert len(chunks) > 1, "streaming should deliver more than one chunk"
    assert "".join(chunks) == whole


def test_completion_streaming(client: OpenAI) -> None:
    text = "".join(
        c.choices[0].text
        for c in client.completions.create(
            model="tiny", prompt="for i in range(", max_tokens=12, temperature=0, stream=True
        )
    )
    assert text


def test_unknown_model_is_a_clean_404(client: OpenAI) -> None:
    from openai import NotFoundError

    with pytest.raises(NotFoundError):
        client.completions.create(model="nope", prompt="x", max_tokens=1)
