"""Admin actions of the console (permission ``admin:operate``) and its alerts view.

* ``admin_disconnect {user?, connection_id?, code, reason}``: close one
  connection, or every connection of a user on every worker and node. A
  connection id on this worker is closed at once; any other is looked for on
  every worker of the node (embedded hub) or of the cluster (Redis)
  (``HandlerContext.close_connection_anywhere``): ``closed`` names the worker
  and node, ``not_found`` says every worker answered without it,
  ``workers_not_answering`` names the workers that did not answer in time. For a
  user, an ``admin_close`` user message goes through the bus to the user's
  connections, and the user-message filter installed here (first, before any
  other) closes the matching ones with the code and reason and never delivers
  the control frame itself.
* ``admin_resolve_alert {alert_id, comment}``: resolve a stored alert; the
  other admins get ``alert_resolved``.
* ``GET /admin/alerts?state=open|resolved|all&limit=N`` (the core's admin gate
  checked ``admin:monitor``): alerts newest first.

Every action, whatever its outcome, is one row of ``admin_activity_logs``
(who, what, target, result, the code/reason or comment) shown by the console's
audit view (``GET /admin/audit``).
"""

from __future__ import annotations

import http
from typing import Annotated, Any
from urllib.parse import parse_qs, urlsplit

import msgspec
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from rtserver.context import BusUnavailable, Connection
from rtserver.jsonlog import get_logger
from rtserver.metrics import REGISTRY
from rtserver.protocol.messages import ClientMessage, MessageId, ServerMessage
from rtserver.router import Router
from rtserver.store import StoreUnavailable

from .alerts import Alerts
from .domain import NOT_FOUND, Domain, remote_ip
from .messages import AlertResolved
from .queries import alert_history

__all__ = ["OPERATE", "AdminActionDone", "AdminActions", "AdminClose", "AdminDisconnect",
           "AdminResolveAlert", "allowed_close_code"]

log = get_logger("rtserver.domains.insurance.admin_actions")

#: The permission of every admin action.
OPERATE = "admin:operate"
#: Error code: the connection was not found and some workers did not answer.
NOT_ANSWERING = "workers_not_answering"
#: Close codes an operator may choose (RFC 6455 codes a server sends, and the 4000s).
_SERVER_CODES = frozenset({1000, 1001, 1008, 1011, 1012, 1013})
#: A close reason travels in the close frame: at most 123 bytes of UTF-8.
_REASON_MAX_BYTES = 123
_COMMENT_MAX = 500
_ALERTS_MAX = 500

ACTIONS = REGISTRY.counter(
    "rtserver_admin_actions_total", "Admin actions by action and result", ("action", "result"))
CLOSED = REGISTRY.counter(
    "rtserver_admin_closed_connections_total", "Connections closed by an admin_disconnect")


def allowed_close_code(code: int) -> bool:
    """Whether an operator may close a connection with ``code``."""
    return code in _SERVER_CODES or 4000 <= code <= 4999


class AdminDisconnect(ClientMessage, tag="admin_disconnect", frozen=True):
    """Close a connection (``connection_id``) or all of a user's connections (``user``)."""

    code: int
    reason: str
    user: str | None = None
    connection_id: str | None = None
    id: MessageId = None


class AdminResolveAlert(ClientMessage, tag="admin_resolve_alert", frozen=True):
    """Resolve an alert with a comment (kept in the audit log)."""

    alert_id: Annotated[int, msgspec.Meta(ge=1)]
    comment: str
    id: MessageId = None


class AdminActionDone(ServerMessage, tag="admin_action_done", frozen=True):
    """The outcome of an admin action (also written to ``admin_activity_logs``)."""

    action: str
    target: str
    result: str
    detail: str
    id: MessageId = None


class AdminClose(ServerMessage, tag="admin_close", frozen=True):
    """Control user message: close the user's connections (``connection_id``: only that
    one). Never delivered to a client."""

    code: int
    reason: str
    connection_id: str | None
    by: str


_CLOSE_PREFIX = b'{"type":"admin_close"'


class AdminActions:
    """The admin actions of one node."""

    def __init__(self, domain: Domain, alerts: Alerts) -> None:
        self.domain = domain
        self.alerts = alerts

    def install(self, router: Router) -> None:
        """Register the messages, the close filter (first of all filters), the route."""
        router.register(AdminDisconnect, self.domain.bind(self.disconnect))
        router.register(AdminResolveAlert, self.domain.bind(self.resolve))
        router.user_message_filters.insert(0, self.close_filter)
        router.add_http_route("/admin/alerts", self.alerts_route)

    # ------------------------------------------------------------ audit

    async def _audit(self, conn: Connection, action: str, resource_type: str, target: str,
                     result: str, details: dict[str, Any]) -> None:
        ACTIONS.inc(action, result)
        log.info("admin_action", admin=conn.user, action=action, target=target, result=result)
        store = self.domain.ctx.store
        if store is None:
            log.warning("admin_action_not_audited", action=action, target=target,
                        reason="the server runs without a database",
                        action_required="start with --database to keep the audit log")
            return
        try:
            await store.log_admin_activity(
                admin_user_id=conn.user or "", action=action, resource_type=resource_type,
                resource_id=target, status=result, details=details,
                ip_address=remote_ip(conn.remote),
                user_agent=conn.user_agent or None)
        except StoreUnavailable as exc:
            log.error("admin_action_not_audited", action=action, target=target,
                      error=str(exc), action_required="check the database")

    def _done(self, conn: Connection, action: str, target: str, result: str, detail: str,
              msg_id: MessageId) -> None:
        self.domain.reply(conn, AdminActionDone(action=action, target=target, result=result,
                                                detail=detail, id=msg_id))

    # ------------------------------------------------------------ disconnect

    async def disconnect(self, conn: Connection, msg: AdminDisconnect) -> None:
        """``admin_disconnect``: close a connection or a user's connections everywhere."""
        d = self.domain
        if not d.require_permission(conn, OPERATE, "admin_disconnect", msg.id):
            return
        if not allowed_close_code(msg.code):
            d.validation_error(conn, "code", f"close code {msg.code} cannot be chosen",
                               "Required action: choose 1000, 1001, 1008, 1011, 1012, 1013 "
                               "or a code in 4000..4999", msg.id)
            return
        if not msg.reason or len(msg.reason.encode()) > _REASON_MAX_BYTES:
            d.validation_error(conn, "reason", "the reason is empty or over 123 bytes",
                               "Required action: give a reason of 1..123 bytes (UTF-8)",
                               msg.id)
            return
        if msg.user is None and msg.connection_id is None:
            d.validation_error(conn, "user", "neither user nor connection_id is given",
                               "Required action: name a user or a connection_id", msg.id)
            return
        details = {"code": msg.code, "reason": msg.reason, "user": msg.user,
                   "connection_id": msg.connection_id}
        resource_type = "connection" if msg.connection_id is not None else "user"
        target = msg.connection_id if msg.connection_id is not None else str(msg.user)
        local = (d.ctx.connection(msg.connection_id)
                 if msg.connection_id is not None else None)
        if local is not None and (msg.user is None or local.user == msg.user):
            d.ctx.close_connection(local, msg.code, msg.reason)
            CLOSED.inc()
            await self._audit(conn, "admin_disconnect", resource_type, target, "closed", details)
            self._done(conn, "admin_disconnect", target, "closed",
                       f"closed on worker {d.ctx.worker_id} with {msg.code}", msg.id)
            return
        if msg.connection_id is not None:
            await self._disconnect_anywhere(conn, msg, msg.connection_id, details)
            return
        assert msg.user is not None
        try:
            await d.ctx.send_to_user(msg.user, AdminClose(
                code=msg.code, reason=msg.reason, connection_id=msg.connection_id,
                by=conn.user or ""))
        except BusUnavailable:
            await self._audit(conn, "admin_disconnect", resource_type, target,
                              "bus_unavailable", details)
            raise
        await self._audit(conn, "admin_disconnect", resource_type, target, "sent", details)
        self._done(conn, "admin_disconnect", target, "sent",
                   f"close {msg.code} sent to every worker holding connections of {msg.user}",
                   msg.id)

    async def _disconnect_anywhere(self, conn: Connection, msg: AdminDisconnect,
                                   connection_id: str, details: dict[str, Any]) -> None:
        """A connection id not on this worker: every worker is asked to close it."""
        d = self.domain
        try:
            found = await d.ctx.close_connection_anywhere(
                connection_id, msg.code, msg.reason, user=msg.user, by=conn.user or "")
        except BusUnavailable:
            await self._audit(conn, "admin_disconnect", "connection", connection_id,
                              "bus_unavailable", details)
            raise
        details = {**details, "closed_by": found.closed_by, "node": found.node,
                   "missing": found.missing, "failed": found.failed, "scope": found.scope,
                   "expected_workers": found.expected_workers}
        if found.closed_by is not None:
            CLOSED.inc()
            await self._audit(conn, "admin_disconnect", "connection", connection_id, "closed",
                              details)
            self._done(conn, "admin_disconnect", connection_id, "closed",
                       f"closed on worker {found.closed_by} of node {found.node} with "
                       f"{msg.code}", msg.id)
            return
        silent = [*found.missing, *found.failed]
        where = {"cluster": "any node", "node": "any worker of this node"}.get(
            found.scope, f"worker {d.ctx.worker_id}")
        if silent:
            await self._audit(conn, "admin_disconnect", "connection", connection_id,
                              NOT_ANSWERING, details)
            d.error(conn, NOT_ANSWERING, f"connection {connection_id} was not found on the "
                    f"workers that answered; {len(silent)} of {found.expected_workers} did "
                    f"not answer: {', '.join(silent)}",
                    "Required action: retry when those workers answer (the connection may be "
                    "on one of them; the cluster panel shows them)", msg.id)
            return
        await self._audit(conn, "admin_disconnect", "connection", connection_id, "not_found",
                          details)
        owner = f" of user {msg.user}" if msg.user is not None else ""
        d.error(conn, NOT_FOUND, f"connection {connection_id}{owner} is not on {where} "
                f"({found.expected_workers} worker(s) answered)",
                "Required action: look the connection up again; it may have closed", msg.id)

    def close_filter(self, conn: Connection, payload: bytes) -> bool:
        """User-message filter: carry out ``admin_close`` (never delivered); pass the rest."""
        if not payload.startswith(_CLOSE_PREFIX):
            return True
        close = msgspec.json.decode(payload, type=AdminClose)
        if close.connection_id is None or close.connection_id == conn.id:
            log.info("admin_close", connection_id=conn.id, user=conn.user, code=close.code,
                     reason=close.reason, by=close.by)
            self.domain.ctx.close_connection(conn, close.code, close.reason)
            CLOSED.inc()
        return False

    # ------------------------------------------------------------ alerts

    async def resolve(self, conn: Connection, msg: AdminResolveAlert) -> None:
        """``admin_resolve_alert``: resolve with a comment; audited; admins told."""
        d = self.domain
        if not d.require_permission(conn, OPERATE, "admin_resolve_alert", msg.id):
            return
        comment = msg.comment.strip()
        if not 1 <= len(comment) <= _COMMENT_MAX:
            d.validation_error(conn, "comment", f"the comment must have 1..{_COMMENT_MAX} "
                               "characters", "Required action: say why the alert is resolved",
                               msg.id)
            return
        store = d.ctx.require_store(conn, "admin_resolve_alert", msg.id)
        if store is None:
            return
        target = str(msg.alert_id)
        result = await d.timed_query(store.resolve_alert(msg.alert_id, conn.user or ""))
        alert = result.alert
        details = {"comment": comment,
                   "alert_type": alert.alert_type if alert is not None else None}
        await self._audit(conn, "admin_resolve_alert", "system_alert", target, result.outcome,
                          details)
        if result.outcome == "not_found" or alert is None:
            d.error(conn, NOT_FOUND, f"alert {msg.alert_id} does not exist",
                    "Required action: resolve an alert id from the alerts view", msg.id)
            return
        resolved_at = alert.resolved_at.isoformat() if alert.resolved_at else None
        if result.outcome == "already_resolved":
            d.error(conn, "already_resolved", f"alert {alert.id} was already resolved by "
                    f"{alert.resolved_by} at {resolved_at}", "Required action: none", msg.id)
            return
        await self.alerts.deliver(AlertResolved(alert_id=alert.id, resolved_by=alert.resolved_by,
                                                resolved_at=resolved_at))
        self._done(conn, "admin_resolve_alert", target, "resolved", comment, msg.id)

    async def alerts_route(self, request: Request) -> Response:
        """``GET /admin/alerts``: alerts newest first (``state``, ``limit``)."""
        query = parse_qs(urlsplit(request.path).query)
        state = query.get("state", ["open"])[0]
        states: dict[str, bool | None] = {"open": False, "resolved": True, "all": None}
        raw_limit = query.get("limit", ["100"])[0]
        if state not in states or not raw_limit.isdigit() or not (
                1 <= int(raw_limit) <= _ALERTS_MAX):
            return _json(http.HTTPStatus.BAD_REQUEST, {
                "error": "invalid_field", "message": "state or limit is invalid",
                "action": f"Required action: state=open|resolved|all, limit=1..{_ALERTS_MAX}"})
        store = self.domain.ctx.store
        if store is None:
            return _json(http.HTTPStatus.SERVICE_UNAVAILABLE, {
                "error": "feature_unavailable", "message": "alerts are stored in the database",
                "action": "Required action: start with --database postgresql://..."})
        try:
            alerts = await alert_history(store, resolved=states[state], limit=int(raw_limit))
        except StoreUnavailable as exc:
            return _json(http.HTTPStatus.SERVICE_UNAVAILABLE, {
                "error": "store_unavailable", "message": str(exc),
                "action": "Required action: check the database; retry"})
        return _json(http.HTTPStatus.OK, {"state": state, "alerts": alerts})


def _json(status: http.HTTPStatus, doc: object) -> Response:
    body = msgspec.json.encode(doc)
    headers = Headers([("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                       ("Cache-Control", "no-store")])
    return Response(status.value, status.phrase, headers, body)
