"""Verification of a workspace's chain over any iterable of event views (the store's pages or an export's lines):
each event's hash recomputed, each link to the previous event, the seqs without gaps, every checkpoint's signature
and the event it signed, and the chain's recorded head. It stops at the first broken link and names it: its seq
and what differs.

Where retention pruned the oldest events, the chain must start right after a signed checkpoint whose hash its
first kept event links to; the report says verification started there.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agentledger.audit.chain import GENESIS, event_hash
from agentledger.audit.checkpoints import signature_ok

View = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Break:
    """The first broken link: the seq where the chain stops holding, a problem code and what differs.

    Codes: `altered` (the event's content no longer matches its hash), `rewritten` (its hash is not the one the
    next event links to: rewritten with its hash recomputed), `missing` (no event at this seq: deleted),
    `out_of_order` (another seq where this one belongs), `foreign` (an event of another workspace), `unlinked` (the
    first kept event does not continue from the checkpoint verification starts at), `checkpoint_signature`,
    `checkpoint_key` (signed by a key that is not the workspace's, or not the pinned one), `checkpoint_mismatch`
    (the event at the checkpoint's seq is not the one it signed), `head_mismatch` (the chain's recorded head is
    not its last event)."""

    seq: int
    problem: str
    detail: str


@dataclass
class Report:
    workspace_id: str
    keys: str  # where the public keys came from: stored (the database), pinned (--public-key) or export (the file)
    events: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    head: dict[str, Any] | None = None
    anchor: dict[str, Any] | None = None
    checkpoints: int = 0
    last_checkpoint: dict[str, Any] | None = None
    unsigned: int = 0
    broken: Break | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.broken is None

    def as_dict(self) -> dict[str, Any]:
        return {
            "workspace_id": self.workspace_id,
            "ok": self.ok,
            "events": self.events,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "head": self.head,
            "anchor": self.anchor,
            "checkpoints": self.checkpoints,
            "last_checkpoint": self.last_checkpoint,
            "unsigned": self.unsigned,
            "keys": self.keys,
            "broken": None
            if self.broken is None
            else {"seq": self.broken.seq, "problem": self.broken.problem, "detail": self.broken.detail},
            "notes": self.notes,
        }

    def describe(self) -> str:
        """The report as the CLI prints it: a headline, then the broken link and the notes, each on its own line."""
        if self.broken is not None:
            head = f"BROKEN at seq {self.broken.seq}\n  {self.broken.problem}: {self.broken.detail}"
        elif self.events:
            head = (
                f"chain verified, {self.events} events (seq {self.first_seq}..{self.last_seq}), "
                f"{self.checkpoints} signed checkpoints ({self.keys} key)"
            )
        else:
            head = "chain verified: no events"
        return "\n".join([f"workspace {self.workspace_id}: {head}", *(f"  {note}" for note in self.notes)])


class ChainVerifier:
    """Feed the events in seq order (`feed`), then `finish` with the chain's head (seq, hash) as recorded."""

    def __init__(
        self,
        workspace_id: str,
        checkpoints: Iterable[View],
        keys: Mapping[str, Ed25519PublicKey],
        *,
        key_source: str = "stored",
    ) -> None:
        self.report = Report(workspace_id, key_source)
        self.keys = keys
        self._cps = sorted((dict(cp) for cp in checkpoints), key=lambda cp: int(cp["seq"]))
        self._next_cp = 0
        self._prev: View | None = None  # the last event checked
        self._prev_hash = GENESIS  # what the next event must link to
        self._expect: int | None = None  # the seq the next event must have
        self._last_signed: int | None = None

    # -- checks ------------------------------------------------------------------------------------------------------
    def _fail(self, seq: int, problem: str, detail: str) -> None:
        if self.report.broken is None:
            self.report.broken = Break(seq, problem, detail)

    def _checkpoint_fault(self, cp: View) -> Break | None:
        seq = int(cp["seq"])
        if cp.get("workspace_id") != self.report.workspace_id:
            return Break(seq, "foreign", f"the checkpoint at seq {seq} is of workspace {cp.get('workspace_id')!r}")
        key = self.keys.get(str(cp.get("key_id")))
        if key is None:
            which = "the pinned key" if self.report.keys == "pinned" else "a key of this workspace"
            return Break(
                seq, "checkpoint_key", f"the checkpoint at seq {seq} is signed by key {cp.get('key_id')}, not {which}"
            )
        if not signature_ok(key, cp):
            return Break(seq, "checkpoint_signature", f"the signature of the checkpoint at seq {seq} does not verify")
        return None

    def _signed(self, cp: View) -> None:
        self.report.checkpoints += 1
        self._last_signed = int(cp["seq"])
        self.report.last_checkpoint = {k: cp[k] for k in ("seq", "hash", "key_id", "signed_at")}

    def _start(self, event: View) -> None:
        """The first event: it starts the chain (seq 1 after GENESIS) or continues from a signed checkpoint."""
        seq = int(event["seq"])
        below = [cp for cp in self._cps if int(cp["seq"]) < seq]
        for cp in below:  # checkpoints before the kept events: only their signatures can be checked
            fault = self._checkpoint_fault(cp)
            if fault is not None:
                self._fail(fault.seq, fault.problem, fault.detail)
                return
        self._next_cp = len(below)
        if seq == 1:
            self.report.anchor = {"kind": "genesis", "seq": 0, "hash": GENESIS}
            self._prev_hash = GENESIS
        elif below and int(below[-1]["seq"]) == seq - 1:
            cp = below[-1]
            self._signed(cp)
            self.report.anchor = {"kind": "checkpoint", "seq": seq - 1, "hash": cp["hash"]}
            self._prev_hash = str(cp["hash"])
            self.report.notes.append(
                f"events through seq {seq - 1} are not kept (pruned): verified from the signed checkpoint at seq "
                f"{seq - 1}"
            )
        else:
            gone = int(below[-1]["seq"]) + 1 if below else 1
            self._fail(
                gone,
                "missing",
                f"the chain starts at seq {seq}, and no signed checkpoint at seq {seq - 1} vouches for its start: "
                f"events from seq {gone} were deleted",
            )
            return
        self._expect = seq

    def feed(self, event: View) -> None:
        if self.report.broken is not None:
            return
        if self._expect is None:
            self._start(event)
            if self.report.broken is not None:
                return
        assert self._expect is not None
        seq = int(event["seq"])
        if seq != self._expect:
            if seq > self._expect:
                self._fail(self._expect, "missing", f"no event at seq {self._expect} (the next is seq {seq}): deleted")
            else:
                self._fail(seq, "out_of_order", f"an event with seq {seq} where seq {self._expect} belongs")
            return
        if event.get("workspace_id") != self.report.workspace_id:
            self._fail(seq, "foreign", f"the event at seq {seq} is of workspace {event.get('workspace_id')!r}")
            return
        try:
            recomputed = event_hash(event)
        except (KeyError, TypeError) as exc:
            self._fail(seq, "altered", f"the event at seq {seq} is malformed: {exc}")
            return
        if recomputed != event.get("hash"):
            self._fail(
                seq,
                "altered",
                f"the content of the event at seq {seq} no longer matches its hash "
                f"(stored {event.get('hash')}, recomputed {recomputed})",
            )
            return
        if event.get("prev_hash") != self._prev_hash:
            if self._prev is None:
                self._fail(
                    seq,
                    "unlinked",
                    f"the event at seq {seq} links to {event.get('prev_hash')}, not to the "
                    f"signed checkpoint's hash {self._prev_hash}",
                )
            else:
                self._fail(
                    seq - 1,
                    "rewritten",
                    f"the event at seq {seq - 1} hashes to {self._prev_hash}, but the "
                    f"event at seq {seq} links to {event.get('prev_hash')}: seq {seq - 1} was rewritten",
                )
            return
        self._check_checkpoints_at(seq, str(event["hash"]))
        if self.report.broken is not None:
            return
        self._prev = event
        self._prev_hash = str(event["hash"])
        self._expect = seq + 1
        r = self.report
        r.events += 1
        r.first_seq = seq if r.first_seq is None else r.first_seq
        r.last_seq = seq

    def _check_checkpoints_at(self, seq: int, h: str) -> None:
        while self._next_cp < len(self._cps) and int(self._cps[self._next_cp]["seq"]) <= seq:
            cp = self._cps[self._next_cp]
            self._next_cp += 1
            fault = self._checkpoint_fault(cp)
            if fault is not None:
                self._fail(fault.seq, fault.problem, fault.detail)
                return
            if cp["hash"] != h:
                since = self._last_signed if self._last_signed is not None else 0
                self._fail(
                    seq,
                    "checkpoint_mismatch",
                    f"the event at seq {seq} hashes to {h}, not to the {cp['hash']} "
                    f"its checkpoint signed: events after seq {since} through {seq} were rewritten",
                )
                return
            self._signed(cp)

    def finish(self, head: tuple[int, str] | None) -> Report:
        r = self.report
        r.head = None if head is None else {"seq": head[0], "hash": head[1]}
        if r.broken is None and self._expect is None:  # no events at all
            self._finish_empty(head)
        if r.broken is None:
            last = r.last_seq if r.last_seq is not None else (r.anchor or {}).get("seq", 0)
            left = self._cps[self._next_cp :]
            if left:
                self._fail(
                    last + 1, "missing", f"events after seq {last} are gone: a checkpoint signed seq {left[-1]['seq']}"
                )
            elif head is not None and head[0] > last:
                self._fail(last + 1, "missing", f"events after seq {last} are gone: the chain's head is seq {head[0]}")
            elif head is not None and head[0] < last:
                self._fail(
                    head[0] + 1,
                    "head_mismatch",
                    f"the chain's recorded head is seq {head[0]}, but events go on to seq {last}",
                )
            elif head is not None and last and head[1] != self._prev_hash:
                self._fail(
                    last,
                    "head_mismatch",
                    f"the chain's recorded head at seq {last} is {head[1]}, but the "
                    f"event there hashes to {self._prev_hash}",
                )
        if r.broken is None:
            if self._last_signed is None:
                r.notes.append("no signed checkpoint yet: the chain is consistent, but nothing signed vouches for it")
            signed = self._last_signed or 0
            r.unsigned = max((r.last_seq or 0) - signed, 0)
            if r.unsigned and self._last_signed is not None:
                r.notes.append(
                    f"{r.unsigned} events after the last checkpoint (seq {signed}) are chained, not signed yet"
                )
        return r

    def _finish_empty(self, head: tuple[int, str] | None) -> None:
        for cp in self._cps:
            fault = self._checkpoint_fault(cp)
            if fault is not None:
                self._fail(fault.seq, fault.problem, fault.detail)
                return
        self._next_cp = len(self._cps)
        if self._cps:
            cp = self._cps[-1]
            self._signed(cp)
            self.report.anchor = {"kind": "checkpoint", "seq": int(cp["seq"]), "hash": cp["hash"]}
            self._prev_hash = str(cp["hash"])
            self.report.notes.append(
                f"every event through seq {cp['seq']} is pruned: the chain continues from its signed checkpoint"
            )
        else:
            self.report.anchor = {"kind": "genesis", "seq": 0, "hash": GENESIS}
            self._prev_hash = GENESIS
            if head is not None and head[0] > 0:
                self._fail(1, "missing", f"no events, but the chain's head is seq {head[0]}: deleted")


def verify_chain(
    workspace_id: str,
    events: Iterable[View],
    checkpoints: Iterable[View],
    keys: Mapping[str, Ed25519PublicKey],
    head: tuple[int, str] | None,
    *,
    key_source: str = "stored",
) -> Report:
    verifier = ChainVerifier(workspace_id, checkpoints, keys, key_source=key_source)
    for event in events:
        verifier.feed(event)
        if verifier.report.broken is not None:
            break
    return verifier.finish(head)
