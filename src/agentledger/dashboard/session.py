"""The dashboard's sign-in session: an encrypted cookie holding the token and the session's CSRF token.

The cookie is sealed with the installation's secret key (SecretBox, the key provider credentials are encrypted
with), so replicas sharing that key share sessions and nothing is kept server-side. Every request authenticates
the token inside it again through the /api guard (cached for `cache_ttl`), so a revoked token signs its sessions
out within that time. docs/security.md, "Dashboard".
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass

import orjson
from starlette.requests import Request
from starlette.responses import Response

from agentledger.secrets_box import SecretBox

COOKIE = "agentledger_session"
MAX_AGE_S = 12 * 3600
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"


@dataclass(frozen=True, slots=True)
class Session:
    token: str
    csrf: str


class Sessions:
    def __init__(self, box: SecretBox, max_age_s: int = MAX_AGE_S) -> None:
        self.box = box
        self.max_age_s = max_age_s

    def read(self, request: Request) -> Session | None:
        sealed = request.cookies.get(COOKIE)
        if not sealed:
            return None
        opened = self.box.open_fresh(sealed, self.max_age_s)
        if opened is None:
            return None
        try:
            data = orjson.loads(opened)
            return Session(token=str(data["t"]), csrf=str(data["c"]))
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return None

    def start(self, request: Request, response: Response, token: str) -> None:
        sealed = self.box.seal(orjson.dumps({"t": token, "c": secrets.token_urlsafe(24)}).decode())
        response.set_cookie(
            COOKIE,
            sealed,
            max_age=self.max_age_s,
            path="/",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )

    @staticmethod
    def end(request: Request, response: Response) -> None:
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict", secure=request.url.scheme == "https")


async def csrf_ok(request: Request, session: Session) -> bool:
    """A write carries the session's CSRF token in the form field or the htmx header (compared in constant time)."""
    sent = request.headers.get(CSRF_HEADER)
    if sent is None and request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        form = await request.form()
        value = form.get(CSRF_FIELD)
        sent = value if isinstance(value, str) else None
    return sent is not None and hmac.compare_digest(sent.encode(), session.csrf.encode())
