"""Run controls through a real gateway (SQLite and PostgreSQL): a cancelled run's calls are refused 403
run_cancelled in each route's format and recorded, its open streams end at once with their format's error event,
a paused run's calls wait for its resume (or get 423 after `run_pause_wait_s`), and the run shows its control.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from agentledger.testing import ServerThread
from tests.harness import Harness, running_gateway

PAUSE_WAIT = 1.0
HELLO = {"model": "gpt-4o-mini", "max_tokens": 20, "messages": [{"role": "user", "content": "hello there world"}]}
# The fake upstream sends one event every 0.2 s: 16 of them for this chat stream, about 3 s in all.
SLOW = {**HELLO, "stream": True, "messages": [{"role": "user", "content": "FAIL:slow one two three four five"}]}


@pytest.fixture
def gw(db_url: str, tmp_path: Path, upstream: ServerThread) -> Iterator[Harness]:
    fake = upstream.config.app.state.fake
    fake.received.clear()
    fake.script.clear()
    with running_gateway(db_url, tmp_path, upstream, run_pause_wait_s=PAUSE_WAIT) as harness:
        yield harness


def call(gw: Harness, run_id: str, path: str = "/v1/chat/completions", **headers: str) -> httpx.Response:
    return gw.v1("POST", path, json=HELLO, headers={"alephant-run-id": run_id, **headers})


def control(gw: Harness, run_id: str, action: str, **body: Any) -> httpx.Response:
    return gw.api("POST", f"/api/runs/{run_id}/{action}", json=body or None)


def answered(resp: httpx.Response, state: str, reason: str | None) -> dict[str, Any]:
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert set(body) == {"run_id", "state", "reason", "by", "at"}, body
    assert (body["state"], body["reason"]) == (state, reason), body
    assert body["by"].startswith("tok_"), body  # the admin token's id
    return dict(body)


def row(gw: Harness, resp: httpx.Response) -> dict[str, Any]:
    return dict(gw.get(f"/api/requests/{resp.headers['x-request-id']}"))


def test_a_cancelled_runs_calls_are_refused_in_each_format_and_recorded(gw: Harness) -> None:
    assert call(gw, "run-c").status_code == 200  # the run exists once a call named it
    done = answered(control(gw, "run-c", "cancel", reason="runaway loop"), "cancelled", "runaway loop")
    message = f"Run 'run-c' is cancelled by {done['by']} (runaway loop): no further calls are allowed in it."

    chat = call(gw, "run-c")
    assert chat.status_code == 403, chat.text
    assert chat.json() == {
        "error": {"message": message, "type": "permission_error", "code": "run_cancelled", "param": None}
    }
    assert chat.headers["alephant-policy-decision"] == "blocked"
    msg = call(gw, "run-c", "/v1/messages")
    assert msg.status_code == 403, msg.text
    assert msg.json() == {"type": "error", "error": {"type": "permission_error", "message": message}}
    assert len(gw.fake.received) == 1, "no call of the cancelled run reached the provider"
    assert call(gw, "run-other").status_code == 200, "other runs go on"

    decided = {
        "kind": "run_control",
        "run_id": "run-c",
        "state": "cancelled",
        "reason": "runaway loop",
        "by": done["by"],
    }
    for refused, endpoint in ((chat, "/chat/completions"), (msg, "/messages")):
        r = row(gw, refused)
        assert (r["status"], r["http_status"], r["error_code"], r["endpoint"]) == (
            "error",
            403,
            "run_cancelled",
            endpoint,
        )
        assert (r["policy_decision"], r["cost_nanos"]) == ("blocked", 0)
        assert r["governance"]["decided_by"] == decided

    run = gw.get("/api/runs/run-c")
    assert run["status"] == "cancelled" and run["ended_at"] is not None
    assert run["error"] == f"cancelled by {done['by']}: runaway loop"
    assert run["control"] == {k: done[k] for k in ("state", "reason", "by", "at")}
    checks = [s for s in run["steps"] if s["kind"] == "policy_check"]
    assert [(s["status"], s["attributes"]["decided_by"]) for s in checks] == [("error", decided)] * 2
    assert [s["status"] for s in run["steps"] if s["kind"] == "model_call"] == ["ok"]

    # A cancelled run stays cancelled; cancelling again keeps the first cancel.
    for action in ("pause", "resume"):
        resp = control(gw, "run-c", action)
        assert resp.status_code == 409, resp.text
        assert resp.json()["error"]["code"] == "conflict"
        assert resp.json()["error"]["message"] == "Run 'run-c' is cancelled: it cannot be paused or resumed."
    assert answered(control(gw, "run-c", "cancel", reason="again"), "cancelled", "runaway loop")["at"] == done["at"]
    assert gw.get("/api/runs/run-c")["status"] == "cancelled"

    # Only runs that exist, by ids that are ids, and with a reason that is text.
    for run_id in ("run-never-seen", "no%20such"):
        missing = control(gw, run_id, "cancel")
        assert missing.status_code == 404, missing.text
        assert (missing.json()["error"]["code"], missing.json()["error"]["param"]) == ("not_found", "run_id")
    bad = control(gw, "run-other", "pause", reason=7)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "reason", bad.text
    junk = gw.api("POST", "/api/runs/run-other/pause", content=b"[1]")
    assert junk.status_code == 400, junk.text
    assert gw.get("/api/runs/run-other")["control"] is None


def test_cancel_ends_open_streams_at_once_and_records_them(gw: Harness) -> None:
    """A chat stream and a Messages stream of one run; the cancel ends both, each with its format's error event,
    though the provider had seconds of events still to send."""
    assert call(gw, "run-s").status_code == 200
    seen: dict[str, list[str]] = {}
    ended: dict[str, float] = {}
    started = threading.Barrier(3)

    def stream(name: str, path: str) -> None:
        headers = {"authorization": f"Bearer {gw.vk}", "alephant-run-id": "run-s", "x-request-id": f"req-{name}"}
        with httpx.Client(timeout=10) as client, client.stream("POST", gw.url + path, json=SLOW, headers=headers) as r:
            assert r.status_code == 200
            lines = seen[name] = []
            for line in r.iter_lines():
                lines.append(line)
                if line.startswith("data:") and sum(x.startswith("data:") for x in lines) == 2:
                    started.wait()
        ended[name] = time.monotonic()

    threads = [
        threading.Thread(target=stream, args=a) for a in (("chat", "/v1/chat/completions"), ("msg", "/v1/messages"))
    ]
    for t in threads:
        t.start()
    started.wait(timeout=5)
    t0 = time.monotonic()
    by = answered(control(gw, "run-s", "cancel"), "cancelled", None)["by"]
    for t in threads:
        t.join(timeout=5)
    assert set(ended) == {"chat", "msg"}, seen
    took = max(ended.values()) - t0
    assert took < 1.0, f"the streams ended {took:.2f} s after the cancel: the provider was read on"

    error = "Run 'run-s' was cancelled: the stream is ended."
    openai_error = {"error": {"message": error, "type": "permission_error", "code": "run_cancelled", "param": None}}
    anthropic_error = {"type": "error", "error": {"type": "permission_error", "message": error}}
    chat = [x for x in seen["chat"] if x]
    assert chat[-1] == "data: " + orjson.dumps(openai_error).decode(), chat
    assert "data: [DONE]" not in chat and len(chat) < 10, chat
    msg = [x for x in seen["msg"] if x]
    assert msg[-2:] == ["event: error", "data: " + orjson.dumps(anthropic_error).decode()], msg
    assert "event: message_stop" not in msg

    for name in ("chat", "msg"):
        r = dict(gw.get(f"/api/requests/req-{name}"))
        assert (r["status"], r["http_status"], r["error_code"]) == ("error", 403, "run_cancelled"), r
        assert r["cost_nanos"] > 0 and r["cost_source"] == "estimated", r  # what was sent, estimated
        assert r["output_tokens"] < 10, r
    run = gw.get("/api/runs/run-s")
    assert run["status"] == "cancelled" and run["control"]["by"] == by
    streamed = [s for s in run["steps"] if s["kind"] == "model_call" and s["request_id"].startswith("req-")]
    assert sorted(s["status"] for s in streamed) == ["error", "error"]
    assert run["totals"]["cost_nanos"] == sum(s["cost_nanos"] for s in run["steps"] if s["kind"] == "model_call")


def test_a_paused_runs_calls_wait_for_the_resume_or_get_423(gw: Harness) -> None:
    assert call(gw, "run-p").status_code == 200
    answered(control(gw, "run-p", "pause", reason="review"), "paused", "review")
    run = gw.get("/api/runs/run-p")
    assert (run["status"], run["control"]["state"], run["ended_at"]) == ("paused", "paused", None)

    # A call while paused waits; the resume lets it through at once (well before the 1 s bound).
    held: dict[str, Any] = {}

    def waiting_call() -> None:
        t = time.monotonic()
        held["resp"] = call(gw, "run-p")
        held["took"] = time.monotonic() - t

    thread = threading.Thread(target=waiting_call)
    thread.start()
    time.sleep(0.3)
    assert "resp" not in held, "the call of a paused run went through"
    answered(control(gw, "run-p", "resume"), "running", None)
    thread.join(timeout=5)
    assert held["resp"].status_code == 200, held["resp"].text
    assert 0.3 <= held["took"] < 0.3 + PAUSE_WAIT * 0.6, held["took"]
    note = row(gw, held["resp"])["governance"]["note"]
    assert note.startswith("run run-p was paused: this call waited 0.") and note.endswith(" s"), note
    run = gw.get("/api/runs/run-p")
    assert (run["status"], run["control"]["state"]) == ("running", "running")

    # Paused and never resumed: 423 after the bound, with Retry-After, recorded as throttled.
    answered(control(gw, "run-p", "pause"), "paused", None)
    t = time.monotonic()
    refused = call(gw, "run-p")
    took = time.monotonic() - t
    assert refused.status_code == 423, refused.text
    assert PAUSE_WAIT <= took < PAUSE_WAIT + 0.5, took
    by = gw.get("/api/runs/run-p")["control"]["by"]
    assert refused.json() == {
        "error": {
            "message": f"Run 'run-p' is paused by {by}; this call waited 1 s for it to be resumed.",
            "type": "run_paused",
            "code": "run_paused",
            "param": None,
        }
    }
    assert refused.headers["retry-after"] == "1"
    r = row(gw, refused)
    assert (r["http_status"], r["error_code"], r["policy_decision"]) == (423, "run_paused", "throttled")
    assert r["governance"]["decided_by"] == {"kind": "run_control", "run_id": "run-p", "state": "paused", "by": by}
    assert len(gw.fake.received) == 2, "the refused call never reached the provider"

    # A cancel while a call waits refuses it at once.
    thread = threading.Thread(target=waiting_call)
    thread.start()
    time.sleep(0.2)
    answered(control(gw, "run-p", "cancel"), "cancelled", None)
    thread.join(timeout=5)
    assert held["resp"].status_code == 403 and held["took"] < PAUSE_WAIT, (held["took"], held["resp"].text)
    assert held["resp"].json()["error"]["code"] == "run_cancelled"
