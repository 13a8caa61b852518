"""OpenAI Chat Completions ⇄ Anthropic Messages, both ways, streamed and not. Pure: no I/O.

A client speaking one format reaches a provider speaking the other: its request is translated to the
provider's format, and the provider's answer (a body, or a stream of SSE events) back to the client's.
Text, images, tool definitions, tool calls and tool results, the system prompt, `max_tokens`, stop sequences,
sampling, stop reasons and usage (cache reads and writes included) translate both ways.

What cannot be translated is decided per field: a field whose loss leaves the answer's meaning intact is
dropped (or mapped to its nearest equivalent); a field whose loss would change what the answer means, or that
asks for something the other side cannot produce, is refused with `InvalidRequest` (400) naming the field, so
a client learns at once instead of receiving a silently different answer.

Chat request → Messages request (`chat_to_messages_request`)
    mapped    system/developer messages → `system` (all of them, in order, wherever they stood);
              `max_completion_tokens`, else `max_tokens` → `max_tokens` (default 4096, which Messages
              requires); `stop` → `stop_sequences`; `temperature` (clamped to Anthropic's 0..1 range) and
              `top_p`; function `tools` (a missing `parameters` is an empty object schema); `tool_choice`
              auto/none/required/named → auto/none/any/tool; `parallel_tool_calls: false` →
              `disable_parallel_tool_use`; `response_format` json_schema → `output_config.format`;
              `user` → `metadata.user_id`; `stream` (without `stream_options`: Messages always reports usage).
              Assistant `tool_calls` → `tool_use` blocks (arguments must be a JSON object; "" reads as {});
              `role: tool` messages → `tool_result` blocks in a user turn; consecutive turns of one role are
              merged (Messages wants them alternating); empty messages are left out; a lone text block is
              sent as a plain string. Images: data: (base64 jpeg/png/gif/webp) and http(s) URLs; files:
              inline PDFs (`file_data` data: URL) → `document` blocks. `cache_control` on a content part is
              kept. A trailing assistant message becomes Anthropic's prefill (the answer continues it).
    dropped   `seed`, `frequency_penalty`, `presence_penalty`, `reasoning_effort`, `verbosity`,
              `prediction`, `store`, `metadata` (OpenAI's stored-completion tags), `service_tier`,
              `prompt_cache_*`, `safety_identifier`, `stream_options`, a message's `name`, an image's
              `detail`, a function's `strict`, and any field not named here: sampling, latency and
              bookkeeping knobs that do not change what the answer means.
    refused   `n` > 1 (one answer only), `logprobs`/`top_logprobs`, `logit_bias` (bans or forces tokens),
              `audio` and `modalities` other than text, `web_search_options`, `moderation`, legacy
              `functions`/`function_call` (and `role: function` messages), `response_format` json_object
              (Messages has no schemaless JSON mode), custom (non-function) tools and tool calls,
              `allowed_tools` tool choice, audio input and file-id/non-PDF files.

Messages request → chat request (`messages_to_chat_request`)
    mapped    `system` (string or text blocks, joined by a blank line) → a system message; text, image
              (base64 → data: URL, url) and document (base64 PDF → inline file; plain-text source → text)
              blocks; `tool_use` → `tool_calls` (input serialized); `tool_result` → `role: tool` messages
              (sent before the rest of their user turn, as chat wants them right after the calls);
              `max_tokens`; `stop_sequences` → `stop`; `temperature`, `top_p`; custom tools → function tools
              (`strict` kept); `tool_choice` auto/any/tool/none → auto/required/named/none and
              `disable_parallel_tool_use` → `parallel_tool_calls: false`; `output_config.format` (or the
              beta `output_format`) → `response_format` json_schema (strict); `metadata.user_id` → `user`;
              `stream: true` → also `stream_options.include_usage` (the gateway always needs the usage).
    dropped   `top_k`, `service_tier`, `speed`, `inference_geo`, `diagnostics`, top-level and per-block
              `cache_control`, `output_config.effort`, a tool result's `is_error` (its text says what went
              wrong), a document's `title`/`context`/`citations`, earlier `thinking`/`redacted_thinking`
              blocks (another model cannot use them), `thinking: {"type": "disabled"}`, and unknown fields.
    refused   `thinking` enabled (any type but disabled), `container`, `mcp_servers`, `context_management`,
              server and Anthropic-defined tools (any tool `type` but custom), server-tool blocks
              (`server_tool_use`, `*_tool_result`, `search_result`, ...), images inside tool results (a chat
              tool message holds text only), Files-API sources and URL documents, and a conversation ending
              in an assistant turn (Anthropic's prefill: a chat model would answer anew, not continue it).

Answers (`messages_to_chat_response`, `chat_to_messages_response`, and both stream adapters)
    Stop reasons: end_turn/stop_sequence/pause_turn → stop, max_tokens/model_context_window_exceeded →
    length, tool_use → tool_calls, refusal → content_filter; back: stop → end_turn (or tool_use when the
    answer holds tool calls: some providers say "stop" there, and Anthropic clients run tools only on
    tool_use), length → max_tokens, tool_calls/function_call → tool_use, content_filter → refusal.
    Usage: OpenAI `prompt_tokens` = input + cache reads + cache writes, `prompt_tokens_details.cached_tokens`
    = cache reads, `.cache_write_tokens` = cache writes; back, Anthropic `input_tokens` = prompt − both.
    Thinking blocks (and chat `reasoning_content`) are not carried: neither side can take the other's.
    Tool-call arguments that are not a JSON object are passed to an Anthropic client as `{"_raw": "<text>"}`,
    so the malformed call stays visible (and answerable with a tool_result) instead of vanishing.
    A provider's answer is never refused: what is missing or malformed in it is read as absent.

Streams: a provider's in-band error sets `failure` and is forwarded in the client's error shape (an
`{"error": {...}}` chunk for chat, an `error` event for Messages). A chat provider's tool-call fragments are
expected in order (each call's fragments before the next call's, as OpenAI and vLLM send them); a fragment
for a call whose block was already closed cannot be placed in an Anthropic stream and is dropped.
"""

from agentledger.formats.translate._common import DEFAULT_MAX_TOKENS
from agentledger.formats.translate.answers import chat_to_messages_response, messages_to_chat_response
from agentledger.formats.translate.requests import chat_to_messages_request, messages_to_chat_request
from agentledger.formats.translate.streams import ChatToMessagesStream, MessagesToChatStream

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "ChatToMessagesStream",
    "MessagesToChatStream",
    "chat_to_messages_request",
    "chat_to_messages_response",
    "messages_to_chat_request",
    "messages_to_chat_response",
]
