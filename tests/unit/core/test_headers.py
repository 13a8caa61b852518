from __future__ import annotations

import pytest

from agentledger.core.errors import InvalidHeader
from agentledger.core.headers import (
    MAX_PROPERTIES,
    TrackingContext,
    normalize_path,
    parse_id,
    parse_prompt,
    parse_tracking,
)


def parse(*pairs: tuple[str, str | bytes]) -> TrackingContext:
    return parse_tracking([(k.encode("latin-1"), v if isinstance(v, bytes) else v.encode()) for k, v in pairs])


def rejects(*pairs: tuple[str, str | bytes]) -> InvalidHeader:
    with pytest.raises(InvalidHeader) as info:
        parse(*pairs)
    exc = info.value
    assert exc.status == 400 and exc.code == "invalid_header"
    assert exc.body()["error"]["type"] == "invalid_request_error"
    return exc


def test_no_headers_is_an_empty_context() -> None:
    assert parse() == TrackingContext()


def test_all_headers_are_read_case_insensitively() -> None:
    ctx = parse(
        ("X-Request-ID", "req-1"),
        ("Alephant-Agent-Id", "planner"),
        ("ALEPHANT-RUN-ID", "run:2025.01_a"),
        ("alephant-session-id", "sess-1"),
        ("Alephant-Session-Path", "/plan/search"),
        ("Alephant-Session-Name", "  Trip to Lisbon  "),
        ("Alephant-Prompt-Id", "summarize"),
        ("Alephant-Property-Team", "growth"),
        ("content-type", "application/json"),
    )
    assert ctx == TrackingContext(
        request_id="req-1",
        agent_id="planner",
        run_id="run:2025.01_a",
        session_id="sess-1",
        session_path="/plan/search",
        session_name="Trip to Lisbon",
        prompt_id="summarize",
        prompt_version=None,
        properties={"team": "growth"},
    )


@pytest.mark.parametrize("name", ["x-request", "x-request-id-2", "alephant-run", "alephant_run_id", "agent-id"])
def test_only_the_exact_names_count(name: str) -> None:
    assert parse((name, "whatever")) == TrackingContext()


def test_unknown_headers_are_not_validated() -> None:
    assert parse(("user-agent", b"\xff\x00 anything")) == TrackingContext()


def test_properties_by_prefix() -> None:
    ctx = parse(
        ("alephant-property-team", "growth"),
        ("Alephant-Property-Cost.Center", "42"),
        ("alephant-property-env_name", "prod-eu"),
        ("alephant-property-customer", "Zoë — ünïcode"),
    )
    assert ctx.properties == {"team": "growth", "cost.center": "42", "env_name": "prod-eu", "customer": "Zoë — ünïcode"}


@pytest.mark.parametrize("prop", ["", "-lead", "has space", "a" * 65, "semi;colon", "é"])
def test_bad_property_names_are_refused(prop: str) -> None:
    name = "alephant-property-" + prop
    exc = rejects((name, "v"))
    assert exc.param == name


def test_property_limits() -> None:
    assert parse(("alephant-property-" + "a" * 64, "v")).properties == {"a" * 64: "v"}
    assert parse(("alephant-property-x", "v" * 1024)).properties == {"x": "v" * 1024}
    rejects(("alephant-property-x", "v" * 1025))
    rejects(("alephant-property-x", ""))
    many = [(f"alephant-property-p{i}", "v") for i in range(MAX_PROPERTIES)]
    assert len(parse(*many).properties) == MAX_PROPERTIES
    rejects(*many, ("alephant-property-one-more", "v"))


def test_prompt_id_with_version_suffix() -> None:
    ctx = parse(("alephant-prompt-id", "summarize@3"))
    assert (ctx.prompt_id, ctx.prompt_version) == ("summarize", "3")


def test_version_header_wins_over_the_suffix() -> None:
    ctx = parse(("alephant-prompt-id", "summarize@3"), ("Alephant-Prompt-Version", "v4"))
    assert (ctx.prompt_id, ctx.prompt_version) == ("summarize", "v4")
    ctx = parse(("alephant-prompt-id", "summarize"), ("alephant-prompt-version", "2025-01-01"))
    assert (ctx.prompt_id, ctx.prompt_version) == ("summarize", "2025-01-01")


def test_prompt_errors() -> None:
    exc = rejects(("alephant-prompt-version", "3"))
    assert exc.param == "alephant-prompt-version"
    rejects(("alephant-prompt-id", "a@b@c"))
    rejects(("alephant-prompt-id", "@3"))
    rejects(("alephant-prompt-id", "ok"), ("alephant-prompt-version", "bad version"))
    assert parse_prompt("alephant-prompt-id", "summarize@", None) == ("summarize", None)


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("/plan/search", "/plan/search"),
        ("plan//search/", "/plan/search"),
        ("///plan", "/plan"),
        ("/plan/search summary/étape 2", "/plan/search summary/étape 2"),
    ],
)
def test_session_path_is_normalized(raw: str, normalized: str) -> None:
    assert normalize_path("alephant-session-path", raw) == normalized
    assert parse(("alephant-session-path", raw)).session_path == normalized


@pytest.mark.parametrize("raw", ["/", "//", "   "])
def test_a_session_path_needs_a_segment(raw: str) -> None:
    exc = rejects(("alephant-session-path", raw))
    assert exc.param == "alephant-session-path"


def test_session_path_length_is_checked_after_normalizing() -> None:
    assert parse(("alephant-session-path", "/" + "a" * 1023)).session_path == "/" + "a" * 1023
    rejects(("alephant-session-path", "/" + "a" * 1024))
    # Without its leading slash the value fits, but the normalized path (what is stored) would not.
    rejects(("alephant-session-path", "a" * 1024))


@pytest.mark.parametrize(
    "header",
    ["x-request-id", "alephant-agent-id", "alephant-run-id", "alephant-session-id", "alephant-prompt-id"],
)
def test_id_limits(header: str) -> None:
    assert parse((header, "a" * 128)) != TrackingContext()
    exc = rejects((header, "a" * 129))
    assert exc.param == header and "128" in exc.message
    rejects((header, ""))
    rejects((header, "   "))
    for bad in (
        "-leading-dash",
        "has space",
        "slash/inside",
        "quote'",
        "ü",
        "a@b" if header != "alephant-prompt-id" else "a b",
    ):
        rejects((header, bad))


def test_ids_keep_their_allowed_punctuation() -> None:
    assert parse_id("x-request-id", "A9._:-z") == "A9._:-z"


def test_an_id_may_not_end_in_a_newline() -> None:
    # `$` alone matches before a final newline; a path id reaches parse_id's rule without header decoding.
    with pytest.raises(InvalidHeader):
        parse_id("run_id", "run-1\n")


def test_session_name_limits() -> None:
    assert parse(("alephant-session-name", "n" * 256)).session_name == "n" * 256
    assert parse(("alephant-session-name", "Café ☕")).session_name == "Café ☕"
    rejects(("alephant-session-name", "n" * 257))


@pytest.mark.parametrize(
    "value", ["a\x00b", "line\nbreak", "carriage\rreturn", "tab\there", "del\x7f", "esc\x1b[31m", "nel\u0085", "c1\x9b"]
)
@pytest.mark.parametrize(
    "header", ["x-request-id", "alephant-session-name", "alephant-session-path", "alephant-property-x"]
)
def test_control_characters_are_refused(header: str, value: str) -> None:
    exc = rejects((header, value.encode()))
    assert exc.param == header and "control" in exc.message


@pytest.mark.parametrize("raw", [b"\xff\xfe", b"caf\xe9", b"\xc3\x28", b"\xed\xa0\x80"])
@pytest.mark.parametrize("header", ["alephant-session-name", "alephant-property-x", "x-request-id"])
def test_invalid_utf8_is_refused(header: str, raw: bytes) -> None:
    exc = rejects((header, raw))
    assert exc.param == header and "UTF-8" in exc.message


def test_the_last_of_repeated_headers_wins() -> None:
    ctx = parse(("alephant-run-id", "first"), ("Alephant-Run-Id", "second"))
    assert ctx.run_id == "second"
