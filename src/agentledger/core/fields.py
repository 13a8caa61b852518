"""Text fields of JSON bodies: labels and ids. One rule for the step API and the management API alike.

A label is printable text: control characters (C0, DEL, C1) would rewrite a terminal or a log line that shows
it, and PostgreSQL refuses NUL outright, so a label that passed here and failed in the store would be a 500.
An id follows the tracking headers' id rule (`core.headers.ID_RE`, at most 128 characters: its columns).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from agentledger.core.errors import InvalidRequest
from agentledger.core.headers import ID_HELP, ID_RE, MAX_ID_LEN, MAX_NAME_LEN, has_control
from agentledger.core.times import TIMESTAMP_HELP, parse_utc


def text_field(value: Any, param: str, *, limit: int = MAX_NAME_LEN, strip: bool = False) -> str:
    """A non-empty string of at most `limit` characters without control characters, else a 400 naming `param`.

    `strip` trims surrounding whitespace and refuses a blank value. Controls are looked for before trimming:
    `str.strip` counts some of them (NEL, the C0 separators) as whitespace and would hide them at the edges.
    The length is that of the value as sent, before trimming: the OpenAPI `maxLength` a client validates
    against is about what it sends.
    """
    if isinstance(value, str) and has_control(value):
        raise InvalidRequest(f"'{param}' contains control characters.", param=param)
    if not isinstance(value, str) or len(value) > limit or not (value.strip() if strip else value):
        raise InvalidRequest(f"'{param}' must be a non-empty string of at most {limit} characters.", param=param)
    return value.strip() if strip else value


def time_field(value: Any, param: str) -> datetime:
    """An ISO 8601 string within the stores' range (core.times) as aware UTC, else a 400 naming `param`."""
    try:
        if isinstance(value, str):
            return parse_utc(value)
    except ValueError:
        pass
    raise InvalidRequest(f"'{param}' must be {TIMESTAMP_HELP}.", param=param)


def id_field(value: Any, param: str) -> str:
    ident = text_field(value, param, limit=MAX_ID_LEN)
    if not ID_RE.fullmatch(ident):
        raise InvalidRequest(f"'{param}' {ID_HELP}.", param=param)
    return ident
