"""The admin HTTP surface of one worker: the console's files and the ``/admin/*`` routes.

* ``GET /admin/`` and ``GET /admin/<file>`` (a name with a suffix): the static
  console shipped in ``rtserver/admin_ui`` (no token: the page asks for one),
  with a strict Content-Security-Policy and ``ETag``/``no-cache``.
* Every other ``/admin/<route>`` (core ones below, ``/admin/health`` of the
  insurance domain, any domain route under ``/admin/``) needs
  ``Authorization: Bearer <JWT>`` with ``admin:monitor``: 401 without a valid
  token, 403 without the permission, answered before the route runs (so a
  refused request never reaches the database).

``GET /admin/session/exchange`` is the one exception: it takes the single-use token
of a login link instead (rtserver/admin_session.py) and answers a session token.

Core routes: ``/admin/session`` (who the token is, what the console may show),
``/admin/cluster`` (every worker of every node through Redis, or of this machine
through the bus hub; :mod:`rtserver.cluster_nodes`), ``/admin/connections``
(every worker's table, ``?user=``, ``?connection_id=``, ``?state=``,
``?limit=``), ``/admin/rooms`` (every worker's largest rooms with messages/s
and the bus's history depth, ``?q=``, ``?limit=``), ``/admin/presence``
(``?room=``: a room's members on every worker, through the bus, with each
worker's member count), ``/admin/connection_history`` (``?user=`` or
``?connection_id=``: the recorded connections of every worker, with close codes
and state history), ``/admin/audit`` (``admin_activity_logs``, newest first).
Rooms, connections and the per-worker presence are asked of every worker
through Redis or the hub; the workers that did not answer within
``workers.collect_timeout`` are listed in ``missing`` (:mod:`rtserver.admin_cluster`).
"""

from __future__ import annotations

import http
import ipaddress
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import msgspec
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from rtserver import jsonlog
from rtserver.admin_cluster import ClusterView, WorkerIdentity, merge_connections, merge_rooms
from rtserver.admin_queries import connection_history
from rtserver.admin_session import EXCHANGE_PATH, LinkRefused, LoginLinks
from rtserver.auth import AccessDenied, Principal, TokenError
from rtserver.bus.base import BusUnavailable
from rtserver.bus.embedded_client import EmbeddedBus
from rtserver.cluster_nodes import collect_nodes
from rtserver.config import Config
from rtserver.metrics import REGISTRY
from rtserver.node import Node
from rtserver.static_files import StaticDirectory
from rtserver.store import StoreUnavailable

__all__ = ["ADMIN_UI_ROOT", "CONSOLE_CSP", "MONITOR", "OPERATE", "AdminHttp", "json_response"]

log = jsonlog.get_logger("rtserver.admin_http")

#: The console's files (package data).
ADMIN_UI_ROOT = Path(__file__).resolve().parent / "admin_ui"
#: Read-only admin permission: every admin route and stream.
MONITOR = "admin:monitor"
#: Admin actions (disconnect, resolve from the console).
OPERATE = "admin:operate"

#: Same-origin scripts, styles, fetches and WebSockets only; no inline code, no frames.
CONSOLE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
               "connect-src 'self' ws: wss:; base-uri 'none'; form-action 'none'; "
               "frame-ancestors 'none'")

_REFUSED = REGISTRY.counter(
    "rtserver_admin_http_refused_total", "Admin HTTP requests refused, by reason", ("reason",))
_ANSWERED = REGISTRY.counter(
    "rtserver_admin_http_requests_total", "Admin HTTP requests answered, by route", ("route",))

Route = Callable[[Request], Awaitable[Response]]


def json_response(status: http.HTTPStatus, doc: object) -> Response:
    """A JSON answer that no cache keeps."""
    body = msgspec.json.encode(doc)
    headers = Headers([("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                       ("Cache-Control", "no-store")])
    return Response(status.value, status.phrase, headers, body)


def _refusal(status: http.HTTPStatus, error: str, message: str, action: str) -> Response:
    _REFUSED.inc(error)
    return json_response(status, {"error": error, "message": message, "action": action})


def _query(request: Request) -> dict[str, list[str]]:
    return parse_qs(urlsplit(request.path).query)


def _limit(query: dict[str, list[str]], default: int, maximum: int) -> int | Response:
    raw = query.get("limit", [str(default)])[0]
    try:
        value = int(raw)
    except ValueError:
        return _refusal(http.HTTPStatus.BAD_REQUEST, "invalid_field",
                        f"limit {raw[:40]!r} is not an integer",
                        f"Required action: pass ?limit=N with 1 <= N <= {maximum}")
    if not 1 <= value <= maximum:
        return _refusal(http.HTTPStatus.BAD_REQUEST, "invalid_field",
                        f"limit {value} is outside 1..{maximum}",
                        f"Required action: pass ?limit=N with 1 <= N <= {maximum}")
    return value


class AdminHttp:
    """The ``/admin/`` paths of one worker (built by :class:`rtserver.server.RtServer`)."""

    def __init__(self, config: Config, node: Node, worker_id: int,
                 cluster_bus: EmbeddedBus | None, domain_routes: dict[str, Route],
                 origin_allowed: Callable[[str, str | None], bool],
                 ui_root: Path = ADMIN_UI_ROOT, *, jwt_secret: str,
                 identity: WorkerIdentity) -> None:
        self.config = config
        self.node = node
        self.worker_id = worker_id
        self.cluster_bus = cluster_bus
        self.view = ClusterView(node, worker_id, cluster_bus, identity)
        self.origin_allowed = origin_allowed
        self.ui = StaticDirectory("/admin/", ui_root)
        self.login_links = LoginLinks(config, node.verifier, jwt_secret, lambda: node.store)
        self.routes: dict[str, Route] = {
            "/admin/session": self._session, "/admin/cluster": self._cluster,
            "/admin/connections": self._connections, "/admin/rooms": self._rooms,
            "/admin/audit": self._audit, "/admin/presence": self._presence,
            "/admin/connection_history": self._connection_history}
        for path, route in domain_routes.items():
            if path.startswith("/admin/"):
                if path in self.routes:
                    raise ValueError(f"domain route {path} collides with a core admin route. "
                                     "Required action: rename the domain route")
                self.routes[path] = route
        self._status_networks = [ipaddress.ip_network(n, strict=False)
                                 for n in config.admin.status_allow]

    # ------------------------------------------------------------ dispatch

    def status_allowed(self, remote: str | None) -> bool:
        """Whether a client may read ``/healthz`` and ``/metrics`` (``admin.status_allow``)."""
        if remote is None:
            return False
        try:
            address = ipaddress.ip_address(remote)
        except ValueError:
            return False
        mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
        return any(address in network or (mapped is not None and mapped in network)
                   for network in self._status_networks)

    def status_refused(self, path: str, remote: str | None) -> Response:
        """403 for ``/healthz`` or ``/metrics`` from a client outside ``admin.status_allow``."""
        log.info("status_refused", path=path, remote=remote)
        return _refusal(http.HTTPStatus.FORBIDDEN, "status_not_allowed",
                        f"{path} is not served to {remote}",
                        "Required action: add the scraper's network to admin.status_allow")

    async def response(self, path: str, request: Request,
                       remote: str | None = None) -> Response | None:
        """The answer for an ``/admin`` path, or None when ``path`` is not one
        (``remote``: the client's address, recorded with the use of a login link)."""
        if path == EXCHANGE_PATH:
            try:
                doc = await self.login_links.exchange(
                    request.headers.get("Authorization", ""), remote,
                    request.headers.get("User-Agent"))
            except LinkRefused as exc:
                return _refusal(exc.status, exc.error, exc.message, exc.action)
            _ANSWERED.inc(path)
            return json_response(http.HTTPStatus.OK, doc)
        if path in ("/admin", "/admin/"):
            return self._ui("index.html", request)
        if not path.startswith("/admin/"):
            return None
        name = path[len("/admin/"):]
        if "/" not in name and "." in name:
            return self._ui(name, request)
        route = self.routes.get(path)
        if route is None:
            return _refusal(http.HTTPStatus.NOT_FOUND, "not_found", f"no admin route {path[:200]}",
                            "Required action: use one of " + ", ".join(sorted(self.routes)))
        refused = self.authorize(request, MONITOR)
        if isinstance(refused, Response):
            return refused
        _ANSWERED.inc(path)
        return await route(request)

    def authorize(self, request: Request, permission: str) -> Principal | Response:
        """The principal of the request's bearer token holding ``permission``, or the refusal
        (401 without a valid token, 403 without the permission)."""
        header = request.headers.get("Authorization", "")
        action = (f"Required action: send Authorization: Bearer <JWT> with the {permission} "
                  "permission")
        if not header.startswith("Bearer "):
            return _refusal(http.HTTPStatus.UNAUTHORIZED, "auth_required", "no bearer token",
                            action)
        try:
            principal = self.node.verifier.verify(header[7:])
        except TokenError as exc:
            return _refusal(http.HTTPStatus.UNAUTHORIZED, exc.code, exc.message, action)
        if not principal.has(permission):
            return _refusal(http.HTTPStatus.FORBIDDEN, "forbidden",
                            f"the token lacks {permission}", action)
        return principal

    def _ui(self, name: str, request: Request) -> Response:
        response = self.ui.serve(name, request.headers)
        headers = response.headers
        headers["Content-Security-Policy"] = CONSOLE_CSP
        headers["X-Content-Type-Options"] = "nosniff"
        headers["Referrer-Policy"] = "no-referrer"
        headers["X-Frame-Options"] = "DENY"
        return response

    # ------------------------------------------------------------ core routes

    async def _session(self, request: Request) -> Response:
        principal = self.authorize(request, MONITOR)
        assert isinstance(principal, Principal)
        adm = self.config.admin
        # The page names its origin: browsers' WebSockets are admitted only from
        # server.allowed_origins, and the console says so instead of reconnecting blindly.
        origin = _query(request).get("origin", [None])[0]
        return json_response(http.HTTPStatus.OK, {
            "origin": origin,
            "origin_allowed": None if origin is None else self.origin_allowed(
                origin, request.headers.get("Host")),
            "user": principal.user, "permissions": sorted(principal.permissions),
            "expires_at": principal.expires_at, "can_operate": principal.has(OPERATE),
            "can_read_activity": principal.has("audit:read"),
            "refresh_seconds": adm.refresh_seconds, "stale_after": adm.stale_after,
            "ws_path": self.config.server.ws_path, "worker": self.worker_id,
            "database": self.node.store is not None})

    async def collect_cluster(self) -> tuple[bool, dict[str, Any]]:
        """One collection of the cluster document (``/admin/cluster``, ``start_cluster``)."""
        return await collect_nodes(self.view, self.node.health)

    async def _cluster(self, request: Request) -> Response:
        ok, doc = await self.collect_cluster()
        return json_response(http.HTTPStatus.OK if ok else http.HTTPStatus.SERVICE_UNAVAILABLE,
                             doc)

    async def _ask(self, name: str, args: dict[str, Any]) -> dict[str, Any] | Response:
        try:
            return await self.view.ask(name, args)
        except BusUnavailable as exc:
            log.error("admin_query_unavailable", query=name, error=str(exc))
            return _refusal(http.HTTPStatus.SERVICE_UNAVAILABLE, "bus_unavailable",
                            f"the workers cannot be asked through the bus: {exc}",
                            "Required action: check the bus (Redis or the supervisor's hub); "
                            "retry")

    async def _connections(self, request: Request) -> Response:
        query = _query(request)
        limit = _limit(query, 1000, 100_000)
        if isinstance(limit, Response):
            return limit
        doc = await self._ask("connections", {
            "limit": limit, "state": query.get("state", [None])[0],
            "user": query.get("user", [None])[0],
            "connection_id": query.get("connection_id", [None])[0]})
        if isinstance(doc, Response):
            return doc
        answers = doc.pop("workers")
        return json_response(http.HTTPStatus.OK, {
            **doc, "worker": self.worker_id,
            "total": sum(a["total"] for a in answers.values()),
            "workers": {wid: {"total": a["total"]} for wid, a in answers.items()},
            "connections": merge_connections(answers, limit)})

    async def _rooms(self, request: Request) -> Response:
        query = _query(request)
        limit = _limit(query, 50, 10_000)
        if isinstance(limit, Response):
            return limit
        doc = await self._ask("rooms", {"q": query.get("q", [""])[0], "limit": limit})
        if isinstance(doc, Response):
            return doc
        answers = doc.pop("workers")
        rooms = merge_rooms(answers, limit)
        history = await self.view.history([r["room"] for r in rooms]) if rooms else {
            "rooms": {}}
        held = history.get("rooms", {})
        for row in rooms:
            # None: the bus holds no stream of the room (or, with history_error, unknown).
            row["history"] = held.get(row["room"])
        error = ({k: history[k] for k in ("error", "message", "action")}
                 if "error" in history else None)
        return json_response(http.HTTPStatus.OK, {
            **doc, "worker": self.worker_id,
            "total": len({r[0] for a in answers.values() for r in a["rooms"]}),
            "workers": {wid: {"rooms": a["total"]} for wid, a in answers.items()},
            "rate_window": self.config.admin.room_rate_window,
            "history_bounds": history.get("bounds"), "history_error": error, "rooms": rooms})

    async def _presence(self, request: Request) -> Response:
        room = _query(request).get("room", [""])[0]
        action = "Required action: pass ?room=namespace:key of a namespace with presence"
        try:
            rules = self.node.room_rules(room)
        except AccessDenied as exc:
            return _refusal(http.HTTPStatus.BAD_REQUEST, "invalid_room", str(exc), action)
        if not rules.presence:
            return _refusal(http.HTTPStatus.BAD_REQUEST, "presence_disabled",
                            f"room {room!r} keeps no presence (its namespace's presence = "
                            "false)", action)
        limit = self.config.limits.presence_member_limit
        try:
            snap = await self.node.bus.presence(room, limit)
        except BusUnavailable as exc:
            return _refusal(http.HTTPStatus.SERVICE_UNAVAILABLE, "bus_unavailable", str(exc),
                            "Required action: check the bus; retry")
        doc = await self._ask("presence", {"room": room})
        if isinstance(doc, Response):
            return doc
        answers = doc.pop("workers")
        return json_response(http.HTTPStatus.OK, {
            **doc, "room": room, "count": snap.count,
            "truncated": snap.count > len(snap.members),
            "workers": {wid: {"members": a["members"]} for wid, a in answers.items()},
            "members_by_worker": {wid: a["members"] for wid, a in answers.items()},
            "members": [{"user": m.user or None, "connection_id": m.connection_id}
                        for m in snap.members]})

    async def _connection_history(self, request: Request) -> Response:
        query = _query(request)
        limit = _limit(query, 50, 1000)
        if isinstance(limit, Response):
            return limit
        user = query.get("user", [None])[0]
        conn_id = query.get("connection_id", [None])[0]
        if user is None and conn_id is None:
            return _refusal(http.HTTPStatus.BAD_REQUEST, "invalid_field",
                            "neither user nor connection_id is given",
                            "Required action: pass ?user=UUID or ?connection_id=ID")
        store = self.node.store
        if store is None:
            return _refusal(http.HTTPStatus.SERVICE_UNAVAILABLE, "feature_unavailable",
                            "connection records need the database",
                            "Required action: start with --database postgresql://...")
        try:
            rows = await connection_history(store, user=user, connection_id=conn_id,
                                            limit=limit)
        except StoreUnavailable as exc:
            return _refusal(http.HTTPStatus.SERVICE_UNAVAILABLE, "store_unavailable", str(exc),
                            "Required action: check the database; retry")
        return json_response(http.HTTPStatus.OK, {
            "records": rows,
            "note": "records are written in batches every database.record_flush_interval"})

    async def _audit(self, request: Request) -> Response:
        query = _query(request)
        limit = _limit(query, 100, 1000)
        if isinstance(limit, Response):
            return limit
        store = self.node.store
        if store is None:
            return _refusal(http.HTTPStatus.SERVICE_UNAVAILABLE, "feature_unavailable",
                            "the audit log needs the database",
                            "Required action: start with --database postgresql://...")
        try:
            rows = await store.query_admin_activity(
                admin_user_id=query.get("admin", [None])[0],
                action=query.get("action", [None])[0], resource_type=None, status=None,
                since=None, until=None, before_id=None, limit=limit)
        except StoreUnavailable as exc:
            return _refusal(http.HTTPStatus.SERVICE_UNAVAILABLE, "store_unavailable", str(exc),
                            "Required action: check the database; retry")
        return json_response(http.HTTPStatus.OK, {"entries": rows})
