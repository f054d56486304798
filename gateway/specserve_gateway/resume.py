"""Resuming a broken stream on another replica: the pure part (no I/O, no clock).

A stream breaks when its backend dies mid-answer. The gateway has relayed every token the client
has seen, so another replica can continue from exactly there: a `/v1/completions` request whose
`prompt` is the token ids of the original prompt plus the tokens already sent, with `max_tokens`
(and `min_tokens`) reduced by what was sent. Token ids travel as ids, so nothing is re-tokenised
and greedy decoding goes on exactly as the unbroken run would have.

Where the ids come from (vLLM 0.32's OpenAI server, `entrypoints/openai/{completion,
chat_completion}/protocol.py` and `serving.py`): a request with `"return_token_ids": true`
streams `token_ids` (the chunk's new output tokens) in every choice, and the prompt's ids once:
`choices[0].prompt_token_ids` in the first completions chunk, top-level `prompt_token_ids` in
the first (role) chat chunk, i.e. the prompt *after* the chat template. A `/v1/completions`
`prompt` given as a list of ids is used as is (no special tokens added). The output detokenizer
is primed with the prompt ids, so the continuation's text continues the text already sent.

The gateway adds `return_token_ids` to the upstream request and, unless the client asked for
them, sets the ids back to null in what the client sees (vLLM sends `"token_ids": null` when
not asked) and drops the chat chunks that only carried ids (vLLM sends none of those).

A chat stream continues as a completions request on the rendered prompt ids (the chat template
is already applied in them); its chunks are translated back into `chat.completion.chunk`s.

`plan_resume` decides up front whether a request can be resumed at all (features whose output
depends on where generation started cannot: stop strings, logprobs, n > 1, tools, structured
output, ...); `StreamSplicer` parses the upstream SSE events, records the ids, rewrites what the
client sees (ids stripped; in a continuation: the first stream's id, created and model, usage
as the unbroken run would report it) and builds the continuation request.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from prometheus_client import CollectorRegistry, Counter, Histogram

from specserve_contract.metrics import (
    GATEWAY_RESUME_FAILURES,
    GATEWAY_RESUME_SECONDS,
    GATEWAY_RESUMES,
)

COMPLETIONS = "/v1/completions"
CHAT = "/v1/chat/completions"

# vLLM's CompletionRequest.max_tokens default; chat requests default to "up to the context".
COMPLETIONS_DEFAULT_MAX_TOKENS = 16

# Sampling fields a chat request shares with a completions request (vLLM 0.32's
# ChatCompletionRequest and CompletionRequest); a chat continuation carries these over.
_SHARED_SAMPLING = (
    "temperature", "top_p", "top_k", "min_p", "repetition_penalty", "seed", "logit_bias",
    "allowed_token_ids", "bad_words", "stop_token_ids", "ignore_eos", "skip_special_tokens",
    "spaces_between_special_tokens", "user", "priority", "cache_salt", "stream_options",
)
# Fields that only shape how a prompt is tokenised: a continuation's prompt is ids already.
_TOKENISING = ("truncate_prompt_tokens", "truncation_side", "add_special_tokens")


def _set(value: Any) -> bool:
    """Whether a request field is present with a value that changes behaviour."""
    return value not in (None, False, 0, "", [], {})


def unsupported_reason(path: str, body: Mapping[str, Any]) -> str | None:
    """Why a request's stream cannot be resumed exactly, or None when it can.

    Each rule names a feature whose output depends on the point generation started from, or
    that the continuation request cannot carry.
    """
    if path not in (COMPLETIONS, CHAT):
        return f"{path} is not resumable"
    if (body.get("n") or 1) != 1 or (body.get("best_of") or 1) != 1:
        return "n > 1"
    if body.get("use_beam_search"):
        return "beam search"
    if _set(body.get("stop")):
        # vLLM holds text back while a stop string may be forming, and a stop string could
        # straddle the break: the continuation would not see its start.
        return "stop strings"
    if _set(body.get("presence_penalty")) or _set(body.get("frequency_penalty")):
        return "presence/frequency penalties"  # they count output tokens only
    for key in ("response_format", "structured_outputs", "guided_json", "guided_regex",
                "guided_choice", "guided_grammar", "repetition_detection",
                "thinking_token_budget", "prompt_logprobs", "prompt_embeds", "echo"):
        value = body.get(key)
        if key == "response_format" and isinstance(value, dict) and value.get("type") == "text":
            continue
        if _set(value):
            return key.replace("_", " ")
    if path == COMPLETIONS:
        if body.get("logprobs") is not None:
            return "logprobs"
        if _set(body.get("suffix")):
            return "suffix"
        if _prompt_count(body.get("prompt")) != 1:
            return "several prompts"
        return None
    if _set(body.get("logprobs")) or _set(body.get("top_logprobs")):
        return "logprobs"
    if _set(body.get("tools")) or _set(body.get("functions")):
        return "tool calls"
    messages = body.get("messages")
    if not isinstance(messages, list):
        return "no messages"
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list) and any(
            not (isinstance(part, dict) and part.get("type") == "text") for part in content
        ):
            return "non-text message content"
    return None


def _prompt_count(prompt: Any) -> int:
    if isinstance(prompt, str):
        return 1
    if isinstance(prompt, list) and prompt:
        if all(isinstance(t, int) for t in prompt):
            return 1
        return len(prompt)
    return 0


@dataclass(frozen=True)
class ResumePlan:
    """What the gateway needs to resume one streamed request."""

    path: str
    body: Mapping[str, Any]  # as sent upstream the first time, before `return_token_ids`
    client_wants_ids: bool  # the client itself asked for token ids: keep them in its stream
    max_tokens: int | None  # the original output budget; None: up to the context length
    min_tokens: int
    include_usage: bool  # the client asked for a final usage chunk

    def first_request(self) -> dict[str, Any]:
        """The first upstream request: the client's, with token ids asked for."""
        return {**self.body, "return_token_ids": True}


def plan_resume(path: str, body: Mapping[str, Any]) -> ResumePlan | str:
    """A ResumePlan for a streamed request, or the reason it cannot be resumed."""
    reason = unsupported_reason(path, body)
    if reason is not None:
        return reason
    if path == COMPLETIONS:
        max_tokens = body.get("max_tokens", COMPLETIONS_DEFAULT_MAX_TOKENS)
    else:
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None and not isinstance(max_tokens, int):
        return "max_tokens is not an integer"
    min_tokens = body.get("min_tokens") or 0
    if not isinstance(min_tokens, int):
        return "min_tokens is not an integer"
    options = body.get("stream_options")
    include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
    return ResumePlan(path, dict(body), body.get("return_token_ids") is True, max_tokens,
                      min_tokens, include_usage)


def continuation_request(plan: ResumePlan, prompt_ids: Sequence[int],
                         sent_ids: Sequence[int]) -> tuple[str, dict[str, Any]]:
    """(path, body) asking a replica to go on from `prompt_ids + sent_ids`.

    Always a completions request on token ids; a chat request's `prompt_ids` are the rendered
    chat prompt, so the template is not applied again.
    """
    body: dict[str, Any]
    if plan.path == COMPLETIONS:
        body = {k: v for k, v in plan.body.items() if k not in _TOKENISING}
    else:
        body = {k: plan.body[k] for k in ("model", *_SHARED_SAMPLING) if k in plan.body}
    body.pop("max_completion_tokens", None)
    body["prompt"] = [*prompt_ids, *sent_ids]
    # An explicit null means "up to the context length" to vLLM (an absent field means 16).
    body["max_tokens"] = None if plan.max_tokens is None else plan.max_tokens - len(sent_ids)
    if plan.min_tokens:
        body["min_tokens"] = max(0, plan.min_tokens - len(sent_ids))
    body["stream"] = True
    body["return_token_ids"] = True
    return COMPLETIONS, body


# ------------------------------------------------------------------------------ the splicer


def sse_data(payload: Mapping[str, Any] | str) -> bytes:
    text = payload if isinstance(payload, str) else json.dumps(
        payload, ensure_ascii=False, separators=(",", ":"))
    return b"data: " + text.encode() + b"\n\n"


Mode = Literal["first", "same", "chat_from_completions"]


@dataclass
class StreamSplicer:
    """One client stream over one or more upstream streams (the first, then continuations).

    `feed` takes upstream bytes and returns the bytes for the client, one whole SSE event at a
    time (an event is relayed as soon as its last byte arrives). After the upstream ends or
    fails, `done` says whether the client has its whole answer, `broken` why the upstream
    stopped short (an in-stream server error event), `unresumable` why it cannot be continued.
    """

    plan: ResumePlan
    prompt_ids: list[int] | None = None
    sent_ids: list[int] = field(default_factory=list)
    done: bool = False  # `data: [DONE]` relayed
    finished: bool = False  # the choice's finish_reason relayed
    broken: str | None = None
    unresumable: str | None = None
    resumes: int = 0
    _mode: Mode = "first"
    _offset: int = 0  # tokens already sent when the current upstream began
    _buffer: bytes = b""
    _head: dict[str, Any] = field(default_factory=dict)  # the first stream's id, created, model
    _role_sent: bool = False
    _prompt_ids_sent: bool = False  # the client has the prompt ids it asked for
    _usage_sent: bool = False
    _touched: bool = False  # whether the last chunk was changed on its way to the client

    # ----------------------------------------------------------------------- upstream in

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer = (self._buffer + data).replace(b"\r\n", b"\n")
        out: list[bytes] = []
        while not self.broken and (end := self._buffer.find(b"\n\n")) >= 0:
            raw, self._buffer = self._buffer[:end], self._buffer[end + 2:]
            sent = self._event(raw)
            if sent:
                out.append(sent)
        return out

    def upstream_ended(self) -> None:
        """The current upstream is over (closed or failed): drop any half-received event."""
        self._buffer = b""

    def _event(self, raw: bytes) -> bytes | None:
        data = [line[5:].lstrip() for line in raw.split(b"\n") if line.startswith(b"data:")]
        if not data:
            return raw + b"\n\n" if raw.strip() else None  # comments, keep-alives
        text = b"\n".join(data).decode(errors="replace")
        if text.strip() == "[DONE]":
            self.done = True
            return b"data: [DONE]\n\n"
        try:
            chunk = json.loads(text)
        except ValueError:
            return raw + b"\n\n"
        if not isinstance(chunk, dict):
            return raw + b"\n\n"
        if "error" in chunk:
            error = chunk["error"] if isinstance(chunk["error"], dict) else {}
            code = error.get("code")
            if isinstance(code, int) and code < 500:
                return raw + b"\n\n"  # the request's own fault: the client's to see
            self.broken = f"server error event: {str(error.get('message', ''))[:200]}"
            return None
        rewritten = self._chunk(chunk)
        if rewritten is None:
            return None
        if rewritten.get("usage") is not None:
            self._usage_sent = True
        if rewritten is chunk and self._mode == "first" and not self._touched:
            return raw + b"\n\n"
        return sse_data(rewritten)

    # ------------------------------------------------------------------- one JSON chunk

    def _chunk(self, chunk: dict[str, Any]) -> dict[str, Any] | None:
        self._touched = False
        if self._mode == "first" and not self._head and "id" in chunk:
            self._head = {k: chunk[k] for k in ("id", "created", "model") if k in chunk}
        if self.prompt_ids is None and isinstance(chunk.get("prompt_token_ids"), list):
            self.prompt_ids = list(chunk["prompt_token_ids"])  # chat: top level, once
        if self.plan.path == CHAT and self._mode != "chat_from_completions":
            return self._chat_chunk(chunk)
        if self._mode == "chat_from_completions":
            return self._chat_from_completions(chunk)
        return self._completions_chunk(chunk)

    def _record(self, choice: dict[str, Any], has_output: bool) -> None:
        ids = choice.get("token_ids")
        if isinstance(ids, list):
            self.sent_ids.extend(ids)
        elif has_output and self.unresumable is None:
            # e.g. a chat server with a reasoning parser hides ids: nothing to resume from
            self.unresumable = "the backend sent no token ids"
        if choice.get("finish_reason") is not None:
            self.finished = True

    def _strip_prompt_ids(self, holder: dict[str, Any]) -> None:
        """Prompt ids reach the client once, and only if it asked (a continuation's prompt is
        the original prompt plus the tokens sent)."""
        if self.plan.client_wants_ids and not self._prompt_ids_sent and not self._offset:
            self._prompt_ids_sent = True
            return
        if holder["prompt_token_ids"] is not None:
            holder["prompt_token_ids"] = None
            self._touched = True

    def _completions_chunk(self, chunk: dict[str, Any]) -> dict[str, Any] | None:
        for choice in chunk.get("choices") or []:
            if self.prompt_ids is None and isinstance(choice.get("prompt_token_ids"), list):
                self.prompt_ids = list(choice["prompt_token_ids"])
            self._record(choice, bool(choice.get("text")))
            if "prompt_token_ids" in choice:
                self._strip_prompt_ids(choice)
            if choice.get("token_ids") is not None and not self.plan.client_wants_ids:
                choice["token_ids"] = None
                self._touched = True
        return self._continued(chunk)

    def _chat_chunk(self, chunk: dict[str, Any]) -> dict[str, Any] | None:
        keep: list[dict[str, Any]] = []
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            if delta.get("tool_calls"):
                self.unresumable = "tool calls"
            if delta.get("reasoning") or delta.get("reasoning_content"):
                self.unresumable = "reasoning output"
            self._record(choice, bool(delta.get("content")))
            if "role" in delta:
                if self._role_sent:  # a restarted chat stream: the client has its role chunk
                    del delta["role"]
                    if delta.get("content") == "":
                        del delta["content"]
                    self._touched = True
                self._role_sent = True
            if not self.plan.client_wants_ids:
                if choice.get("token_ids") is not None:
                    choice["token_ids"] = None
                    self._touched = True
                # vLLM sends an id-only chunk (empty delta) where it otherwise sends nothing
                if (not delta and choice.get("finish_reason") is None
                        and choice.get("logprobs") is None):
                    self._touched = True
                    continue
            keep.append(choice)
        if "prompt_token_ids" in chunk:
            self._strip_prompt_ids(chunk)
        if chunk.get("choices") and not keep:
            return None
        if self._touched:
            chunk["choices"] = keep
        return self._continued(chunk)

    def _chat_from_completions(self, chunk: dict[str, Any]) -> dict[str, Any] | None:
        choices = []
        for choice in chunk.get("choices") or []:
            self._record(choice, bool(choice.get("text")))
            text = choice.get("text") or ""
            out: dict[str, Any] = {"index": choice.get("index", 0),
                                   "delta": {"content": text} if text else {},
                                   "logprobs": None,
                                   "finish_reason": choice.get("finish_reason")}
            if choice.get("finish_reason") is not None:
                out["stop_reason"] = choice.get("stop_reason")
            out["token_ids"] = choice.get("token_ids") if self.plan.client_wants_ids else None
            if not text and out["finish_reason"] is None and not self.plan.client_wants_ids:
                continue
            choices.append(out)
        if chunk.get("choices") and not choices:
            return None
        converted: dict[str, Any] = {"id": chunk.get("id"), "object": "chat.completion.chunk",
                                     "created": chunk.get("created"),
                                     "model": chunk.get("model"), "choices": choices}
        if chunk.get("usage") is not None:
            converted["usage"] = chunk["usage"]
        self._touched = True
        return self._continued(converted)

    def _continued(self, chunk: dict[str, Any]) -> dict[str, Any]:
        """In a continuation: the first stream's identity, and usage as if unbroken."""
        if self._mode == "first":
            return chunk
        self._touched = True
        chunk.update(self._head)
        usage = chunk.get("usage")
        if isinstance(usage, dict) and self._offset:
            if isinstance(usage.get("prompt_tokens"), int):
                usage["prompt_tokens"] -= self._offset
            if isinstance(usage.get("completion_tokens"), int):
                usage["completion_tokens"] += self._offset
        return chunk

    # --------------------------------------------------------------------- continuing

    def why_not_resumable(self) -> str | None:
        if self.unresumable:
            return self.unresumable
        if self.sent_ids and self.prompt_ids is None:
            return "the backend sent no prompt token ids"
        return None

    def continuation(self) -> tuple[str, dict[str, Any]]:
        """(path, body) for the next upstream, and switch to relaying it.

        Nothing relayed yet and no prompt ids: the original request again (a plain retry).
        """
        self.resumes += 1
        self.broken = None
        self._buffer = b""
        self._offset = len(self.sent_ids)
        if self.prompt_ids is None:
            self._mode = "same"
            return self.plan.path, self.plan.first_request()
        self._mode = "chat_from_completions" if self.plan.path == CHAT else "same"
        return continuation_request(self.plan, self.prompt_ids, self.sent_ids)

    def closing(self) -> list[bytes]:
        """What the client still needs when the answer was complete but the upstream died
        before its trailer: the usage chunk (if asked for) and `[DONE]`."""
        out: list[bytes] = []
        if self.plan.include_usage and not self._usage_sent and self.prompt_ids is not None:
            prompt, completion = len(self.prompt_ids), len(self.sent_ids)
            obj = "chat.completion.chunk" if self.plan.path == CHAT else "text_completion"
            out.append(sse_data({**self._head, "object": obj, "choices": [],
                                 "usage": {"prompt_tokens": prompt,
                                           "completion_tokens": completion,
                                           "total_tokens": prompt + completion}}))
        out.append(b"data: [DONE]\n\n")
        self.done = True
        return out


# ------------------------------------------------------------------------------- metrics

RESUME_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ResumeMetrics:
    """The resume counters and the resume-latency histogram, on `registry` (the gateway's;
    None: kept unregistered)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.resumes = Counter(GATEWAY_RESUMES, "Broken requests continued on another replica.",
                               ["model", "path"], registry=registry)
        self.failures = Counter(GATEWAY_RESUME_FAILURES, "Broken requests that could not be "
                                "continued (the client got backend_failed).",
                                ["model", "path", "reason"], registry=registry)
        self.seconds = Histogram(GATEWAY_RESUME_SECONDS, "From a backend's failure to the "
                                 "first bytes of the continuation.", ["model"],
                                 buckets=RESUME_BUCKETS, registry=registry)

    def count_resume(self, model: str, path: str) -> None:
        self.resumes.labels(model, path).inc()

    def count_failure(self, model: str, path: str, reason: str) -> None:
        self.failures.labels(model, path, reason).inc()

    def observe(self, model: str, seconds: float) -> None:
        self.seconds.labels(model).observe(seconds)
