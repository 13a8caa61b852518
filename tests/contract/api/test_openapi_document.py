"""The published OpenAPI document is the contract: it must describe exactly the routes the app mounts,
validate as OpenAPI 3.1, and its error schema must be the shape the error tree renders."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from openapi_spec_validator import OpenAPIV31SpecValidator
from starlette.applications import Starlette
from starlette.routing import Route

from agentledger.api.openapi import document
from agentledger.app import create_app
from agentledger.config import Settings
from agentledger.core import errors
from agentledger.ingest.steps import MAX_BATCH

HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


@pytest.fixture
def app(tmp_path: Path) -> Starlette:
    # No lifespan runs: building the app opens no connection, and /openapi.json needs none.
    return create_app(Settings(data_dir=str(tmp_path), db_url=f"sqlite:///{tmp_path / 'db.sqlite'}"))


def mounted(app: Starlette) -> set[tuple[str, str]]:
    # The dashboard's pages and its static files are HTML for people, kept out of the document on purpose.
    others = [r for r in app.routes if not isinstance(r, Route) or not r.include_in_schema]
    assert all(isinstance(r, Route) or getattr(r, "name", None) == "dashboard-static" for r in others), others
    # Starlette adds HEAD to every GET route by itself; the document lists the methods we wrote. A parameter's
    # convertor (`{policy_id:policy_id}`) is the router's business: OpenAPI names the parameter only.
    return {
        (re.sub(r"\{(\w+):\w+\}", r"{\1}", r.path), m.lower())
        for r in app.routes
        if isinstance(r, Route) and r.include_in_schema
        for m in r.methods or ()
        if m != "HEAD"
    }


def documented(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(path, method) for path, item in doc["paths"].items() for method in item if method in HTTP_METHODS}


def test_document_lists_exactly_the_mounted_routes(app: Starlette) -> None:
    assert documented(document()) == mounted(app)
    assert ("/v1/chat/completions", "post") in mounted(app)


def test_document_is_valid_openapi_3_1() -> None:
    doc = document()
    assert doc["openapi"] == "3.1.0"
    OpenAPIV31SpecValidator(doc).validate()


async def test_document_is_served_without_auth(app: Starlette) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
        resp = await client.get("/openapi.json")
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "application/json"
    assert resp.json() == document()


def test_every_secured_operation_documents_401_and_every_write_413() -> None:
    for path, item in document()["paths"].items():
        for method, op in item.items():
            codes = set(op["responses"])
            assert ("401" in codes) == bool(op["security"]), (method, path)
            if "requestBody" in op:
                assert {"400", "413"} <= codes, (method, path)
            assert "499" not in codes and "500" not in codes, (method, path)


@pytest.mark.parametrize(
    "exc",
    [
        errors.InvalidHeader("bad", param="alephant-run-id"),
        errors.AuthenticationError("no"),
        errors.NotFound("gone", param="run_id"),
        errors.UpstreamTimeout("slow"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_error_schema_is_the_rendered_shape(exc: errors.AgentLedgerError) -> None:
    schema = {**document()["components"]["schemas"]["Error"], "$schema": "https://json-schema.org/draft/2020-12/schema"}
    jsonschema.validate(exc.body(), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"error": {**exc.body()["error"], "extra": 1}}, schema)


def test_step_batch_bound_is_the_validators() -> None:
    wrapper, array, _ = document()["components"]["schemas"]["StepBatch"]["anyOf"]
    assert wrapper["properties"]["steps"]["maxItems"] == array["maxItems"] == MAX_BATCH
