"""The export's two formats and their reading back, for the offline verifier (`agentledger audit verify --file`).

JSONL, one JSON object a line, each with its `type`:

1. `audit_export`: the workspace, when, and the chain's head (`{"seq", "hash"}`) when the export began; the export
   holds every kept event up to it.
2. `public_key`: each signing key of the workspace (`key_id`, `algorithm`, `public_key` in PEM).
3. `checkpoint`: each kept signed checkpoint up to the head (seq, hash, key_id, signed_at, signature).
4. `event`: each kept event, in seq order, as GET /api/audit-logs shows it (seq, prev_hash and hash included).
5. `end`: how many events were written. An export without it was cut short.

Keys and checkpoints come before the events so a verifier reads a file of any length in one pass with bounded
memory. CSV holds the same records, one a row, the kind in the `record` column; `before` and `after` are JSON text.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agentledger.audit.chain import canonical
from agentledger.audit.checkpoints import load_public
from agentledger.audit.verify import Break, ChainVerifier, Report

VERSION = 1
COLUMNS = (
    "record",
    "workspace_id",
    "seq",
    "id",
    "time",
    "actor_type",
    "actor_id",
    "actor_role",
    "action",
    "target_type",
    "target_id",
    "before",
    "after",
    "client_ip",
    "request_id",
    "run_id",
    "step_id",
    "prev_hash",
    "hash",
    "key_id",
    "signed_at",
    "signature",
    "algorithm",
    "public_key",
    "exported_at",
    "version",
    "events",
)
_OPTIONAL = ("actor_role", "client_ip", "request_id", "run_id", "step_id")


# -- records -------------------------------------------------------------------------------------------------------
def header(workspace_id: str, exported_at: str, head: tuple[int, str] | None) -> dict[str, Any]:
    return {
        "type": "audit_export",
        "version": VERSION,
        "workspace_id": workspace_id,
        "exported_at": exported_at,
        "head": None if head is None else {"seq": head[0], "hash": head[1]},
    }


def key_record(workspace_id: str, key_id: str, algorithm: str, pem: str) -> dict[str, Any]:
    return {
        "type": "public_key",
        "workspace_id": workspace_id,
        "key_id": key_id,
        "algorithm": algorithm,
        "public_key": pem,
    }


def end(events: int) -> dict[str, Any]:
    return {"type": "end", "events": events}


# -- JSONL ---------------------------------------------------------------------------------------------------------
def jsonl(record: Mapping[str, Any]) -> bytes:
    return orjson.dumps(record) + b"\n"


def read_jsonl(lines: Iterable[str | bytes]) -> Iterator[dict[str, Any]]:
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"line {n} is not JSON: {exc}") from None
        if not isinstance(record, dict) or not isinstance(record.get("type"), str):
            raise ValueError(f"line {n} is not an export record (an object with a 'type')")
        yield record


# -- CSV -----------------------------------------------------------------------------------------------------------
def _csv_cells(record: Mapping[str, Any]) -> list[str]:
    kind = record["type"]
    cells: dict[str, Any] = {"record": kind}
    if kind == "event":
        cells.update(record)
        cells.update(
            actor_type=record["actor"]["type"],
            actor_id=record["actor"]["id"],
            actor_role=record["actor"]["role"],
            target_type=record["target"]["type"],
            target_id=record["target"]["id"],
            before=canonical(record["before"]).decode(),
            after=canonical(record["after"]).decode(),
        )
    elif kind == "audit_export":
        head = record["head"] or {}
        cells.update(record, seq=head.get("seq"), hash=head.get("hash"))
    else:
        cells.update(record)
    return ["" if cells.get(c) is None else str(cells[c]) for c in COLUMNS]


def csv_rows(records: Iterable[Mapping[str, Any]], *, with_header: bool = True) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    if with_header:
        writer.writerow(COLUMNS)
    for record in records:
        writer.writerow(_csv_cells(record))
    return out.getvalue().encode()


def read_csv(lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    reader = csv.DictReader(lines)
    if reader.fieldnames is None or list(reader.fieldnames) != list(COLUMNS):
        raise ValueError("not an agentledger audit export (its CSV columns differ)")
    for row in reader:
        yield _from_csv(row)


def _from_csv(row: Mapping[str, str]) -> dict[str, Any]:
    kind = row["record"]

    def num(name: str) -> int | None:
        return int(row[name]) if row[name] else None

    if kind == "event":
        return {
            "type": "event",
            "workspace_id": row["workspace_id"],
            "seq": num("seq"),
            "id": row["id"],
            "time": row["time"],
            "actor": {"type": row["actor_type"], "id": row["actor_id"], "role": row["actor_role"] or None},
            "action": row["action"],
            "target": {"type": row["target_type"], "id": row["target_id"]},
            "before": orjson.loads(row["before"]),
            "after": orjson.loads(row["after"]),
            **{k: row[k] or None for k in _OPTIONAL if k != "actor_role"},
            "prev_hash": row["prev_hash"],
            "hash": row["hash"],
        }
    if kind == "audit_export":
        seq = num("seq")
        return {
            "type": kind,
            "version": num("version"),
            "workspace_id": row["workspace_id"],
            "exported_at": row["exported_at"],
            "head": None if seq is None else {"seq": seq, "hash": row["hash"]},
        }
    if kind == "checkpoint":
        return {
            "type": kind,
            **{k: row[k] for k in ("workspace_id", "hash", "key_id", "signed_at", "signature")},
            "seq": num("seq"),
        }
    if kind == "public_key":
        return {"type": kind, **{k: row[k] for k in ("workspace_id", "key_id", "algorithm", "public_key")}}
    if kind == "end":
        return {"type": kind, "events": num("events")}
    raise ValueError(f"unknown record {kind!r}")


# -- verifying an export -------------------------------------------------------------------------------------------
def verify_export(records: Iterable[Mapping[str, Any]], pinned: Mapping[str, Ed25519PublicKey] | None = None) -> Report:
    """Verify an export in one pass. `pinned`: the public keys to trust (`--public-key`); without them the keys the
    export carries are used, which proves the chain consistent with itself but not who signed it."""
    it = iter(records)
    first = next(it, None)
    if first is None or first.get("type") != "audit_export":
        raise ValueError("not an agentledger audit export: it does not start with its audit_export record")
    if first.get("version") != VERSION:
        raise ValueError(f"export version {first.get('version')!r} is not supported (this verifier reads {VERSION})")
    workspace_id = str(first["workspace_id"])
    head = first.get("head")
    carried: dict[str, Ed25519PublicKey] = {}
    checkpoints: list[Mapping[str, Any]] = []
    verifier: ChainVerifier | None = None
    ended: Mapping[str, Any] | None = None

    def start() -> ChainVerifier:
        keys = dict(pinned) if pinned is not None else carried
        return ChainVerifier(workspace_id, checkpoints, keys, key_source="pinned" if pinned is not None else "export")

    for record in it:
        kind = record.get("type")
        if ended is not None:
            raise ValueError("records after the end record")
        if kind == "public_key":
            if verifier is not None:
                raise ValueError("a public_key record after the events")
            key = load_public(str(record["public_key"]))
            carried[str(record["key_id"])] = key
        elif kind == "checkpoint":
            if verifier is not None:
                raise ValueError("a checkpoint record after the events")
            checkpoints.append(record)
        elif kind == "event":
            verifier = verifier or start()
            verifier.feed(record)
        elif kind == "end":
            ended = record
        else:
            raise ValueError(f"unknown record type {kind!r}")
    verifier = verifier or start()
    report = verifier.finish(None if head is None else (int(head["seq"]), str(head["hash"])))
    if ended is None and report.broken is None:
        last = report.last_seq or 0
        report.broken = Break(
            last + 1, "missing", f"the export ends after seq {last} without its end record: cut short"
        )
    if pinned is None:
        report.notes.append("verified with the keys the export carries: pin the published key (--public-key)")
    return report
