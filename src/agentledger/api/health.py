"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from agentledger.core.errors import StoreUnavailable
from agentledger.gateway.responses import JSONResponse
from agentledger.pipeline.queue import TracePipeline
from agentledger.store.base import Store


def health_routes(store: Store, pipeline: TracePipeline) -> list[Route]:
    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        """Ready when the store answers a query. Otherwise 503 with why: `reason` is a stable code, `detail` the
        underlying fault (e.g. the driver's "connection refused"), and whether trace records are being spooled."""
        try:
            await store.list_workspaces("-")
        except Exception as exc:  # readiness reports any store fault rather than raising it
            cause = exc.__cause__ if isinstance(exc, StoreUnavailable) and exc.__cause__ else exc
            detail = (str(cause).strip().splitlines() or [""])[0][:300]
            body = {
                "status": "unavailable",
                "reason": "store_unavailable" if isinstance(exc, StoreUnavailable) else "store_error",
                "detail": f"{type(cause).__name__}: {detail}" if detail else type(cause).__name__,
                "trace_spool_pending": pipeline.spool_pending,
            }
            return JSONResponse(body, status_code=503, headers={"retry-after": str(StoreUnavailable.retry_after)})
        return JSONResponse({"status": "ready"})

    async def metrics(request: Request) -> Response:
        s = pipeline.stats
        lines = [
            "# TYPE agentledger_trace_events_emitted_total counter",
            f"agentledger_trace_events_emitted_total {s.emitted}",
            "# TYPE agentledger_trace_events_written_total counter",
            f"agentledger_trace_events_written_total {s.written}",
            "# TYPE agentledger_trace_batches_total counter",
            f"agentledger_trace_batches_total {s.batches}",
            "# TYPE agentledger_trace_write_failures_total counter",
            f"agentledger_trace_write_failures_total {s.failures}",
            "# TYPE agentledger_trace_events_spooled_total counter",
            f"agentledger_trace_events_spooled_total {s.spooled}",
            "# TYPE agentledger_trace_events_rejected_total counter",
            f"agentledger_trace_events_rejected_total {s.rejected}",
            "# TYPE agentledger_trace_events_dropped_total counter",
            f"agentledger_trace_events_dropped_total {s.dropped}",
            "# TYPE agentledger_trace_queue_depth gauge",
            f"agentledger_trace_queue_depth {pipeline.depth}",
            # 0 on a second gateway of one SQLite database (it answers on the store's commits instead) or off strict.
            "# TYPE agentledger_trace_journal_enabled gauge",
            f"agentledger_trace_journal_enabled {int(pipeline.journal is not None)}",
            "# TYPE agentledger_trace_journal_pending_events gauge",
            f"agentledger_trace_journal_pending_events {pipeline.journal_pending}",
        ]
        return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")

    return [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
