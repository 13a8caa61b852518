"""The label and id rules of JSON body fields (core.fields), shared by the step and management APIs."""

from __future__ import annotations

from typing import Any

import pytest

from agentledger.core.errors import InvalidRequest
from agentledger.core.fields import id_field, text_field
from agentledger.core.headers import is_id


def refused(call: Any, *args: Any, **kw: Any) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        call(*args, **kw)
    assert info.value.status == 400 and info.value.code == "invalid_request"
    return info.value


@pytest.mark.parametrize("bad", ["a\x00", "a\x1f", "a\x7f", "a\x80", "a\x85", "a\x9f", "\x85a", "a\x1c"])
def test_control_characters_are_refused_even_where_strip_would_drop_them(bad: str) -> None:
    for strip in (False, True):
        exc = refused(text_field, bad, "name", strip=strip)
        assert exc.param == "name" and "control characters" in exc.message


@pytest.mark.parametrize("bad", [None, 1, ["a"], "", "x" * 257])
def test_a_label_is_a_non_empty_string_within_its_limit(bad: Any) -> None:
    assert refused(text_field, bad, "model").param == "model"


def test_labels_keep_printable_text_and_strip_only_when_asked() -> None:
    assert text_field(" Ünï ✓ ", "name") == " Ünï ✓ "
    assert text_field(" Ünï ✓ ", "name", strip=True) == "Ünï ✓"
    assert text_field("p" * 64, "provider", limit=64) == "p" * 64
    refused(text_field, "p" * 65, "provider", limit=64)
    refused(text_field, "   ", "name", strip=True)
    # The limit is on what was sent (the schema's maxLength), not on what is left after trimming.
    refused(text_field, " " + "p" * 64, "provider", limit=64, strip=True)


@pytest.mark.parametrize("bad", ["", "-a", "a b", "a/b", "a\n", "é", "x" * 129, "a\x00", 5])
def test_ids_follow_the_header_id_rule(bad: Any) -> None:
    assert refused(id_field, bad, "department_id").param == "department_id"
    assert not (isinstance(bad, str) and is_id(bad))


def test_ids_at_the_bounds_are_kept() -> None:
    for good in ("a", "run:2025.01_a-b", "x" * 128):
        assert id_field(good, "id") == good and is_id(good)
