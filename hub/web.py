"""The hub's web dashboard and read-only JSON API (FastAPI, served by uvicorn in the hub daemon).

    /                     the dashboard (static HTML/CSS/JS, no build step)
    /api/edges            edges as tiles: presence, compliance, revisions, backlog (filterable)
    /api/edges/{edge}     one edge: its row, latest inventory, explain, recent events
    /api/regions          regions: presence and counts of their edges
    /api/profiles         profiles: revision, history, which edges run which revision
    /api/compliance       converged / pending / failed / unknown, in all and per region
    /api/events           the fleet's recent events (newest first)
    /api/audit            the hub's audit trail: who asked its desk for what (newest first)
    /api/hub              the hub's own bus: connected (live) or since when everything is stale
    /api/stream           Server-Sent Events: rows that changed, new events
    /openapi.json, /docs  the API's schema
    /health               200 {"ok": true}: the one route that needs no token

Every other route needs a token the hub signed (`fleetbus token create`, or the login URL
`fleetbus dev up` prints; a token of some regions shows only their edges and events, and
not the audit trail): `Authorization: Bearer <token>`, or the cookie the login URL
sets (`?token=` answers 303 to the same page without it, setting an HttpOnly, SameSite=Strict
cookie). No token or a bad one: 401; anything but GET/HEAD: 403 (the API is read-only).
Everything is answered from the `FleetView` in memory (the audit trail: read from the hub's
AUDIT stream per request); nothing here writes to the fleet.
Every /api answer carries `X-Fleetbus-Hub: connected` or `disconnected; since=<ISO time>`.
"""

import asyncio
import contextlib
import json
import socket
import urllib.parse
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Annotated

import uvicorn
from fastapi import APIRouter, FastAPI, HTTPException, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import Counter
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fleetbus.core.compliance import State
from fleetbus.errors import ConfigError
from fleetbus.runtime import log
from fleetbus.runtime.apitoken import ApiClaims, TokenError
from fleetbus.runtime.metrics import DaemonMetrics
from fleetbus.runtime.settings import DASHBOARD_HOSTS
from hub import api
from hub.fleetview import RECENT_EVENTS, FleetView
from schemas.base import utcnow
from schemas.desk import AuditRecord
from schemas.event import Event, Severity

logger = log.get_logger(__name__)

STATIC = Path(__file__).parent / "static"
AUDIT_LIMIT = 1000  # records one /api/audit answer holds at most
KEEPALIVE = 15.0  # s between SSE comments on a quiet fleet (proxies drop idle streams)
TokenCheck = Callable[[str], ApiClaims]  # the claims of a token, or TokenError
SSE_PERIOD = 0.25  # s: at most this many batches per second per client, changes coalesced


def create_app(
    fleet: FleetView,
    metrics: DaemonMetrics | None = None,
    *,
    hosts: Sequence[str] = DASHBOARD_HOSTS,
    tokens: TokenCheck | None,
) -> FastAPI:
    """The dashboard and API, answering only requests that name one of `hosts` (a web page on
    another site that rebinds its name to this address gets 400, not the fleet), and carry a
    token `tokens` takes (None: no tokens, an --insecure hub)."""
    app = FastAPI(
        title="fleetbus hub",
        summary="Read-only view of the fleet: edges, regions, profiles, compliance, events.",
        version="1",
    )

    _explain_errors(app)
    app.include_router(_fleet_routes(fleet))
    app.include_router(_profile_routes(fleet))
    app.include_router(_event_routes(fleet, metrics))

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/health", tags=["fleet"])
    async def health() -> dict[str, bool]:
        """Whether the dashboard answers (no token needed; it tells nothing of the fleet)."""
        return {"ok": True}

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_middleware(_HubHeader, fleet=fleet)
    if tokens is not None:
        app.add_middleware(_Authenticated, check=tokens)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(hosts))
    if metrics is not None:
        app.add_middleware(_Counted, counter=metrics.api_requests)
    return app


def _explain_errors(app: FastAPI) -> None:
    """Every error answers JSON {error, status}, the error a sentence that says what to fix."""

    @app.exception_handler(HTTPException)
    async def clear_errors(_request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": exc.detail, "status": exc.status_code}, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def bad_input(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
            + (f" (got {e['input']!r})" if "input" in e else "")
            for e in exc.errors()
        ]
        body = {"error": "; ".join(problems), "status": 422, "detail": jsonable_encoder(exc.errors())}
        return JSONResponse(body, status_code=422)


def _fleet_routes(fleet: FleetView) -> APIRouter:
    router = APIRouter()

    @router.get("/api/edges", response_model=api.EdgeList, tags=["fleet"])
    async def list_edges(
        region: Annotated[str | None, Query(max_length=64, description="Only this region.")] = None,
        presence: Annotated[api.PresenceFilter | None, Query(description="Only this presence.")] = None,
        compliance: Annotated[State | None, Query(description="Only this compliance state.")] = None,
        q: Annotated[str, Query(max_length=200, description="Words to find in id, region, labels.")] = "",
        limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
        offset: Annotated[int, Query(ge=0)] = 0,
        *,
        request: Request,
    ) -> api.EdgeList:
        """Edges, sorted by region and id, filtered; `total` counts before limit/offset."""
        found = [
            r
            for r in api.rows(fleet, shown_regions(request))
            if api.matches(
                r,
                region=region,
                presence=presence.value if presence else None,
                compliance=compliance.value if compliance else None,
                q=q,
            )
        ]
        return api.EdgeList(total=len(found), edges=found[offset : offset + limit], hub=api.hub_status(fleet))

    @router.get("/api/hub", response_model=api.HubStatus, tags=["fleet"])
    async def get_hub() -> api.HubStatus:
        """Whether the hub hears its own nats-server: if not, every answer is stale as of `since`."""
        return api.hub_status(fleet)

    @router.get(
        "/api/edges/{edge}",
        response_model=api.EdgeDetail,
        responses={404: {"description": "No such edge known to the hub."}},
        tags=["fleet"],
    )
    async def get_edge(edge: str, request: Request) -> api.EdgeDetail:
        view = fleet.edges.get(edge)
        shown = shown_regions(request)
        if view is None or (shown is not None and view.region not in shown):  # the same answer
            raise HTTPException(
                404,
                f"no edge {edge!r} is known to the hub (it has never reported); GET /api/edges lists them",
            )
        return api.edge_detail(fleet, view)

    @router.get("/api/regions", response_model=list[api.RegionRow], tags=["fleet"])
    async def list_regions(request: Request) -> list[api.RegionRow]:
        shown = shown_regions(request)
        return api.regions(fleet, api.rows(fleet, shown), shown)

    return router


def _profile_routes(fleet: FleetView) -> APIRouter:
    router = APIRouter()

    @router.get("/api/profiles", response_model=list[api.ProfileRow], tags=["profiles"])
    async def list_profiles(request: Request) -> list[api.ProfileRow]:
        history = {}
        for name in fleet.profiles:
            kept = await fleet.client.profiles.history(name, since_delete=True)
            history[name] = [
                api.Revision(revision=p.revision, updated_by=p.updated_by, updated_at=p.updated_at)
                for p in reversed(kept)
            ]
        return api.profiles(fleet, history, shown_regions(request))

    @router.get("/api/rollouts", response_model=list[api.RolloutView], tags=["profiles"])
    async def list_rollouts(request: Request, profile: str | None = None) -> list[api.RolloutView]:
        """The newest staged rollout of each profile (with `profile`: every rollout of it the
        hub keeps), newest first: its state and each wave's progress, as `fleetbus rollout
        status` shows them. Not for a token of some regions only (a rollout spans every
        region): 403."""
        if shown_regions(request) is not None:
            raise HTTPException(403, "a rollout spans every region; a token of some regions does not show it")
        return api.rollouts(fleet, profile)

    @router.get("/api/compliance", response_model=api.ComplianceSummary, tags=["profiles"])
    async def get_compliance(request: Request) -> api.ComplianceSummary:
        return api.compliance(fleet, shown_regions(request))

    @router.get("/api/audit", tags=["profiles"])
    async def list_audit(
        hours: Annotated[float, Query(gt=0, le=24 * 366)] = 24,
        actor: Annotated[str | None, Query(max_length=64)] = None,
        limit: Annotated[int, Query(ge=1, le=AUDIT_LIMIT)] = 200,
        *,
        request: Request,
    ) -> list[AuditRecord]:
        """The hub's audit trail (`fleetbus audit`): every write request its desk handled in
        the last `hours`, allowed, refused or failed, with the identity it verified; newest
        first. Not for a token of some regions only (the trail spans every region): 403."""
        if shown_regions(request) is not None:
            raise HTTPException(
                403, "the audit trail spans every region; a token of some regions does not show it"
            )
        records = await fleet.client.audit(since=utcnow() - timedelta(hours=hours))
        chosen = [r for r in reversed(records) if actor is None or r.actor == actor]
        return chosen[:limit]

    return router


def _event_routes(fleet: FleetView, metrics: DaemonMetrics | None) -> APIRouter:
    router = APIRouter()

    @router.get("/api/events", tags=["events"])
    async def list_events(
        kind: Annotated[str | None, Query(max_length=64)] = None,
        region: Annotated[str | None, Query(max_length=64)] = None,
        edge: Annotated[str | None, Query(max_length=64)] = None,
        severity: Severity | None = None,
        limit: Annotated[int, Query(ge=1, le=RECENT_EVENTS)] = 100,
        *,
        request: Request,
    ) -> list[Event]:
        """The most recent events the hub holds in memory (the last of each kind per edge at
        start, then every new one), newest first."""
        return api.recent_events(
            fleet,
            kind=kind,
            region=region,
            edge=edge,
            severity=severity,
            limit=limit,
            shown=shown_regions(request),
        )

    @router.get(
        "/api/stream",
        tags=["fleet"],
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {}}}},
    )
    async def stream(request: Request) -> StreamingResponse:
        """Server-Sent Events. `hello` {version} first; then, as things change, `edges`
        [EdgeRow] (rows that changed), `regions` [RegionRow] and `events` [Event] (new ones),
        `profiles` {} (profiles or overrides changed: fetch /api/profiles again)."""
        return StreamingResponse(
            _feed(fleet, request, metrics),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    return router


class _Counted:
    """Counts requests by route template (never by edge id) and status class."""

    def __init__(self, app: ASGIApp, counter: Counter) -> None:
        self.app, self.counter = app, counter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.counter.labels(route=route, status=f"{status // 100}xx").inc()


COOKIE = "fleetbus_token"
CLAIMS = "fleetbus_claims"
OPEN = frozenset({"/health"})
LOGIN_HINT = (
    "open the login URL `fleetbus dev up` printed, or send Authorization: Bearer <token> "
    "(an admin makes one: fleetbus token create --role viewer)"
)


class _Authenticated:
    """Every route but `/health` needs a token the hub signed (see the module's docstring)."""

    def __init__(self, app: ASGIApp, check: TokenCheck) -> None:
        self.app, self.check = app, check

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan" or (scope["type"] == "http" and scope["path"] in OPEN):
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":  # no websocket route: closed, whatever comes
            await send({"type": "websocket.close", "code": 1008})
            return
        request = Request(scope)
        bearer = request.headers.get("authorization", "")
        given = request.query_params.get("token")
        token = given or bearer.removeprefix("Bearer ").strip() or request.cookies.get(COOKIE)
        answer: Response | None = None
        if not token:
            answer = _error(401, f"this dashboard needs a token: {LOGIN_HINT}")
        else:
            try:
                claims = self.check(token)
            except TokenError as exc:
                answer = _error(401, f"{exc}; {LOGIN_HINT}")
            else:
                if scope["method"] not in ("GET", "HEAD"):
                    answer = _error(
                        403, f"the API is read-only ({claims.role.value} token): write with `fleetbus`"
                    )
                elif given:  # the login URL: keep the token in a cookie, and off the address bar
                    answer = _login(request, token, claims)
        if answer is None:
            scope.setdefault("state", {})[CLAIMS] = claims  # what the routes show it (regions)
            await self.app(scope, receive, send)
        else:
            await answer(scope, receive, send)


def shown_regions(request: Request) -> frozenset[str] | None:
    """The regions the request's token shows (None: every region; also without tokens, on a
    hub without a signing key)."""
    claims = request.scope.get("state", {}).get(CLAIMS)
    return frozenset(claims.regions) if isinstance(claims, ApiClaims) and claims.regions else None


def _error(status: int, why: str) -> Response:
    return JSONResponse({"error": why, "status": status}, status_code=status)


def _login(request: Request, token: str, claims: ApiClaims) -> Response:
    rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
    path = "/" + request.url.path.lstrip("/")  # never `//host`: a redirect elsewhere
    target = path + (f"?{urllib.parse.urlencode(rest)}" if rest else "")
    answer = RedirectResponse(target, status_code=303)
    seconds = max(0, int((claims.expires - utcnow()).total_seconds()))
    answer.set_cookie(COOKIE, token, max_age=seconds, httponly=True, samesite="strict", path="/")
    return answer


class _HubHeader:
    """Every /api answer says whether it is live: `X-Fleetbus-Hub`."""

    def __init__(self, app: ASGIApp, fleet: FleetView) -> None:
        self.app, self.fleet = app, fleet

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/api/"):
            await self.app(scope, receive, send)
            return

        async def marked(message: Message) -> None:
            if message["type"] == "http.response.start":
                hub = self.fleet.hub
                since = hub.since.isoformat() if hub.since else ""
                value = "connected" if hub.connected else f"disconnected; since={since}"
                message["headers"] = [*message.get("headers", []), (b"x-fleetbus-hub", value.encode())]
            await send(message)

        await self.app(scope, receive, marked)


def _sse(name: str, data: object) -> str:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


async def _feed(
    fleet: FleetView,
    request: Request,
    metrics: DaemonMetrics | None,
) -> AsyncIterator[str]:
    if metrics is not None:
        metrics.dashboard_streams.inc()
    try:
        async for chunk in _changes(fleet, request):
            yield chunk
    finally:
        if metrics is not None:
            metrics.dashboard_streams.dec()


async def _changes(fleet: FleetView, request: Request) -> AsyncIterator[str]:
    shown = shown_regions(request)
    version, policy = fleet.version, fleet.policy_version
    yield "retry: 2000\n\n"
    yield _sse("hello", {"version": version})
    hub = api.hub_status(fleet)
    yield _sse("hub", hub.model_dump(mode="json"))
    while not await request.is_disconnected():
        current = await fleet.changed_since(version, KEEPALIVE)
        if current == version:
            yield ": keepalive\n\n"
            continue
        now = api.hub_status(fleet)
        if (now.connected, now.since) != (hub.connected, hub.since):
            hub = now
            yield _sse("hub", hub.model_dump(mode="json"))
        changed = [
            v for v in fleet.edges.values() if v.version > version and (shown is None or v.region in shown)
        ]
        if changed:
            edges = [api.edge_row(fleet, v).model_dump(mode="json") for v in changed]
            yield _sse("edges", edges)
            regions = api.regions(fleet, api.rows(fleet, shown), shown)
            yield _sse("regions", [r.model_dump(mode="json") for r in regions])
        events = [
            e.model_dump(mode="json")
            for v, e in fleet.events
            if v > version and (shown is None or e.region in shown)
        ]
        if events:
            yield _sse("events", events)
        if fleet.policy_version != policy:
            policy = fleet.policy_version
            yield _sse("profiles", {})
        version = current
        await asyncio.sleep(SSE_PERIOD)  # a rate limit: coalesce bursts into one batch


def bind(host: str, port: int) -> socket.socket:
    """The dashboard's listening socket, bound now so a taken port fails the start clearly."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        msg = (
            f"cannot serve the dashboard on {host}:{port}: {exc.strerror}; "
            "set another port with FLEETBUS_DASHBOARD_PORT (0 picks a free one)"
        )
        raise ConfigError(msg) from exc
    sock.listen(128)
    sock.setblocking(False)  # noqa: FBT003 - the socket API
    return sock


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the daemon owns SIGINT/SIGTERM and stops this server by cancelling its task


async def serve(app: FastAPI, sock: socket.socket) -> None:
    """Serve `app` on `sock` until cancelled; then close connections (live streams too)
    within a second and return."""
    config = uvicorn.Config(
        app, log_config=None, access_log=False, lifespan="off", timeout_graceful_shutdown=1
    )
    server = _Server(config)
    task = asyncio.ensure_future(server.serve(sockets=[sock]))
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        server.should_exit = True
        while not task.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(task)  # a repeated cancel must not leave it half shut
        raise
