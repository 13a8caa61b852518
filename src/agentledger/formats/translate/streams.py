"""Streamed answers, both ways: adapters that turn a provider's SSE events into the client's, one event at a time."""

from __future__ import annotations

import time
from typing import Any

import orjson

from agentledger.core.usage import Usage, merge_anthropic, parse_anthropic, parse_openai, reported_cost
from agentledger.formats.base import sse
from agentledger.formats.translate._common import (
    TO_CHAT_FINISH,
    anthropic_stop,
    anthropic_usage,
    chat_id,
    dumps,
    loads,
    message_id,
    openai_usage,
)

_DONE = b"data: [DONE]\n\n"


# --------------------------------------------------------------------------------- Messages stream → chat


class MessagesToChatStream:
    """An Anthropic Messages event stream → chat.completion.chunk frames, for a chat client."""

    __slots__ = (
        "model",
        "include_usage",
        "complete",
        "failure",
        "raw_usage",
        "_id",
        "_created",
        "_started",
        "_finished",
        "_finish",
        "_tools",
        "_streamed_args",
        "_start_input",
    )

    def __init__(self, model: str, include_usage: bool) -> None:
        self.model = model
        self.include_usage = include_usage
        self.complete = False
        self.failure: str | None = None
        self.raw_usage: dict[str, Any] | None = None
        self._id = chat_id(None)
        self._created = int(time.time())
        self._started = False  # the role chunk went out
        self._finished = False  # the finish chunk went out
        self._finish: str | None = None
        self._tools: dict[int, int] = {}  # Anthropic block index → tool call ordinal
        self._streamed_args: set[int] = set()  # blocks whose input arrived as input_json_delta
        self._start_input: dict[int, dict[str, Any]] = {}

    def feed(self, event: str | None, data: bytes) -> list[bytes]:
        parsed = loads(data)
        if not isinstance(parsed, dict):
            return []
        kind = event if event is not None else parsed.get("type")
        index = parsed.get("index")
        index = index if isinstance(index, int) and not isinstance(index, bool) else -1
        if kind == "message_start":
            message = parsed.get("message")
            if isinstance(message, dict):
                if isinstance(message.get("id"), str) and message["id"] and not self._started:
                    self._id = chat_id(message["id"])
                if isinstance(message.get("usage"), dict):
                    self.raw_usage = merge_anthropic(self.raw_usage, message["usage"])
            return self._role()
        if kind == "content_block_start":
            return self._block_start(parsed.get("content_block"), index)
        if kind == "content_block_delta":
            delta = parsed.get("delta")
            if not isinstance(delta, dict):
                return []
            if delta.get("type") == "text_delta" and isinstance(delta.get("text"), str) and delta["text"]:
                return self._role() + [self._chunk({"content": delta["text"]})]
            fragment = delta.get("partial_json")
            if delta.get("type") == "input_json_delta" and index in self._tools and isinstance(fragment, str):
                self._streamed_args.add(index)
                if fragment:
                    return self._role() + [
                        self._tool_chunk({"index": self._tools[index], "function": {"arguments": fragment}})
                    ]
            return []
        if kind == "content_block_stop":
            held = self._start_input.pop(index, None)
            if held and index not in self._streamed_args:  # a tool_use that came whole, not in fragments
                arguments = dumps(held) or "{}"
                return self._role() + [
                    self._tool_chunk({"index": self._tools[index], "function": {"arguments": arguments}})
                ]
            return []
        if kind == "message_delta":
            if isinstance(parsed.get("usage"), dict):
                self.raw_usage = merge_anthropic(self.raw_usage, parsed["usage"])
            delta = parsed.get("delta")
            stop = delta.get("stop_reason") if isinstance(delta, dict) else None
            if isinstance(stop, str):
                self._finish = TO_CHAT_FINISH.get(stop, "stop")
                return self._finish_chunk()
            return []
        if kind == "message_stop":
            self.complete = True
            return self._finish_chunk()
        if kind == "error":
            err = parsed.get("error")
            err = err if isinstance(err, dict) else {}
            message = err.get("message")
            self.failure = (message if isinstance(message, str) and message else "provider stream error")[:500]
            kind_of = err.get("type") if isinstance(err.get("type"), str) else "api_error"
            body = {"error": {"message": self.failure, "type": kind_of, "code": None, "param": None}}
            return [sse(None, orjson.dumps(body))]
        return []  # ping, thinking and signature deltas, anything newer

    def close(self) -> list[bytes]:
        frames = []
        if self.include_usage:
            chunk = {
                "id": self._id,
                "object": "chat.completion.chunk",
                "created": self._created,
                "model": self.model,
                "choices": [],
                "usage": openai_usage(parse_anthropic(self.raw_usage)),
            }
            frames.append(sse(None, orjson.dumps(chunk)))
        frames.append(_DONE)
        return frames

    def usage(self) -> tuple[Usage, bool] | None:
        return parse_anthropic(self.raw_usage)

    def reported_cost(self) -> str | None:
        return None

    def _block_start(self, block: Any, index: int) -> list[bytes]:
        if not isinstance(block, dict):
            return []
        if block.get("type") == "text" and isinstance(block.get("text"), str) and block["text"]:
            return self._role() + [self._chunk({"content": block["text"]})]
        if block.get("type") != "tool_use" or index in self._tools:
            return []
        self._tools[index] = ordinal = len(self._tools)
        if isinstance(block.get("input"), dict) and block["input"]:
            self._start_input[index] = block["input"]
        call = {
            "index": ordinal,
            "id": block["id"] if isinstance(block.get("id"), str) else f"call_{ordinal}",
            "type": "function",
            "function": {"name": block["name"] if isinstance(block.get("name"), str) else "", "arguments": ""},
        }
        return self._role() + [self._tool_chunk(call)]

    def _role(self) -> list[bytes]:
        if self._started:
            return []
        self._started = True
        return [self._chunk({"role": "assistant", "content": ""})]

    def _finish_chunk(self) -> list[bytes]:
        if self._finished:
            return []
        self._finished = True
        return self._role() + [self._chunk({}, self._finish or ("tool_calls" if self._tools else "stop"))]

    def _tool_chunk(self, call: dict[str, Any]) -> bytes:
        return self._chunk({"tool_calls": [call]})

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        chunk: dict[str, Any] = {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if self.include_usage:
            chunk["usage"] = None  # as OpenAI sends every chunk before the usage chunk
        return sse(None, orjson.dumps(chunk))


# --------------------------------------------------------------------------------- chat stream → Messages


class ChatToMessagesStream:
    """chat.completion.chunk events (then `[DONE]`) → Anthropic Messages events, for a Messages client."""

    __slots__ = (
        "model",
        "complete",
        "failure",
        "raw_usage",
        "_id",
        "_started",
        "_blocks",
        "_open",
        "_tools",
        "_stop",
        "_delta_sent",
    )

    def __init__(self, model: str) -> None:
        self.model = model
        self.complete = False
        self.failure: str | None = None
        self.raw_usage: dict[str, Any] | None = None
        self._id: str | None = None
        self._started = False
        self._blocks = 0  # content blocks opened so far (the next block's index)
        self._open: tuple[str, int] | None = None  # ("text" | "tool", block index) of the open block
        self._tools: dict[int | str, tuple[int, str]] = {}  # chat tool call key → (block index, call id)
        self._stop: str | None = None  # the chat finish_reason, once seen
        self._delta_sent = False

    def feed(self, event: str | None, data: bytes) -> list[bytes]:
        if data.strip() == b"[DONE]":
            self.complete = True
            return self._begin(None) + self._close_block() + self._message_delta()
        chunk = loads(data)
        if not isinstance(chunk, dict):
            return []
        if chunk.get("error") is not None:  # OpenRouter and others report a failure mid-stream in a chunk
            err = chunk["error"]
            message = err.get("message") if isinstance(err, dict) else err
            self.failure = (message if isinstance(message, str) and message else "provider stream error")[:500]
            body = {"type": "error", "error": {"type": "api_error", "message": self.failure}}
            return [sse("error", orjson.dumps(body))]
        out = self._begin(chunk.get("id"))
        if isinstance(chunk.get("usage"), dict):
            self.raw_usage = chunk["usage"]
        choices = chunk.get("choices")
        for choice in choices if isinstance(choices, list) else []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue  # we only ever ask for one choice
            delta = choice.get("delta")
            if isinstance(delta, dict):
                for key in ("content", "refusal"):
                    if isinstance(delta.get(key), str) and delta[key]:
                        out += self._text(delta[key])
                calls = delta.get("tool_calls")
                for call in calls if isinstance(calls, list) else []:
                    if isinstance(call, dict):
                        out += self._tool(call)
            finish = choice.get("finish_reason")
            if isinstance(finish, str) and finish:
                self._stop = finish
                out += self._close_block()
        if self._stop is not None and not choices and self.raw_usage is not None:
            out += self._message_delta()  # the usage chunk after the finish chunk
        return out

    def close(self) -> list[bytes]:
        return [self._event("message_stop", {"type": "message_stop"})]

    def usage(self) -> tuple[Usage, bool] | None:
        return parse_openai(self.raw_usage)

    def reported_cost(self) -> str | None:
        return reported_cost(self.raw_usage)

    def _begin(self, chat_id: Any) -> list[bytes]:
        if self._started:
            return []
        self._started = True
        self._id = message_id(chat_id)
        message: dict[str, Any] = {
            "id": self._id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            # Anthropic sends the input counts here; a chat provider tells them only at the end, in the usage
            # chunk, so they follow in message_delta (cumulative, as newer Messages API versions send them).
            "usage": {
                "input_tokens": 0,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "output_tokens": 1,
            },
        }
        return [self._event("message_start", {"type": "message_start", "message": message})]

    def _text(self, text: str) -> list[bytes]:
        out = []
        if self._open is None or self._open[0] != "text":
            out += self._open_block("text", {"type": "text", "text": ""})
        assert self._open is not None
        delta = {"type": "text_delta", "text": text}
        out.append(
            self._event("content_block_delta", {"type": "content_block_delta", "index": self._open[1], "delta": delta})
        )
        return out

    def _tool(self, call: dict[str, Any]) -> list[bytes]:
        function: dict[str, Any] = call["function"] if isinstance(call.get("function"), dict) else {}
        arguments = function.get("arguments") if isinstance(function.get("arguments"), str) else ""
        call_id = call.get("id") if isinstance(call.get("id"), str) and call["id"] else None
        index = call.get("index")
        key: int | str
        if isinstance(index, int) and not isinstance(index, bool):
            key = index
        elif call_id is not None:
            key = call_id
        elif self._open is not None and self._open[0] == "tool":  # a fragment without index or id: the open call
            key = next((k for k, (block, _) in self._tools.items() if block == self._open[1]), len(self._tools))
        else:
            key = len(self._tools)
        if key in self._tools and call_id is not None and call_id != self._tools[key][1]:
            key = f"{key}:{call_id}"  # a provider that numbers every call 0: a new id is a new call
        out = []
        if key not in self._tools:
            call_id = call_id or f"toolu_{self._blocks}"
            name = function.get("name") if isinstance(function.get("name"), str) else ""
            out += self._open_block("tool", {"type": "tool_use", "id": call_id, "name": name, "input": {}})
            self._tools[key] = (self._blocks - 1, call_id)
        block = self._tools[key][0]
        if arguments and self._open == ("tool", block):
            delta = {"type": "input_json_delta", "partial_json": arguments}
            out.append(
                self._event("content_block_delta", {"type": "content_block_delta", "index": block, "delta": delta})
            )
        return out

    def _open_block(self, kind: str, content_block: dict[str, Any]) -> list[bytes]:
        out = self._close_block()
        index = self._blocks
        self._blocks += 1
        self._open = (kind, index)
        start = {"type": "content_block_start", "index": index, "content_block": content_block}
        return out + [self._event("content_block_start", start)]

    def _close_block(self) -> list[bytes]:
        if self._open is None:
            return []
        index = self._open[1]
        self._open = None
        return [self._event("content_block_stop", {"type": "content_block_stop", "index": index})]

    def _message_delta(self) -> list[bytes]:
        if self._delta_sent:
            return []
        self._delta_sent = True
        delta = {"stop_reason": anthropic_stop(self._stop, bool(self._tools)), "stop_sequence": None}
        usage = anthropic_usage(parse_openai(self.raw_usage))
        return [self._event("message_delta", {"type": "message_delta", "delta": delta, "usage": usage})]

    @staticmethod
    def _event(name: str, body: dict[str, Any]) -> bytes:
        return sse(name, orjson.dumps(body))
