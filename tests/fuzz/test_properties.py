"""Property tests: tracking-header parsing (pure) and the step ingest API against a live server.

Headers: whatever bytes arrive, `parse_tracking` answers a TrackingContext or raises InvalidHeader, nothing
else; and every well-formed value comes back as sent (names in any case, paths normalized).
Steps: every batch of valid steps the API accepts reads back through GET /api/runs/{id} with equal fields,
on SQLite and PostgreSQL.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from agentledger.core import headers as h
from agentledger.core.errors import InvalidHeader
from agentledger.core.finance import payment_cost, payment_values, payment_view
from agentledger.core.model import Payment, PaymentDirection, PaymentProtocol, PaymentStatus, StepKind
from agentledger.core.money import to_nanos
from agentledger.core.rollup import TOKEN_FIELDS
from tests.harness import Harness

pytestmark = pytest.mark.fuzz

# Printable text as the API defines it: no C0/DEL/C1 controls (category Cc), no lone surrogates (not UTF-8).
TEXT = st.characters(blacklist_categories=("Cc", "Cs"))
ID = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._:\-]{0,40}\Z")
SEGMENT = st.text(
    st.characters(blacklist_categories=("Cc", "Cs", "Zs", "Zl", "Zp"), blacklist_characters="/"),
    min_size=1,
    max_size=12,
)


def names(text: str) -> st.SearchStrategy[str]:
    """`text` with each letter's case chosen freely: header names are case-insensitive."""
    return st.tuples(*[st.sampled_from([c.lower(), c.upper()]) for c in text]).map("".join)


# -- tracking headers --------------------------------------------------------------------------------------
KNOWN = [
    h.REQUEST_ID,
    h.AGENT_ID,
    h.RUN_ID,
    h.SESSION_ID,
    h.SESSION_PATH,
    h.SESSION_NAME,
    h.PROMPT_ID,
    h.PROMPT_VERSION,
]
ANY_NAME = st.one_of(
    st.sampled_from(KNOWN),
    st.binary(max_size=40).map(lambda b: h.PROPERTY_PREFIX + b.decode("latin-1")),
    st.binary(max_size=30).map(lambda b: b.decode("latin-1")),
)
ANY_VALUE = st.one_of(st.binary(max_size=300), st.text(max_size=300).map(lambda t: t.encode("utf-8", "surrogatepass")))


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(ANY_NAME.map(lambda n: n.encode("latin-1")), ANY_VALUE), max_size=40))
def test_parse_tracking_raises_only_invalid_header(raw: list[tuple[bytes, bytes]]) -> None:
    try:
        ctx = h.parse_tracking(raw)
    except InvalidHeader as exc:
        assert exc.status == 400 and exc.code == "invalid_header"
        assert exc.param is not None and exc.param == exc.param.lower()
        return
    assert isinstance(ctx, h.TrackingContext)
    assert len(ctx.properties) <= h.MAX_PROPERTIES


@st.composite
def tracking(draw: st.DrawFn) -> tuple[list[tuple[bytes, bytes]], dict[str, Any]]:
    """Well-formed headers (random name case) and the context they must parse to."""
    ids = {key: draw(st.none() | ID) for key in (h.REQUEST_ID, h.AGENT_ID, h.RUN_ID, h.SESSION_ID)}
    segments = draw(st.none() | st.lists(SEGMENT, min_size=1, max_size=6))
    raw_path = None if segments is None else "/" + "//".join(segments) + draw(st.sampled_from(["", "/"]))
    session_name = draw(st.none() | st.text(TEXT, min_size=1, max_size=h.MAX_NAME_LEN).map(str.strip).filter(bool))
    prompt = draw(st.none() | st.tuples(ID, st.none() | ID))
    props = draw(
        st.dictionaries(
            st.from_regex(r"\A[a-z0-9][a-z0-9_.\-]{0,20}\Z"),
            st.text(TEXT, max_size=50).map(str.strip).filter(bool),
            max_size=h.MAX_PROPERTIES,
        )
    )
    sent: dict[str, str] = {k: v for k, v in ids.items() if v is not None}
    if raw_path is not None:
        sent[h.SESSION_PATH] = raw_path
    if session_name is not None:
        sent[h.SESSION_NAME] = session_name
    if prompt is not None:
        sent[h.PROMPT_ID] = prompt[0] if prompt[1] is None else f"{prompt[0]}@{prompt[1]}"
    sent.update({h.PROPERTY_PREFIX + k: v for k, v in props.items()})
    raw = [(draw(names(k)).encode("latin-1"), v.encode()) for k, v in sent.items()]
    expected = {
        "request_id": ids[h.REQUEST_ID],
        "agent_id": ids[h.AGENT_ID],
        "run_id": ids[h.RUN_ID],
        "session_id": ids[h.SESSION_ID],
        "session_path": None if segments is None else "/" + "/".join(segments),
        "session_name": session_name,
        "prompt_id": None if prompt is None else prompt[0],
        "prompt_version": None if prompt is None else prompt[1],
        "properties": props,
    }
    return draw(st.permutations(raw)), expected


@settings(max_examples=300, deadline=None)
@given(tracking())
def test_well_formed_tracking_headers_round_trip(case: tuple[list[tuple[bytes, bytes]], dict[str, Any]]) -> None:
    raw, expected = case
    ctx = h.parse_tracking(raw)
    assert {k: getattr(ctx, k) for k in expected} == expected


# -- step ingest -------------------------------------------------------------------------------------------
# Stored JSON (input, output, attributes) is any JSON: its strings may hold controls and NUL, unlike names.
ANY_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | ANY_TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(ANY_TEXT, inner, max_size=4),
    max_leaves=12,
)
NAME = st.text(TEXT, min_size=1, max_size=256)
OFFSETS = st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8))])
WHEN = st.datetimes(datetime(1970, 1, 2), datetime(9999, 12, 30), timezones=OFFSETS)


# A payment step's payment (amount and fee together within the event bound).
PAYMENT = st.fixed_dictionaries(
    {
        "direction": st.sampled_from([d.value for d in PaymentDirection]),
        "status": st.sampled_from([v.value for v in PaymentStatus]),
        "amount_usd": st.decimals(0, 500_000, places=9).map(str),
    },
    optional={
        "fee_usd": st.decimals(0, 500_000, places=9).map(str),
        "protocol": st.sampled_from([v.value for v in PaymentProtocol]),
        "asset_amount": st.from_regex(r"\A[0-9]{1,78}\Z"),
        "network": st.text(TEXT, min_size=1, max_size=64),
        "asset": st.text(TEXT, min_size=1, max_size=256),
        "counterparty": st.text(TEXT, min_size=1, max_size=256),
        "reference": st.text(TEXT, min_size=1, max_size=256),
        "endpoint_id": ID,
    },
)


def payment_of(sent: dict[str, Any]) -> Payment:
    return Payment(
        direction=PaymentDirection(sent["direction"]),
        status=PaymentStatus(sent["status"]),
        amount_nanos=to_nanos(Decimal(sent["amount_usd"])),
        protocol=PaymentProtocol(sent.get("protocol", "manual")),
        fee_nanos=to_nanos(Decimal(sent.get("fee_usd", "0"))),
        **{k: sent.get(k) for k in ("asset_amount", "network", "asset", "counterparty", "reference", "endpoint_id")},
    )


@st.composite
def step(draw: st.DrawFn, step_id: str, parents: list[str]) -> dict[str, Any]:
    s: dict[str, Any] = {"id": step_id, "name": draw(NAME)}
    if parents and draw(st.booleans()):
        s["parent_id"] = draw(st.sampled_from(parents))
    optional: dict[str, st.SearchStrategy[Any]] = {
        "kind": st.sampled_from([k.value for k in StepKind]),
        "status": st.sampled_from(["ok", "error"]),
        "error": st.text(TEXT, min_size=1, max_size=300),
        "branch": NAME,
        "attempt": st.integers(1, 1000),
        "model": NAME,
        "provider": st.text(TEXT, min_size=1, max_size=64),
        "usage": st.fixed_dictionaries({}, optional={f: st.integers(0, 10**9) for f in TOKEN_FIELDS}),
        "cost_usd": st.decimals(0, 10**6, places=9).map(str),
        "session_path": st.lists(SEGMENT, min_size=1, max_size=4).map(lambda s: "/" + "/".join(s)),
        "input": JSON,
        "output": JSON,
        "attributes": st.dictionaries(ANY_TEXT, JSON, max_size=4),
        "latency_ms": st.floats(0, 31_536_000_000),
    }
    for key, strategy in optional.items():
        if draw(st.booleans()):
            s[key] = draw(strategy)
    if s.get("kind") == "payment":  # its cost is its payment's: no cost_usd
        s.pop("cost_usd", None)
        s["payment"] = draw(PAYMENT)
    if draw(st.booleans()):
        started = draw(WHEN)
        s["started_at"] = started.isoformat()
        if draw(st.booleans()):
            s["ended_at"] = (started + draw(st.timedeltas(timedelta(0), timedelta(days=3)))).isoformat()
    return s


@st.composite
def batches(draw: st.DrawFn) -> list[dict[str, Any]]:
    # Step ids are unique per workspace and a resent id is ignored, so every example gets fresh ones.
    prefix = uuid.uuid4().hex[:8]
    ids = [f"s{prefix}-{i}" for i in range(draw(st.integers(1, 6)))]
    return [draw(step(sid, ids[:i])) for i, sid in enumerate(ids)]


def flatten(nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [n for node in nodes for n in (node, *flatten(node["children"]))]


def expected_fields(sent: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": sent["id"],
        "parent_id": sent.get("parent_id"),
        "name": sent["name"],
        "kind": sent.get("kind", "tool_call"),
        "status": sent.get("status", "ok"),
        "attempt": sent.get("attempt", 1),
        "attributes": sent.get("attributes", {}),
        **{k: sent.get(k) for k in ("error", "branch", "model", "provider", "session_path", "input", "output")},
    }
    if "usage" in sent:
        out.update({f: sent["usage"].get(f, 0) for f in TOKEN_FIELDS})
    if "cost_usd" in sent:
        out["cost_nanos"] = to_nanos(Decimal(sent["cost_usd"]))
    if "latency_ms" in sent:
        out["latency_ms"] = sent["latency_ms"]
    if "payment" in sent:
        paid = payment_of(sent["payment"])
        out["payment"] = payment_view(payment_values(paid))
        out["cost_nanos"] = payment_cost(paid)
    return out


def read_fields(node: dict[str, Any], sent: dict[str, Any]) -> dict[str, Any]:
    return {k: node[k] for k in expected_fields(sent)}


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(batch=batches())
def test_every_accepted_step_reads_back_equal(gw: Harness, batch: list[dict[str, Any]]) -> None:
    run_id = f"run-{uuid.uuid4().hex[:12]}"
    resp = gw.v1("POST", f"/v1/runs/{run_id}/steps", json={"steps": batch})
    assert resp.status_code == 201, resp.text
    assert resp.json() == {"run_id": run_id, "step_ids": [s["id"] for s in batch]}
    run = gw.get(f"/api/runs/{run_id}")
    stored = {n["id"]: n for n in flatten(run["steps"])}
    assert sorted(stored) == sorted(s["id"] for s in batch)
    for sent in batch:
        node = stored[sent["id"]]
        assert read_fields(node, sent) == expected_fields(sent)
        if "started_at" in sent:
            assert datetime.fromisoformat(node["started_at"]) == datetime.fromisoformat(sent["started_at"])
        if "ended_at" in sent:
            assert datetime.fromisoformat(node["ended_at"]) == datetime.fromisoformat(sent["ended_at"])
