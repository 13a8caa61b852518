"""The dashboard's machinery: pages, the signed-in context they run in, sign-in and sign-out, static files.

A page is a `Page` (dashboard/pages/): a path, the /api route whose permission it needs, an optional navigation
label, and a handler that reads through `Ctx.api` and renders a template. `Ctx.api` calls the /api route's own
handler in process, with the session's token, through the app's router: the page sees exactly what the API
answers, authorized, audited and computed by the same code (one source of truth, no SQL here or in templates).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import orjson
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Message

from agentledger.api.auth import AdminAuth
from agentledger.core.errors import AgentLedgerError, AuthenticationError
from agentledger.core.model import AdminPrincipal
from agentledger.dashboard.access import can
from agentledger.dashboard.format import FILTERS
from agentledger.dashboard.session import CSRF_FIELD, CSRF_HEADER, Session, Sessions, csrf_ok
from agentledger.secrets_box import SecretBox

HERE = Path(__file__).parent
STATIC_PREFIX = "/static"
# No inline script anywhere (data reaches scripts as JSON in <script type="application/json">); inline style
# attributes are allowed because the waterfall and the budget bars are positioned by them.
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
        "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}


class PageError(Exception):
    """Ends a page with an error page (or the sign-in page for a 401)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class Page:
    path: str
    handler: Callable[[Ctx], Awaitable[Response]]
    api: tuple[str, str]  # (method, /api route template) whose permission this page needs
    nav: str | None = None  # its label in the navigation; None: reached from other pages
    methods: tuple[str, ...] = ("GET",)


@dataclass(slots=True)
class Ctx:
    request: Request
    principal: AdminPrincipal
    session: Session
    dashboard: Dashboard
    params: Mapping[str, str] = field(default_factory=dict)

    def can(self, method: str, api_path: str) -> bool:
        return can(self.principal, method, api_path)

    async def api(
        self,
        method: str,
        path: str,
        params: Mapping[str, Any] | Iterable[tuple[str, Any]] | None = None,
        body: Any = None,
        *,
        ok: Sequence[int] = (200, 201),
    ) -> Any:
        """The JSON answer of an /api route, called in process as this session's token. An answer outside `ok`
        ends the page: 401 with the sign-in page, others with an error page saying what the API said."""
        status, data = await self.dashboard.call_api(self.request, self.session.token, method, path, params, body)
        if status not in ok:
            message = data.get("error", {}).get("message", "") if isinstance(data, dict) else ""
            raise PageError(status, message or f"{method} {path} answered {status}.")
        return data

    def render(self, template: str, status: int = 200, **values: Any) -> HTMLResponse:
        return self.dashboard.render(self.request, template, status, ctx=self, **values)


class Dashboard:
    def __init__(self, auth: AdminAuth, box: SecretBox, pages: Sequence[Page]) -> None:
        self.auth = auth
        self.sessions = Sessions(box)
        self.pages = list(pages)
        self.env = Environment(
            loader=FileSystemLoader(HERE / "templates"),
            autoescape=select_autoescape(default=True),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters.update(FILTERS)
        self.env.globals.update(static=self.static_url, csrf_field=CSRF_FIELD, qs=_qs)
        self.nav = [p for p in self.pages if p.nav is not None]
        self._static_versions: dict[str, str] = {}

    # -- routes ----------------------------------------------------------------------------------------------

    def routes(self) -> list[BaseRoute]:
        # Pages are HTML for people, not part of the API: out of the OpenAPI document (include_in_schema).
        routes: list[BaseRoute] = [
            Route("/signin", self.signin_form, methods=["GET"], include_in_schema=False),
            Route("/signin", self.signin, methods=["POST"], include_in_schema=False),
            Route("/signout", self.signout, methods=["POST"], include_in_schema=False),
        ]
        routes += [
            Route(p.path, self._endpoint(p), methods=list(p.methods), include_in_schema=False) for p in self.pages
        ]
        if self.nav and not any(p.path == "/" for p in self.pages):
            first = self.nav[0].path
            routes.append(Route("/", lambda request: RedirectResponse(first, status_code=303), include_in_schema=False))
        routes.append(Mount(STATIC_PREFIX, app=StaticFiles(directory=HERE / "static"), name="dashboard-static"))
        return routes

    def static_url(self, name: str) -> str:
        # The file's mtime busts caches after an upgrade; the pinned names already carry their versions.
        version = self._static_versions.get(name)
        if version is None:
            version = self._static_versions[name] = str(int((HERE / "static" / name).stat().st_mtime))
        return f"{STATIC_PREFIX}/{name}?v={version}"

    def _endpoint(self, page: Page) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            session = self.sessions.read(request)
            if session is None:
                return self._to_signin(request)
            try:
                principal = await self.principal(request, session.token)
            except AuthenticationError:
                response = self._to_signin(request)
                self.sessions.end(request, response)
                return response
            ctx = Ctx(request, principal, session, self, request.query_params)
            try:
                if request.method != "GET":
                    if not _same_origin(request) or not await csrf_ok(request, session):
                        raise PageError(403, "This form has expired or did not come from this dashboard.")
                if not ctx.can(*page.api):
                    raise PageError(403, "Your role may not use this page.")
                response = await page.handler(ctx)
            except PageError as exc:
                if exc.status == 401:
                    response = self._to_signin(request)
                    self.sessions.end(request, response)
                    return response
                response = self.render(request, "error.html", exc.status, ctx=ctx, message=exc.message)
            return _secured(response)

        return endpoint

    # -- sign-in ---------------------------------------------------------------------------------------------

    async def signin_form(self, request: Request) -> Response:
        if self.sessions.read(request) is not None:
            return RedirectResponse(_next_url(request.query_params.get("next")), status_code=303)
        return _secured(self.render(request, "signin.html", 200, next=request.query_params.get("next", "/")))

    async def signin(self, request: Request) -> Response:
        form = await request.form()
        token = str(form.get("token") or "").strip()
        target = _next_url(str(form.get("next") or "/"))
        if not _same_origin(request):
            return _secured(self.render(request, "signin.html", 403, next=target, error="Refused: cross-site form."))
        try:
            if not token:
                raise AuthenticationError("Enter a personal access token or an admin token.")
            admin = await self.principal(request, token, record_refusal=True)
        except AuthenticationError as exc:
            return _secured(self.render(request, "signin.html", 401, next=target, error=exc.message))
        await self.auth.record_session(request, admin, "session.signin")
        response = RedirectResponse(target, status_code=303)
        self.sessions.start(request, response, token)
        return _secured(response)

    async def signout(self, request: Request) -> Response:
        session = self.sessions.read(request)
        if session is not None and (not _same_origin(request) or not await csrf_ok(request, session)):
            return _secured(HTMLResponse("Refused: this form did not come from this dashboard.", status_code=403))
        if session is not None:
            try:
                await self.auth.record_session(request, await self.principal(request, session.token), "session.signout")
            except AuthenticationError:
                pass  # a revoked token signing out: nothing of its to record
        response = RedirectResponse("/signin", status_code=303)
        self.sessions.end(request, response)
        return _secured(response)

    def _to_signin(self, request: Request) -> Response:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        url = "/signin" + ("" if target == "/" else f"?next={quote(target, safe='')}")
        if request.headers.get("hx-request"):
            return Response(status_code=204, headers={"hx-redirect": url})
        return RedirectResponse(url, status_code=303)

    async def principal(self, request: Request, token: str, *, record_refusal: bool = False) -> AdminPrincipal:
        """Who `token` speaks for, by the guard's own lookup (admin tokens and personal access tokens alike)."""
        as_api = _api_request(request, token, "GET", request.url.path, b"")
        try:
            return await self.auth.principal(as_api)
        except AuthenticationError as exc:
            if record_refusal:  # a guessed token at the sign-in form is a failed authentication like any other
                await self.auth._refused(as_api, exc)
            raise

    # -- rendering and the in-process API ------------------------------------------------------------------------

    def render(self, request: Request, template: str, status: int, **values: Any) -> HTMLResponse:
        ctx: Ctx | None = values.get("ctx")
        nav = [p for p in self.nav if ctx is None or ctx.can(*p.api)]
        html = self.env.get_template(template).render(
            request=request,
            path=request.url.path,
            nav=nav,
            principal=ctx.principal if ctx else None,
            csrf=ctx.session.csrf if ctx else None,
            csrf_header=CSRF_HEADER,
            **values,
        )
        return HTMLResponse(html, status_code=status)

    async def call_api(
        self,
        request: Request,
        token: str,
        method: str,
        path: str,
        params: Mapping[str, Any] | Iterable[tuple[str, Any]] | None,
        body: Any,
    ) -> tuple[int, Any]:
        items = params.items() if isinstance(params, Mapping) else (params or ())
        query = urlencode([(k, v) for k, v in items if v not in (None, "")])
        payload = b"" if body is None else orjson.dumps(body)
        scope = _api_request(request, token, method, path, query.encode()).scope
        chunks: list[bytes] = []
        status = 500
        sent = False

        async def receive() -> Message:
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": payload, "more_body": False}

        async def send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        try:
            await request.scope["app"].router(scope, receive, send)
        except AgentLedgerError as exc:
            return exc.status, {"error": {"message": exc.message}}
        raw = b"".join(chunks)
        try:
            return status, orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            return status, {"raw": raw.decode(errors="replace")}


def _api_request(request: Request, token: str, method: str, path: str, query: bytes) -> Request:
    """A request to an /api route as this token, carrying the browser's other headers (its address for the audit
    log's client_ip_header) but never its cookies."""
    drop = {b"cookie", b"authorization", b"content-type", b"content-length", CSRF_HEADER.encode()}
    headers = [(k, v) for k, v in request.scope["headers"] if k not in drop]
    headers += [(b"authorization", f"Bearer {token}".encode()), (b"content-type", b"application/json")]
    scope = {
        k: v for k, v in request.scope.items() if k not in ("route", "endpoint", "path_params", "router", "app_root")
    }
    scope.update(method=method, path=path, raw_path=path.encode(), query_string=query, headers=headers, root_path="")
    return Request(scope)


def _same_origin(request: Request) -> bool:
    """A browser names the page a form came from; one from another site is refused before its token is read."""
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin is None
    host = request.headers.get("host", "")
    return origin.split("://", 1)[-1] == host


def _next_url(value: str | None) -> str:
    # Only a path on this site: "//evil.example" or "https://…" would make sign-in an open redirect.
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    return value


def _qs(params: Mapping[str, Any], **changes: Any) -> str:
    merged = {**{k: v for k, v in params.items()}, **changes}
    return urlencode([(k, v) for k, v in merged.items() if v not in (None, "")])


def _secured(response: Response) -> Response:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response
