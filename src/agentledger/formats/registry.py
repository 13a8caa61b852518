"""Which formats each provider kind speaks, and how a client's format reaches a provider that speaks another.

Chat completions and Messages translate both ways (formats/translate/); the Responses API and embeddings
reach only providers that speak them: a route that would need another translation is refused with a 400.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agentledger.formats import translate
from agentledger.formats.base import CHAT, EMBEDDINGS, MESSAGES, RESPONSES, Format, Parsed, StreamAdapter
from agentledger.formats.chat import CHAT_FORMAT
from agentledger.formats.embeddings import EMBEDDINGS_FORMAT
from agentledger.formats.messages import MESSAGES_FORMAT
from agentledger.formats.responses import RESPONSES_FORMAT

FORMATS = {f.name: f for f in (CHAT_FORMAT, MESSAGES_FORMAT, RESPONSES_FORMAT, EMBEDDINGS_FORMAT)}
_OPENAI = frozenset({CHAT, RESPONSES, EMBEDDINGS})
NATIVE: dict[str, frozenset[str]] = {
    "openai": _OPENAI,
    "azure": _OPENAI,
    "anthropic": frozenset({MESSAGES}),
    "mock": frozenset(FORMATS),
}
PROVIDER_KINDS = tuple(NATIVE)


@dataclass(frozen=True, slots=True)
class Bridge:
    """A client format on its way to a provider format: the identity when they are the same."""

    client: Format
    provider: Format
    request: Callable[[dict[str, Any]], dict[str, Any]] | None = None  # None: the client's body as it is
    response: Callable[[dict[str, Any], str], dict[str, Any]] | None = None
    translated_stream: Callable[[Parsed, str], StreamAdapter] | None = None

    @property
    def translated(self) -> bool:
        return self.request is not None

    def stream(self, parsed: Parsed, model: str) -> StreamAdapter:
        if self.translated_stream is not None:
            return self.translated_stream(parsed, model)
        assert self.client.stream is not None
        return self.client.stream(parsed)


def _chat_request_for_messages(payload: dict[str, Any]) -> dict[str, Any]:
    # The usage chunk the gateway forces is a chat-side option; a Messages provider reports usage by itself.
    return translate.chat_to_messages_request({k: v for k, v in payload.items() if k != "stream_options"})


_TRANSLATIONS = {
    (CHAT, MESSAGES): Bridge(
        CHAT_FORMAT,
        MESSAGES_FORMAT,
        _chat_request_for_messages,
        translate.messages_to_chat_response,
        lambda parsed, model: translate.MessagesToChatStream(model, parsed.wants_usage),
    ),
    (MESSAGES, CHAT): Bridge(
        MESSAGES_FORMAT,
        CHAT_FORMAT,
        translate.messages_to_chat_request,
        translate.chat_to_messages_response,
        lambda parsed, model: translate.ChatToMessagesStream(model),
    ),
}
_NATIVE_BRIDGES = {name: Bridge(f, f) for name, f in FORMATS.items()}


def bridge(client: str, kind: str) -> Bridge | None:
    """How a `client`-format request reaches a provider of `kind`, or None when it cannot."""
    speaks = NATIVE.get(kind, frozenset())
    if client in speaks:
        return _NATIVE_BRIDGES[client]
    for provider in sorted(speaks):
        found = _TRANSLATIONS.get((client, provider))
        if found is not None:
            return found
    return None
