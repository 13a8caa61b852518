"""Run marks (pure): what a trace row says about its run that the runs list filters by (GET /api/runs
`decision=` and `property.<name>=`), as the fixed-size keys of the kept table `run_marks` (store.schema).

A run has a mark when at least one of its rows gives it. The store writes the marks of the rows a batch inserted
(store.marks) and recomputes them from every row for `rollups verify` and `rebuild`, both through `row_labels`, so
the two cannot disagree on what a row says.

* **A decision** (core.budgets.Decision) is read off a policy_check step: `attributes["decision"]`, the governance
  report (gateway/budgets.py `report`). Every governed gateway call in a run has one, one per try of its
  x-request-id, with the report its request row keeps as `governance`; a refused spend authorization or tool
  pre-check is only that step. Not off the request row: a failed request is replaced by its retry, and a mark read
  off the old row would outlive the row that gave it, while steps are never replaced. An escalation a human
  approved is reported `allowed` with the approval on the policy's record (`policy.approval`, gateway/policies.py
  `escalate`): it gives its run `escalated` as well, since the call was escalated whatever came of it. A call
  nothing governed (no budget, rate limit or policy) reports no decision and gives none; a monitor-mode policy's
  `would` is not a decision.
* **A property** is one `alephant-property-<name>` value a request or a step carried (`properties`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from agentledger.core.books import dims_key
from agentledger.core.budgets import Decision

DECISIONS = tuple(d.value for d in Decision)
_DECISIONS = frozenset(DECISIONS)
_POLICY_CHECK = "policy_check"

# What a mark stands for: ("decision", word) or ("property", name, value). Its key in run_marks is `mark_of(label)`:
# values may be 1024 characters, so the key is their hash, as the rollups key long labels; the first element keeps
# a property named `decision` apart from a decision.
Label = tuple[str, ...]
_LABELS = {d: ("decision", d) for d in DECISIONS}
_ESCALATED = _LABELS[Decision.ESCALATED.value]


def decision_label(decision: str) -> Label:
    return _LABELS[decision]


def property_label(name: str, value: str) -> Label:
    return ("property", name, value)


def mark_of(label: Label) -> str:
    """The fixed-size key of `run_marks` for a label."""
    return dims_key(label)


def describe(label: Label) -> str:
    """`decision=blocked`, `property.customer=acme`: the label as the API's query parameter spells it."""
    if label[0] == "decision":
        return f"decision={label[1]}"
    return f"property.{label[1]}={label[2]}"


def row_labels(row: Mapping[str, Any], is_request: bool) -> Iterator[Label]:
    """The label of each mark a request row (`is_request`) or a step row gives its run (maybe one twice: callers
    keep sets, and hash each label they keep once)."""
    if not is_request and row["kind"] == _POLICY_CHECK:
        report = row["attributes"]
        if isinstance(report, Mapping):
            decision = report.get("decision")
            if decision in _DECISIONS:
                yield _LABELS[decision]
            if decision != Decision.ESCALATED.value:
                policy = report.get("policy")
                if isinstance(policy, Mapping) and isinstance(policy.get("approval"), Mapping):
                    yield _ESCALATED
    properties = row["properties"]
    if properties:
        for name, value in properties.items():
            if isinstance(value, str):
                yield ("property", name, value)


def property_labels(row: Mapping[str, Any]) -> set[Label]:
    """The property marks a row gives (a request row gives no other)."""
    return {("property", name, value) for name, value in (row["properties"] or {}).items() if isinstance(value, str)}
