"""The audit log's pure rules (audit/): the chain over plain lists (no store), what a change records of secrets,
the failed-authentication throttle, and an export's two formats read back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from agentledger.audit.chain import GENESIS, link, time_text
from agentledger.audit.changes import Change, diff, scrub
from agentledger.audit.checkpoints import key_id, new_key, public_pem, sign
from agentledger.audit.export import csv_rows, end, header, jsonl, key_record, read_csv, read_jsonl, verify_export
from agentledger.audit.throttle import FailureThrottle
from agentledger.audit.verify import verify_chain
from agentledger.core.model import Actor, AuditRecord

T0 = datetime(2025, 3, 1, 12, tzinfo=UTC)
WS = "ws-1"


def chain(n: int, ws: str = WS) -> list[dict[str, Any]]:
    prev, out = GENESIS, []
    for seq in range(1, n + 1):
        record = AuditRecord(
            ws,
            f"e{seq}",
            T0 + timedelta(seconds=seq),
            Actor("cli", "me@host"),
            "budget.create",
            "budget",
            f"b{seq}",
            after={"limit_usd": "1.000000000", "seq": seq, "nested": [1.5, None, {"z": 1, "a": "é"}]},
        )
        view = link(record, seq, prev)
        prev = view["hash"]
        out.append(view)
    return out


def test_time_is_hashed_as_utc_text_with_microseconds() -> None:
    assert (
        time_text(datetime(2025, 3, 1, 14, 0, 0, 5, tzinfo=UTC) + timedelta(hours=0)) == "2025-03-01T14:00:00.000005Z"
    )


def test_a_chain_verifies_and_each_kind_of_tampering_is_named() -> None:
    key = new_key()
    events = chain(6)
    cps = [sign(key, WS, 3, events[2]["hash"], "2025-03-01T12:00:04.000000Z")]
    keys = {key_id(key.public_key()): key.public_key()}
    head = (6, events[-1]["hash"])
    report = verify_chain(WS, events, cps, keys, head)
    assert report.ok and (report.events, report.checkpoints, report.unsigned) == (6, 1, 3)

    def broken(evs: list[dict[str, Any]], h: tuple[int, str] | None = head) -> tuple[int, str]:
        r = verify_chain(WS, evs, cps, keys, h)
        assert r.broken is not None
        return r.broken.seq, r.broken.problem

    altered = [dict(e) for e in events]
    altered[1]["after"] = {"limit_usd": "9"}
    assert broken(altered) == (2, "altered")
    assert broken(events[:2] + events[3:]) == (3, "missing")
    assert broken(events[:1] + [events[2], events[1]] + events[3:]) == (2, "missing")
    assert broken(events + [events[-1]]) == (6, "out_of_order")
    assert broken(events[:5]) == (6, "missing")  # the head says 6
    assert broken(events[1:]) == (1, "missing")  # the start gone, no checkpoint vouching for it
    assert broken(chain(6, "ws-other")) == (1, "foreign")
    assert broken([], (6, events[-1]["hash"])) == (4, "missing")  # the checkpoint vouches for 1 to 3 only
    assert verify_chain(WS, [], [], {}, (6, events[-1]["hash"])).broken is not None
    assert verify_chain(WS, [], [], {}, None).ok


def test_verification_starts_at_the_checkpoint_a_pruned_chain_keeps() -> None:
    key = new_key()
    events = chain(6)
    cps = [sign(key, WS, 3, events[2]["hash"], "2025-03-01T12:00:04.000000Z")]
    keys = {key_id(key.public_key()): key.public_key()}
    report = verify_chain(WS, events[3:], cps, keys, (6, events[-1]["hash"]))
    assert report.ok and report.anchor == {"kind": "checkpoint", "seq": 3, "hash": events[2]["hash"]}
    assert "pruned" in report.notes[0]
    other = chain(6, WS)  # the same content, another chain's hashes: it does not link to the checkpoint
    other[3]["prev_hash"] = "1" * 64
    r = verify_chain(WS, other[3:], cps, keys, None)
    assert r.broken is not None and (r.broken.seq, r.broken.problem) == (4, "altered")


def test_secrets_never_pass_the_scrub() -> None:
    vk = "vk-" + "A" * 43
    value = {
        "key": vk,
        "token": "adm-" + "b" * 43,
        "secret": "whsec_" + "c" * 40,
        "api_key": "sk-live-123",
        "private_key": "0x" + "d" * 64,
        "runtime": {"auth_header": {"name": "X-Key", "value_encrypted": "gAAAA"}, "auth_value": "n8n-secret"},
        "key_hash": "e" * 64,
        "note": f"made with {vk} by hand",
        "at": T0,
        "items": [{"owner_token": "adm-" + "f" * 43}],
    }
    out = scrub(value)
    text = str(out)
    for secret in ("A" * 43, "b" * 43, "c" * 40, "sk-live-123", "d" * 64, "n8n-secret", "gAAAA", "e" * 64, "f" * 43):
        assert secret not in text, secret
    assert out["key"] == vk[:10] + "…" and out["note"] == f"made with {vk[:10]}… by hand"
    assert out["at"] == "2025-03-01T12:00:00+00:00" and out["runtime"] == {"auth_header": {"name": "X-Key"}}


def test_a_change_names_a_dotted_action_and_diff_walks_objects() -> None:
    with pytest.raises(ValueError):
        Change("Budget Create", "budget", "b1")
    assert diff(None, {"a": 1}) is None
    assert diff({"a": 1, "n": {"x": 1, "y": 2}}, {"a": 1, "n": {"x": 3}, "b": None}) == [
        {"field": "b", "from": None, "to": None},
        {"field": "n.x", "from": 1, "to": 3},
        {"field": "n.y", "from": 2, "to": None},
    ]


def test_the_throttle_records_one_failure_a_minute_per_source_and_counts_the_rest() -> None:
    throttle = FailureThrottle(60.0, per_window=3, max_keys=4)
    a, b, c, d = ("1.1.1.1", "adm-x"), ("1.1.1.1", "adm-y"), ("2.2.2.2", ""), ("3.3.3.3", "")
    assert throttle.admit(a, 0.0) == 0
    assert [throttle.admit(a, t) for t in (1.0, 2.0, 59.0)] == [None, None, None]
    assert throttle.admit(b, 3.0) == 0 and throttle.admit(c, 4.0) == 0
    assert throttle.admit(d, 5.0) is None  # three this window in all: counted, not recorded
    assert throttle.admit(a, 61.0) == 3  # the next window: the failures not recorded in the last
    for n in range(10):
        throttle.admit(("9.9.9.9", f"adm-{n}"), 62.0)
    assert len(throttle._last) == 4  # the sources remembered are bounded


def test_an_export_reads_back_from_jsonl_and_csv_alike() -> None:
    key = new_key()
    events = chain(4)
    cp = sign(key, WS, 4, events[-1]["hash"], "2025-03-01T12:00:05.000000Z")
    records: list[dict[str, Any]] = [
        header(WS, "2025-03-02T00:00:00.000000Z", (4, events[-1]["hash"])),
        key_record(WS, key_id(key.public_key()), "Ed25519", public_pem(key.public_key())),
        {"type": "checkpoint", **cp},
        *({"type": "event", **e} for e in events),
        end(4),
    ]
    from_jsonl = list(read_jsonl(b"".join(jsonl(r) for r in records).splitlines()))
    from_csv = list(read_csv(csv_rows(records).decode().splitlines(keepends=True)))
    assert from_jsonl == from_csv == records
    pinned = {key_id(key.public_key()): key.public_key()}
    assert verify_export(iter(records), pinned).ok
    cut = verify_export(iter(records[:-1]), pinned)
    assert cut.broken is not None and cut.broken.problem == "missing" and "cut short" in cut.broken.detail
    carried = verify_export(iter(records))
    assert carried.ok and carried.keys == "export" and "pin the published key" in carried.notes[-1]
    forged = new_key()
    forged_pin = {key_id(forged.public_key()): forged.public_key()}
    wrong = verify_export(iter(records), forged_pin)
    assert wrong.broken is not None and wrong.broken.problem == "checkpoint_key"
