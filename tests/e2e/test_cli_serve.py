"""`agentledger serve` as a real subprocess, and the CLI's create commands.

The server is started the way a user starts it (`python -m agentledger --data-dir D serve --port P`), the
keys it prints on first start are used with the official openai SDK against its built-in mock provider
(offline), and SIGTERM must lose nothing: a trace recorded just before shutdown is in the database and
readable after a restart on the same data directory, which must not bootstrap again.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from click.testing import CliRunner

from agentledger.cli import main
from agentledger.testing.server import free_port

pytestmark = pytest.mark.e2e

HELLO = [{"role": "user", "content": "hello there world"}]
HELLO_NANOS = 6 * 150 + 9 * 600  # gpt-4o-mini at $0.15 / $0.60 per MTok: 6 prompt and 9 completion tokens


def _clean_env() -> dict[str, str]:
    # Settings come from the command line only: no AGENTLEDGER_* from the developer's shell.
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTLEDGER_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class Served:
    proc: subprocess.Popen[bytes]
    url: str
    stdout: Path
    stderr: Path

    def out(self) -> str:
        return self.stdout.read_text()

    def err(self) -> str:
        return self.stderr.read_text()


@contextmanager
def serve(data_dir: Path, tag: str, *options: str) -> Iterator[Served]:
    port = free_port()
    stdout, stderr = data_dir.parent / f"{tag}.out", data_dir.parent / f"{tag}.err"
    with stdout.open("wb") as out, stderr.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "agentledger", "--data-dir", str(data_dir), *options, "serve", "--port", str(port)],
            stdout=out,
            stderr=err,
            env=_clean_env(),
        )
    served = Served(proc, f"http://127.0.0.1:{port}", stdout, stderr)
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, f"server exited early:\n{served.out()}\n{served.err()}"
            try:
                if httpx.get(served.url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"server did not start:\n{served.err()}"
            time.sleep(0.05)
        yield served
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def stop(served: Served) -> None:
    """SIGTERM, then a clean exit: uvicorn shuts the app down (draining the trace pipeline) and then
    re-raises the signal, so the exit status is 0 or -SIGTERM, never a crash or a timeout."""
    served.proc.send_signal(signal.SIGTERM)
    rc = served.proc.wait(30)
    err = served.err()
    assert rc in (0, -signal.SIGTERM), err
    assert "Application shutdown complete" in err and "Traceback" not in err, err


def printed(text: str, label: str) -> str:
    match = re.search(rf"^\s*{label}\s+(\S+)\s*$", text, re.MULTILINE)
    assert match, f"{label!r} not printed:\n{text}"
    return match.group(1)


def test_serve_subprocess_first_start_sdk_and_graceful_shutdown(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    # A half-second batch window keeps the last trace in the pipeline's queue when SIGTERM arrives.
    with serve(data_dir, "first", "--set", "batch_interval_ms=500") as srv:
        out = srv.out()
        # The banner is the first thing printed, and nothing (no migration chatter) comes before it.
        assert out.startswith("agentledger — first start: created a demo workspace"), out
        agent_line = re.search(r"^\s*agent\s+(\S+)\s+\(the demo key is bound to it", out, re.MULTILINE)
        assert agent_line and agent_line.group(1) == "demo-agent", out
        assert "alembic" not in srv.err() and "Running upgrade" not in srv.err(), srv.err()
        vk, admin = printed(out, "virtual key"), printed(out, "admin token")
        assert vk.startswith("vk-") and admin.startswith("adm-")
        assert f"{srv.url}/v1" in out

        client = openai.OpenAI(base_url=srv.url + "/v1", api_key=vk, max_retries=0)
        headers = {"Alephant-Run-Id": "run-cli", "alephant-session-id": "sess-cli", "alephant-session-path": "/plan"}
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=HELLO, extra_headers={**headers, "x-request-id": "req-plain"}
        )
        completion = raw.parse()
        assert completion.choices[0].message.content == "This is a mock reply to: hello there world"
        assert raw.headers["alephant-cost-usd"] == "0.000006300"
        stream = client.chat.completions.create(
            model="gpt-4o-mini", messages=HELLO, stream=True, extra_headers={**headers, "x-request-id": "req-stream"}
        )
        chunks = list(stream)
        assert (
            "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            == completion.choices[0].message.content
        )
        assert all(c.choices for c in chunks), "the forced usage chunk must be hidden"

        auth = {"authorization": f"Bearer {admin}"}
        run = httpx.get(srv.url + "/api/runs/run-cli", headers=auth, timeout=10).json()
        assert [(s["request_id"], s["kind"], s["status"]) for s in run["steps"]] == [
            ("req-plain", "model_call", "ok"),
            ("req-stream", "model_call", "ok"),
        ]
        assert run["totals"]["cost_nanos"] == 2 * HELLO_NANOS
        assert (run["totals"]["input_tokens"], run["totals"]["output_tokens"]) == (12, 18)
        # The demo key is bound to the demo agent, so its calls land with the agent's id.
        assert run["agent_id"] == "demo-agent" and run["department_id"] == "engineering"
        request = httpx.get(srv.url + "/api/requests/req-plain", headers=auth, timeout=10).json()
        assert request["agent_id"] == "demo-agent"

        # The last call is acknowledged, then the server is told to stop before anything reads it back:
        # its trace may still be in the pipeline's queue and must be written during shutdown.
        client.chat.completions.create(
            model="gpt-4o-mini", messages=HELLO, extra_headers={**headers, "x-request-id": "req-last"}
        )
        stop(srv)

    with sqlite3.connect(data_dir / "agentledger.db") as db:
        row = db.execute(
            "SELECT run_id, status, cost_nanos, input_tokens, output_tokens FROM requests WHERE id = 'req-last'"
        ).fetchone()
        assert row == ("run-cli", "ok", HELLO_NANOS, 6, 9)
        steps = db.execute("SELECT count(*) FROM steps WHERE request_id = 'req-last'").fetchone()
        assert steps == (1,)
        assert db.execute("SELECT count(*) FROM workspaces").fetchone() == (1,)
    assert not list((data_dir / "spool").glob("*")) or all(
        p.stat().st_size == 0 for p in (data_dir / "spool").iterdir()
    )

    # A restart on the same data directory serves the same books and does not bootstrap again.
    with serve(data_dir, "second") as srv:
        assert "first start" not in srv.out() and "virtual key" not in srv.out()
        assert "serving" in srv.err()
        auth = {"authorization": f"Bearer {admin}"}
        run = httpx.get(srv.url + "/api/runs/run-cli", headers=auth, timeout=10).json()
        assert [s["request_id"] for s in run["steps"]] == ["req-plain", "req-stream", "req-last"]
        assert run["totals"]["cost_nanos"] == 3 * HELLO_NANOS
        session = httpx.get(srv.url + "/api/sessions/sess-cli", headers=auth, timeout=10).json()
        assert [(p["path"], p["count"]) for p in session["paths"]] == [("/plan", 3)]
        # The key printed on the first start still works.
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key=vk, max_retries=0)
        client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
        stop(srv)
    with sqlite3.connect(data_dir / "agentledger.db") as db:
        assert db.execute("SELECT count(*) FROM workspaces").fetchone() == (1,)
        assert db.execute("SELECT count(*) FROM virtual_keys").fetchone() == (1,)
        assert db.execute("SELECT count(*) FROM requests").fetchone() == (4,)


def _cli(data_dir: Path, *args: str) -> Any:
    result = CliRunner().invoke(main, ["--data-dir", str(data_dir), *args], env={"AGENTLEDGER_DB_URL": None})
    assert result.exit_code == 0, (result.output, result.exception)
    return json.loads(result.stdout)


def test_cli_create_commands_and_a_created_key_works(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    ws = _cli(data_dir, "workspaces", "create", "Acme", "--id", "acme")
    assert ws["id"] == "acme" and ws["name"] == "Acme" and ws["owner_token"].startswith("adm-")

    dep = _cli(data_dir, "departments", "create", "--workspace", "acme", "--name", "Sales", "--id", "sales")
    assert dep == {"id": "sales", "name": "Sales"}
    agent = _cli(
        data_dir,
        "agents",
        "create",
        "--workspace",
        "acme",
        "--name",
        "Closer",
        "--department",
        "sales",
        "--id",
        "closer",
    )
    assert agent == {"id": "closer", "department_id": "sales", "name": "Closer", "kind": "ai"}
    pk = _cli(
        data_dir,
        "provider-keys",
        "create",
        "--workspace",
        "acme",
        "--kind",
        "mock",
        "--provider",
        "mock",
        "--name",
        "offline",
        "--model",
        "house-*",
        "--model",
        "gpt-4o-mini",
    )
    assert (pk["kind"], pk["provider"], pk["name"], pk["models"]) == (
        "mock",
        "mock",
        "offline",
        ["house-*", "gpt-4o-mini"],
    )
    assert "api_key_encrypted" not in pk and pk["workspace_id"] == "acme"
    price = _cli(
        data_dir,
        "prices",
        "set",
        "--workspace",
        "acme",
        "--model",
        "house-model",
        "--input-mtok",
        "1",
        "--output-mtok",
        "2.5",
        "--cached-input-mtok",
        "0.5",
    )
    assert (price["model"], price["input_mtok"], price["output_mtok"], price["cached_input_mtok"]) == (
        "house-model",
        "1",
        "2.5",
        "0.5",
    )
    key = _cli(
        data_dir,
        "keys",
        "create",
        "--workspace",
        "acme",
        "--agent",
        "closer",
        "--name",
        "closer-key",
        "--allow-model",
        "house-*",
    )
    assert key["key"].startswith("vk-") and key["agent_id"] == "closer" and key["department_id"] == "sales"
    assert key["allowed_models"] == ["house-*"] and "key_hash" not in key
    viewer = _cli(data_dir, "admin-token", "--workspace", "acme", "--role", "viewer")
    assert viewer["token"].startswith("adm-") and viewer["role"] == "viewer"

    # Bad input is a clean CLI error, not a traceback.
    bad = CliRunner().invoke(
        main,
        [
            "--data-dir",
            str(data_dir),
            "agents",
            "create",
            "--workspace",
            "acme",
            "--name",
            "X",
            "--department",
            "sales",
            "--kind",
            "robot",
        ],
    )
    assert bad.exit_code != 0 and "robot" in bad.output

    # The created key works against a server on the same data directory (bootstrap off: no demo workspace).
    with serve(data_dir, "acme", "--set", "bootstrap=false") as srv:
        assert "first start" not in srv.out()
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key=key["key"], max_retries=0)
        raw = client.chat.completions.with_raw_response.create(
            model="house-model", messages=HELLO, extra_headers={"Alephant-Run-Id": "run-house"}
        )
        # 6 × $1 + 9 × $2.5 per MTok = 28.5 micro-dollars, from the CLI's price override.
        assert raw.headers["alephant-cost-usd"] == "0.000028500"
        with pytest.raises(openai.PermissionDeniedError):
            client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)  # not in --allow-model
        run = httpx.get(
            srv.url + "/api/runs/run-house", headers={"authorization": f"Bearer {viewer['token']}"}, timeout=10
        ).json()
        assert run["agent_id"] == "closer" and run["department_id"] == "sales"
        assert run["totals"]["cost_nanos"] == 28_500
        # The viewer token reads but may not write.
        resp = httpx.post(
            srv.url + "/api/departments",
            json={"name": "x"},
            headers={"authorization": f"Bearer {viewer['token']}"},
            timeout=10,
        )
        assert resp.status_code == 403
        stop(srv)
    with sqlite3.connect(data_dir / "agentledger.db") as db:
        assert db.execute("SELECT id FROM workspaces").fetchall() == [("acme",)]


@pytest.mark.parametrize(
    ("settings", "needs"),
    [
        (["--set", "workers=2"], "redis_url"),
        (["--set", "workers=2", "--set", "redis_url=redis://127.0.0.1:6379/0"], "PostgreSQL"),
    ],
    ids=["no-redis", "sqlite"],
)
def test_several_workers_need_shared_counters_and_postgresql(tmp_path: Path, settings: list[str], needs: str) -> None:
    """Each worker is a replica: with in-process counters each would enforce budgets alone, so it refuses."""
    result = CliRunner().invoke(main, ["--data-dir", str(tmp_path), *settings, "serve"], env=_clean_env())
    assert result.exit_code == 1
    assert needs in result.output and "workers > 1" in result.output
