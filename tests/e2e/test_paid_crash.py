"""`kill -9` of a gateway process in the middle of paid calls (POST /x402/{workspace}/{slug}): a payment that was
charged is on disk as used, and every sale a buyer got its answer for is in the books (docs/paid-endpoints.md,
step 10: the proof's claim commits without a log flush of its own, and becomes durable with the run's records).

The gateway runs as its own process over SQLite or PostgreSQL in strict mode, with the built-in local facilitator;
the workflow is a loopback webhook (tests/integration/paid_support.py) that answers at once. Six buyers pay with
x402's client (a new signed authorization per call) until the process is killed. A sale is *acknowledged* when the
buyer has a 200 with PAYMENT-RESPONSE. Then a new process starts on the same database and:

* every acknowledged sale's run is in the books with its revenue;
* every settled sale in the books has its proof recorded as used (claimed or settled, never missing or released);
* every acknowledged payment, sent again, is refused as already used.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import httpx
import pytest
from eth_account import Account
from sqlalchemy import create_engine, text

from agentledger.config import Settings
from agentledger.testing.server import free_port
from tests.e2e.test_crash import _start
from tests.harness import Harness, provision
from tests.integration.paid_support import (
    PRICE_NANOS,
    paid_header,
    prepare_workspace,
    publish,
    workflow_agent,
    workflow_server,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

BUYERS = 6
MIN_ACKED = 30
DEADLINE_S = 30.0


async def _buy(url: str, stop: asyncio.Event, acked: dict[str, str], refused: dict[int, int]) -> None:
    """Pays for calls until the server dies or `stop` is set; fills `acked` (payment header → run id)."""
    account = Account.create()
    body = {"text": "summarize this", "mode": "sleep", "seconds": 0}
    async with httpx.AsyncClient(timeout=10, trust_env=False) as http:
        offer = await http.post(url, json=body)
        assert offer.status_code == 402, offer.text
        while not stop.is_set():
            header = await paid_header(account, offer)
            try:
                resp = await http.post(url, json=body, headers={"PAYMENT-SIGNATURE": header})
            except httpx.TransportError:
                return  # the server is gone
            if resp.status_code == 200 and resp.headers.get("payment-response"):
                acked[header] = resp.headers["alephant-run-id"]
            else:
                refused[resp.status_code] = refused.get(resp.status_code, 0) + 1


def test_kill_9_during_paid_calls_leaves_every_charged_proof_used(db_url: str, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    settings = Settings(data_dir=str(data_dir), db_url=db_url)
    ids = provision(settings, "http://127.0.0.1:9")
    port = free_port()
    log = tmp_path / "gateway.log"
    proc = _start(data_dir, db_url, port, "strict", log)
    acked: dict[str, str] = {}
    refused: dict[int, int] = {}
    with workflow_server() as (flow, server):
        try:
            gw = Harness(
                url=f"http://127.0.0.1:{port}",
                workspace=ids["workspace"],
                department=ids["department"],
                agent=ids["agent"],
                vk=ids["vk"],
                admin=ids["admin"],
                fake=None,  # type: ignore[arg-type]  # the workflow answers without a model call
                server=None,  # type: ignore[arg-type]
                settings=settings,
            )
            prepare_workspace(gw)
            flow.gateway_url = gw.url
            endpoint = publish(gw, workflow_agent(gw, flow, server))
            url = gw.url + endpoint.url

            async def run() -> None:
                stop = asyncio.Event()
                buyers = asyncio.gather(*(_buy(url, stop, acked, refused) for _ in range(BUYERS)))
                began = time.monotonic()
                while len(acked) < MIN_ACKED and time.monotonic() - began < DEADLINE_S and not buyers.done():
                    await asyncio.sleep(0.02)
                proc.send_signal(signal.SIGKILL)  # while the buyers are mid-call
                proc.wait(10)
                stop.set()
                await buyers

            asyncio.run(run())
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        assert len(acked) >= MIN_ACKED, f"too little load to mean anything: {len(acked)} acknowledged, {refused=}"

        again_port = free_port()
        proc = _start(data_dir, db_url, again_port, "strict", log)
        try:
            again_url = f"http://127.0.0.1:{again_port}" + endpoint.url
            engine = create_engine(settings.database_url)
            with engine.connect() as conn:
                sold = {
                    r[0]: int(r[1])
                    for r in conn.execute(
                        text(
                            "SELECT run_id, revenue_nanos FROM steps WHERE workspace_id = :ws AND kind = 'payment' "
                            "AND revenue_nanos > 0"
                        ),
                        {"ws": ids["workspace"]},
                    )
                }
                proofs = {
                    r[0]: r[1]
                    for r in conn.execute(
                        text("SELECT run_id, state FROM x402_payments WHERE workspace_id = :ws"),
                        {"ws": ids["workspace"]},
                    )
                }
            engine.dispose()
            missing = [run for run in acked.values() if sold.get(run) != PRICE_NANOS]
            assert missing == [], f"{len(missing)} of {len(acked)} acknowledged sales are not in the books"
            unused = {run: proofs.get(run) for run in sold if proofs.get(run) not in ("claimed", "settled")}
            assert unused == {}, f"settled sales whose proof is not recorded as used: {unused}"
            for header in list(acked)[:10]:
                again = httpx.post(
                    again_url,
                    json={"text": "summarize this", "mode": "sleep", "seconds": 0},
                    headers={"PAYMENT-SIGNATURE": header},
                    timeout=10,
                )
                assert again.status_code == 402, again.text
                assert again.json()["error"]["code"] == "payment_already_used", again.text
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
