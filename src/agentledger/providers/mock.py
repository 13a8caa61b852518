"""A deterministic OpenAI-compatible model, in-process: the offline demo provider and the tests' upstream.

Token counts are words, so tests can predict them exactly: input = words of every message's content
plus 3 per message; output = words of the reply. A request may dictate its usage instead with
`"metadata": {"mock_usage": {...OpenAI usage...}}`, which is how tests exercise cached and reasoning tokens.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson

from agentledger.core.errors import UpstreamRejected
from agentledger.core.model import ProviderRoute
from agentledger.providers.base import UpstreamResponse

CREATED = 1_764_000_000  # fixed so replies are byte-for-byte reproducible


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def reply_for(body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    messages = body.get("messages") or []
    last = _text(messages[-1].get("content")) if messages and isinstance(messages[-1], dict) else ""
    words = last.split()[:8]
    reply = "This is a mock reply to: " + " ".join(words) if words else "This is a mock reply."
    prompt_tokens = sum(len(_text(m.get("content")).split()) + 3 for m in messages if isinstance(m, dict))
    completion_tokens = len(reply.split())
    if isinstance(body.get("max_tokens"), int) and body["max_tokens"] < completion_tokens:
        completion_tokens = body["max_tokens"]
        reply = " ".join(reply.split()[:completion_tokens])
    usage: dict[str, Any] = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    meta = body.get("metadata")
    if isinstance(meta, dict) and isinstance(meta.get("mock_usage"), dict):
        usage = meta["mock_usage"]
    return reply, usage


def completion_id(body: dict[str, Any]) -> str:
    return "chatcmpl-mock" + hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()[:20]


def completion(body: dict[str, Any]) -> dict[str, Any]:
    reply, usage = reply_for(body)
    return {
        "id": completion_id(body),
        "object": "chat.completion",
        "created": CREATED,
        "model": body.get("model"),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": reply, "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": usage,
        "system_fingerprint": "fp_mock",
    }


def stream_chunks(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The chunks OpenAI would send: a role chunk, one chunk a word, a finish chunk, then usage if asked."""
    reply, usage = reply_for(body)
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    base = {
        "id": completion_id(body),
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": body.get("model"),
    }
    extra = {"usage": None} if include_usage else {}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {**base, "system_fingerprint": "fp_mock", "choices": [choice], **extra}

    words = reply.split(" ")
    chunks = [chunk({"role": "assistant", "content": ""})]
    chunks += [chunk({"content": w if i == 0 else " " + w}) for i, w in enumerate(words)]
    chunks.append(chunk({}, "stop"))
    if include_usage:
        chunks.append({**base, "system_fingerprint": "fp_mock", "choices": [], "usage": usage})
    return chunks


def parse_body(body: bytes) -> dict[str, Any]:
    data = orjson.loads(body)
    if not isinstance(data, dict) or not isinstance(data.get("messages"), list):
        raise UpstreamRejected("Mock provider: 'messages' must be a list.", status=400)
    return data


class MockUpstream:
    """In-process provider: no network, deterministic, with usage on every reply (streamed or not)."""

    async def send(self, route: ProviderRoute, path: str, body: bytes) -> UpstreamResponse:
        return UpstreamResponse(200, orjson.dumps(completion(parse_body(body))), "application/json")

    @asynccontextmanager
    async def stream(self, route: ProviderRoute, path: str, body: bytes) -> AsyncIterator[AsyncIterator[bytes]]:
        chunks = stream_chunks(parse_body(body))

        async def events() -> AsyncIterator[bytes]:
            for c in chunks:
                yield orjson.dumps(c)
            yield b"[DONE]"

        yield events()

    async def aclose(self) -> None:
        return None
