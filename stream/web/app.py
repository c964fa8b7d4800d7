"""The dashboard as one Starlette app: pages, the JSON API, the live feed, and, inside the
service, Prometheus `/metrics` and the health checks. Read-only and secure by default: only
GET and HEAD, a Content-Security-Policy without inline script, `nosniff`, and an optional
bearer token every route but the health checks then requires."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode

import orjson
from prometheus_client import CONTENT_TYPE_LATEST
from sse_starlette import EventSourceResponse
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from runwatch.projections.slo import Slo
from runwatch.sinks.metrics import Health, Metrics
from runwatch.stream.web.api import Api, BadRequest, json_response
from runwatch.stream.web.feed import ChangeFeed
from runwatch.stream.web.readers import Readers

STATIC: Final = Path(__file__).parent / "static"
PAGES: Final = {
    "index": "index.html",
    "run": "run.html",
    "alerts": "alerts.html",
    "task": "task.html",
}
CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
REPORT_CSP: Final = "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"
"""Report files are self-contained pages with their own inline style and no script."""
HEALTH: Final = ("/healthz", "/livez", "/readyz")
COOKIE: Final = "runwatch_token"
NOT_FOUND: Final = (
    "not found: try /, /alerts, /api/runs, /api/slo, /metrics, /healthz, /livez or /readyz\n"
)


@dataclass
class Dashboard:
    """What the app serves: the projection, and inside the service its metrics and health."""

    target: str | Path
    reports: Path | None = None
    token: str | None = None
    metrics: Metrics | None = None
    health: Health | None = None
    live: Callable[[], dict[str, Any]] | None = None
    """The service's own figures (ingest lag), merged into /api/overview."""
    slos: Sequence[Slo] = ()
    """The configured SLOs, judged now by /api/slo and in /api/overview."""
    poll_s: float = 0.25
    ping_s: float = 15.0
    readers: Readers = field(init=False)
    feed: ChangeFeed = field(init=False)

    def __post_init__(self) -> None:
        self.readers = Readers(self.target)
        self.feed = ChangeFeed(self.readers, poll_s=self.poll_s)


def build_app(dashboard: Dashboard) -> Starlette:
    api = Api(dashboard.readers, dashboard.reports, dashboard.live, dashboard.slos)

    def page_route(path: str, name: str) -> Route:
        async def endpoint(request: Request) -> Response:
            return FileResponse(STATIC / PAGES[name], headers={"Cache-Control": "no-store"})

        return Route(path, endpoint, methods=["GET", "HEAD"])

    async def events(request: Request) -> Response:
        after = request.headers.get("last-event-id") or request.query_params.get("after")
        if after is not None and not after.isdigit():
            raise BadRequest(f"Last-Event-ID / after must be a change number, not {after!r}")
        return EventSourceResponse(
            dashboard.feed.stream(None if after is None else int(after)),
            ping=dashboard.ping_s,
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    async def metrics(request: Request) -> Response:
        if dashboard.metrics is None:
            return PlainTextResponse(NOT_FOUND, 404)
        body = await run_in_threadpool(dashboard.metrics.exposition)
        return Response(body, media_type=CONTENT_TYPE_LATEST, headers={"Cache-Control": "no-store"})

    async def health(request: Request) -> Response:
        if dashboard.health is None:
            return PlainTextResponse(NOT_FOUND, 404)
        endpoint = request.url.path.strip("/")
        healthy, body = await run_in_threadpool(dashboard.health, endpoint)
        return Response(
            orjson.dumps(body, option=orjson.OPT_INDENT_2) + b"\n",
            status_code=200 if healthy else 503,
            media_type="application/json",
            headers={"Cache-Control": "no-store"},
        )

    async def report(request: Request) -> Response:
        name = request.path_params["name"]
        folder = dashboard.reports
        if folder is None or "/" in name or name.startswith(".") or not (folder / name).is_file():
            return PlainTextResponse(NOT_FOUND, 404)
        return FileResponse(folder / name, headers={"Content-Security-Policy": REPORT_CSP})

    async def not_found(request: Request, exc: Exception) -> Response:
        if request.url.path.startswith("/api/"):
            return json_response({"error": "not found"}, 404)
        return PlainTextResponse(NOT_FOUND, 404)

    async def bad_request(request: Request, exc: Exception) -> Response:
        return json_response({"error": str(exc)}, 400)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        task = asyncio.create_task(dashboard.feed.run())
        try:
            yield
        finally:
            dashboard.feed.close()
            await task
            dashboard.readers.close()

    get = ["GET", "HEAD"]
    routes = [
        page_route("/", "index"),
        page_route("/alerts", "alerts"),
        page_route("/runs/{run_id:path}", "run"),
        page_route("/tasks/{task_id:path}", "task"),
        Route("/api/runs", api.runs, methods=get),
        Route("/api/runs/{run_id:path}", api.run, methods=get),
        Route("/api/overview", api.overview, methods=get),
        Route("/api/alerts", api.alerts, methods=get),
        Route("/api/slo", api.slo, methods=get),
        Route("/api/tasks/{task_id:path}", api.task, methods=get),
        Route("/api/events", events, methods=get),
        Route("/metrics", metrics, methods=get),
        *(Route(path, health, methods=get) for path in HEALTH),
        Route("/reports/{name}", report, methods=get),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={404: not_found, BadRequest: bad_request},
        lifespan=lifespan,
    )
    return app


class Guard:
    """Outermost: refuses every method but GET and HEAD (405), asks for the token when one
    is set (401), and puts the security headers on every response."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.token = token.encode() if token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = Headers(raw=message["headers"])
                extra = [
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"),
                ]
                if "content-security-policy" not in headers:
                    extra.append((b"content-security-policy", CSP.encode()))
                extra.append((b"x-frame-options", b"DENY"))
                message["headers"] = [*message["headers"], *extra]
            await send(message)

        if scope["method"] not in ("GET", "HEAD"):
            response: Response = PlainTextResponse(
                "read-only: only GET and HEAD\n", 405, headers={"Allow": "GET, HEAD"}
            )
        elif self.token is None or scope["path"] in HEALTH:
            await self.app(scope, receive, secured)
            return
        else:
            refused = self._login(scope) or self._check(scope)
            if refused is None:
                await self.app(scope, receive, secured)
                return
            response = refused
        await response(scope, receive, secured)

    def _login(self, scope: Scope) -> Response | None:
        """`?token=…` once in a browser: a cookie holds it from then on, and the address
        bar loses it (a redirect without it)."""
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        given = [v for k, v in query if k == "token"]
        if not given:
            return None
        if not self._matches(given[-1].encode()):
            return PlainTextResponse("wrong token\n", 401, headers={"WWW-Authenticate": "Bearer"})
        rest = urlencode([(k, v) for k, v in query if k != "token"])
        response = RedirectResponse(scope["path"] + (f"?{rest}" if rest else ""), 303)
        response.set_cookie(COOKIE, given[-1], httponly=True, samesite="strict", path="/")
        return response

    def _check(self, scope: Scope) -> Response | None:
        headers = Headers(scope=scope)
        scheme, _, value = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and self._matches(value.strip().encode()):
            return None
        cookies = Request(scope).cookies
        if COOKIE in cookies and self._matches(cookies[COOKIE].encode()):
            return None
        return PlainTextResponse(
            "a bearer token is required (Authorization: Bearer …, or open /?token=… once)\n",
            401,
            headers={"WWW-Authenticate": "Bearer"},
        )

    def _matches(self, given: bytes) -> bool:
        assert self.token is not None
        return hmac.compare_digest(given, self.token)


def guarded(dashboard: Dashboard) -> ASGIApp:
    return Guard(build_app(dashboard), dashboard.token)
