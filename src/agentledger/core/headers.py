"""Tracking headers → TrackingContext. Header names are a public contract, matched case-insensitively.

Input is the raw ASGI header list (bytes), so invalid UTF-8 is caught here rather than silently
replaced: a corrupt value gets a 400, never a stored corrupt row.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import field

from agentledger.core.errors import InvalidHeader
from agentledger.core.frozen import frozen

REQUEST_ID = "x-request-id"
AGENT_ID = "alephant-agent-id"
RUN_ID = "alephant-run-id"
SESSION_ID = "alephant-session-id"
SESSION_PATH = "alephant-session-path"
SESSION_NAME = "alephant-session-name"
PROMPT_ID = "alephant-prompt-id"
PROMPT_VERSION = "alephant-prompt-version"
PROPERTY_PREFIX = "alephant-property-"
FORCED_ROUTING = "alephant-forced-routing"
# Privacy, not tracking: the call is metered and traced, but its bodies are not stored (docs/retention.md).
OMIT_REQUEST = "alephant-omit-request"
OMIT_RESPONSE = "alephant-omit-response"
# Client headers an Anthropic provider reads: which API version and beta features the answer must follow.
PROVIDER_HEADERS = frozenset({"anthropic-version", "anthropic-beta"})

MAX_ID_LEN = 128
MAX_NAME_LEN = 256
MAX_PATH_LEN = 1024
MAX_PROPERTY_VALUE_LEN = 1024
MAX_PROPERTIES = 32

# Ids appear in URLs (/api/runs/{id}) and logs, so they are restricted to URL-safe characters. Matched with
# `fullmatch`: `$` alone also matches before a trailing newline.
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:\-]*$")
ID_HELP = "must start with a letter or digit and hold only letters, digits, '.', '_', ':', '-'"
PROPERTY_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.\-]{0,63}$")
PROPERTY_NAME_HELP = "property names are 1-64 characters of a-z, 0-9, '_', '.', '-'"
_SEGMENT_RE = re.compile(r"^[^/\x00-\x1f\x7f]+$")


@frozen
class TrackingContext:
    request_id: str | None = None
    agent_id: str | None = None
    run_id: str | None = None
    session_id: str | None = None
    session_path: str | None = None
    session_name: str | None = None
    prompt_id: str | None = None
    prompt_version: str | None = None
    properties: dict[str, str] = field(default_factory=dict)
    forced_route: str | None = None  # alephant-forced-routing: a provider key's name
    provider_headers: tuple[tuple[str, str], ...] = ()  # PROVIDER_HEADERS the client sent, to pass on
    omit_request: bool = False  # alephant-omit-request: true
    omit_response: bool = False  # alephant-omit-response: true


def has_control(value: str) -> bool:
    """C0, DEL and C1 (NEL, CSI, ...): they rewrite terminals and logs, and PostgreSQL refuses NUL in text."""
    return any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in value)


def is_id(value: str) -> bool:
    """What `parse_id` accepts; a value that is not an id names nothing, so a lookup by it need not be made."""
    return 0 < len(value) <= MAX_ID_LEN and ID_RE.fullmatch(value) is not None


def _decode(name: str, raw: bytes) -> str:
    try:
        value = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidHeader(f"Header {name!r} is not valid UTF-8.", param=name) from None
    if has_control(value):
        raise InvalidHeader(f"Header {name!r} contains control characters.", param=name)
    return value.strip()


def _check_len(name: str, value: str, limit: int) -> str:
    if not value:
        raise InvalidHeader(f"Header {name!r} is empty.", param=name)
    if len(value) > limit:
        raise InvalidHeader(f"Header {name!r} is longer than {limit} characters.", param=name)
    return value


def parse_id(name: str, value: str) -> str:
    _check_len(name, value, MAX_ID_LEN)
    if not ID_RE.fullmatch(value):
        raise InvalidHeader(f"Header {name!r} {ID_HELP}.", param=name)
    return value


def normalize_path(name: str, value: str) -> str:
    """'/plan//search/' → '/plan/search'. Segments may hold any printable text but not '/'."""
    _check_len(name, value, MAX_PATH_LEN)
    segments = [s for s in value.split("/") if s]
    if not segments or not all(_SEGMENT_RE.match(s) for s in segments):
        raise InvalidHeader(f"Header {name!r} must be a path such as '/plan/search'.", param=name)
    return _check_len(name, "/" + "/".join(segments), MAX_PATH_LEN)  # 'a…' gains a '/': check what is stored


def parse_flag(name: str, value: str) -> bool:
    """`true` or `false`, any case. Anything else is refused rather than read as false: a client that meant to
    keep its bodies out of the store must not have them stored because of a typo."""
    lowered = value.lower()
    if lowered == "true":
        return True
    if lowered == "false":
        return False
    raise InvalidHeader(f"Header {name!r} must be 'true' or 'false'.", param=name)


def parse_prompt(name: str, value: str, version: str | None) -> tuple[str, str | None]:
    """'summarize@3' → ('summarize', '3'); an explicit version header wins over the '@' suffix."""
    pid, _, at_version = value.partition("@")
    parse_id(name, pid)
    chosen = version or at_version or None
    if chosen is not None:
        parse_id(PROMPT_VERSION, chosen)
    return pid, chosen


def parse_tracking(headers: Iterable[tuple[bytes, bytes]]) -> TrackingContext:
    values: dict[str, str] = {}
    properties: dict[str, str] = {}
    passed: list[tuple[str, str]] = []
    for raw_name, raw_value in headers:
        name = raw_name.decode("latin-1").lower()
        if name.startswith(PROPERTY_PREFIX):
            prop = name[len(PROPERTY_PREFIX) :]
            if not PROPERTY_NAME_RE.fullmatch(prop):
                raise InvalidHeader(f"Header {name!r}: {PROPERTY_NAME_HELP}.", param=name)
            properties[prop] = _check_len(name, _decode(name, raw_value), MAX_PROPERTY_VALUE_LEN)
            if len(properties) > MAX_PROPERTIES:
                raise InvalidHeader(f"At most {MAX_PROPERTIES} alephant-property-* headers are allowed.", param=name)
        elif name in _KNOWN:
            values[name] = _decode(name, raw_value)
        elif name in PROVIDER_HEADERS:
            passed.append((name, _check_len(name, _decode(name, raw_value), MAX_PATH_LEN)))

    prompt_id = prompt_version = None
    if PROMPT_ID in values:
        version = values.get(PROMPT_VERSION)
        prompt_id, prompt_version = parse_prompt(PROMPT_ID, values[PROMPT_ID], version)
    elif PROMPT_VERSION in values:
        raise InvalidHeader(f"Header {PROMPT_VERSION!r} needs {PROMPT_ID!r}.", param=PROMPT_VERSION)

    def ident(key: str) -> str | None:
        return parse_id(key, values[key]) if key in values else None

    return TrackingContext(
        request_id=ident(REQUEST_ID),
        agent_id=ident(AGENT_ID),
        run_id=ident(RUN_ID),
        session_id=ident(SESSION_ID),
        session_path=normalize_path(SESSION_PATH, values[SESSION_PATH]) if SESSION_PATH in values else None,
        session_name=_check_len(SESSION_NAME, values[SESSION_NAME], MAX_NAME_LEN) if SESSION_NAME in values else None,
        prompt_id=prompt_id,
        prompt_version=prompt_version,
        properties=properties,
        forced_route=_check_len(FORCED_ROUTING, values[FORCED_ROUTING], MAX_NAME_LEN)
        if FORCED_ROUTING in values
        else None,
        provider_headers=tuple(passed),
        omit_request=parse_flag(OMIT_REQUEST, values[OMIT_REQUEST]) if OMIT_REQUEST in values else False,
        omit_response=parse_flag(OMIT_RESPONSE, values[OMIT_RESPONSE]) if OMIT_RESPONSE in values else False,
    )


_KNOWN = frozenset(
    {
        REQUEST_ID,
        AGENT_ID,
        RUN_ID,
        SESSION_ID,
        SESSION_PATH,
        SESSION_NAME,
        PROMPT_ID,
        PROMPT_VERSION,
        FORCED_ROUTING,
        OMIT_REQUEST,
        OMIT_RESPONSE,
    }
)
