"""The admin API (:9070): deployments, services, invocations, health and the schema registry view."""

from __future__ import annotations

from datetime import datetime, UTC
from typing import Any

from aiohttp import web

from keystate.schemas.ids import InvalidIdError, InvocationId

from .admin_query import add_query_routes
from .admin_deployments import (
    RUNTIME_KEY,
    add_deployment_routes,
    deployment_json,
    read_model,
    resume_deployment,
    service_json,
)
from .admin_restart import add_restart_routes
from .admin_services import add_service_routes
from .admin_state import add_state_routes
from .auth import ADMIN, auth_middlewares
from .commands import produce_command
from .errors import BadRequest, Conflict, NotFound, error_middleware
from .http_limits import HTTP_LIMITS_KEY, limits_middleware
from .metrics import InvocationCounts, add_metrics_route, http_metrics_middleware
from .readmodel import InvocationSummary
from .readmodel_store import decode_cursor, encode_cursor
from .restate_paths import invocation_status
from .schema_registry import add_schema_registry_routes
from .results import target_text
from .runtime import IngressRuntime
from .admin_ui import UI_PATHS, add_ui_routes

__all__ = ["admin_app", "deployment_json", "invocation_json", "service_json"]

_MAX_REQUEST_BYTES = 1024 * 1024
# Open without a token: liveness probes carry none, and it tells no more than whether the admin is up;
# the UI's static files hold no data (its API calls carry the token the user pastes).
_OPEN_PATHS = ("/health", *UI_PATHS)
_DEFAULT_LIMIT = 100
_MAX_LIMIT = 10_000
_PAST = {"cancel": "cancelled", "kill": "killed", "resume": "resumed", "pause": "paused"}
# PATCH /invocations/{id}/{action}: the command it appends to the log.
_ACTIONS = {
    "cancel": "keystate.CancelCommand",
    "kill": "keystate.KillCommand",
    "resume": "keystate.ResumeCommand",
    "purge": "keystate.PurgeCommand",
    "pause": "keystate.PauseCommand",
}


def admin_app(runtime: IngressRuntime) -> web.Application:
    """The admin application; `runtime` must be started before it serves requests."""
    authenticate = auth_middlewares(runtime.settings.admin_token, ADMIN, open_paths=_OPEN_PATHS)
    app = web.Application(
        client_max_size=_MAX_REQUEST_BYTES,
        middlewares=[http_metrics_middleware("admin"), error_middleware, limits_middleware, *authenticate],
    )
    app[RUNTIME_KEY] = runtime
    app[HTTP_LIMITS_KEY] = runtime.settings.http_limits
    add_ui_routes(app)
    add_deployment_routes(app)
    add_state_routes(app)
    add_service_routes(app)
    app.router.add_get("/invocations", _list_invocations)
    app.router.add_get("/invocations/{id}", _get_invocation)
    app.router.add_delete("/invocations/{id}", _delete_invocation)
    add_restart_routes(app)  # before the generic action route
    app.router.add_patch("/invocations/{id}/{action}", _patch_invocation)
    app.router.add_get("/health", _health)
    app.router.add_get("/identity", _identity)
    add_metrics_route(app, InvocationCounts(runtime.invocations.status_counts))
    add_schema_registry_routes(app, runtime.settings.topics)
    add_query_routes(app)
    return app


async def _health(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME_KEY]
    if not runtime.ready:
        return web.json_response(
            {"status": "starting", "meta": runtime.meta.ready, "results": runtime.results.ready}, status=503
        )
    return web.json_response({"status": "ok"})


async def _identity(request: web.Request) -> web.Response:
    """The public key(s) keystate signs requests to deployments with: what `identity_keys` must list."""
    identity = request.app[RUNTIME_KEY].settings.identity
    if identity is None:
        return web.json_response({"public_keys": [], "signature_scheme": "unsigned"})
    return web.json_response({"public_keys": [identity.public_key], "signature_scheme": "v1"})


def _iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def invocation_json(summary: InvocationSummary) -> dict[str, Any]:
    target = summary.target
    return {
        "id": summary.invocation_id,
        "target": target_text(target),
        "service": target["service"],
        "handler": target["handler"],
        "key": target.get("key"),
        "status": summary.status,
        "completion_status": summary.completion_status,
        "deployment_id": summary.deployment_id,
        "attempt": summary.attempt,
        "retry_count": summary.retry_count,
        "last_failure": summary.last_failure,
        "idempotency_key": summary.idempotency_key,
        "created_at": _iso(summary.created_at_ms),
        "modified_at": _iso(summary.modified_at_ms),
        "scheduled_at": _iso(summary.execute_at_ms),
    }


def _invocation_id(request: web.Request) -> str:
    text = request.match_info["id"]
    try:
        return str(InvocationId.parse(text))
    except InvalidIdError as exc:
        raise BadRequest(f"{exc}; list invocations with GET /invocations") from None


async def _list_invocations(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME_KEY]
    model = read_model(runtime)
    text = request.query.get("limit", str(_DEFAULT_LIMIT))
    try:
        limit = int(text)
    except ValueError:
        limit = -1
    if not 1 <= limit <= _MAX_LIMIT:
        raise BadRequest(f"limit={text!r} must be a whole number from 1 to {_MAX_LIMIT}")
    cursor = request.query.get("cursor") or None
    try:
        after = None if cursor is None else decode_cursor(cursor)
    except ValueError as exc:
        raise BadRequest(f"{exc}; pass the next_cursor of the previous page, or no cursor for the first page") from None
    page = await model.page(
        limit=limit,
        statuses=[s.strip() for s in request.query.get("status", "").split(",") if s.strip()],
        service=request.query.get("service") or None,
        deployment_id=request.query.get("deployment") or None,
        after=after,
    )
    return web.json_response(
        {
            "invocations": [invocation_json(s) for s in page.invocations],
            "total": page.total,
            "next_cursor": None if page.next_cursor is None else encode_cursor(page.next_cursor),
        }
    )


async def _get_invocation(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME_KEY]
    invocation_id = _invocation_id(request)
    summary = await read_model(runtime).get(invocation_id)
    if summary is None:
        raise NotFound(
            f"unknown invocation {invocation_id}: it never existed, was purged, or is too new for the read model; "
            "list invocations with GET /invocations"
        )
    return web.json_response(invocation_json(summary))


async def _patch_invocation(request: web.Request) -> web.Response:
    action = request.match_info["action"]
    if action not in _ACTIONS:
        raise NotFound(
            f"no action {action!r} on invocations; use PATCH /invocations/{{id}}/{'|'.join([*_ACTIONS, 'restart-as-new'])}"
        )
    return await _act(request, action)


async def _delete_invocation(request: web.Request) -> web.Response:
    """Restate's older form: `DELETE /invocations/{id}?mode=cancel|kill|purge` (cancel by default)."""
    mode = request.query.get("mode", "cancel").lower()
    if mode not in ("cancel", "kill", "purge"):
        raise BadRequest(f"mode={mode!r} must be cancel, kill or purge")
    return await _act(request, mode)


async def _act(request: web.Request, action: str) -> web.Response:
    runtime = request.app[RUNTIME_KEY]
    invocation_id = _invocation_id(request)
    model = runtime.invocations
    known = await model.get(invocation_id) if model.ready and model.error is None else None
    completed, how = (known.completed, known.completion_status or known.status) if known is not None else (False, "")
    if known is None or (action == "purge" and not completed):
        # The read model lags behind (a new invocation, or one that just completed): ask the partition
        # processor, which knows for sure. A completion it shows is final: refusing on it needs no check.
        reply = await invocation_status(runtime, InvocationId.parse(invocation_id))
        if reply["status"] == "UNKNOWN":
            raise NotFound(
                f"unknown invocation {invocation_id}: it never existed, or it completed and was purged; "
                "list invocations with GET /invocations"
            )
        completed, how = reply["status"] != "RUNNING", reply["status"]
    if action == "purge" and not completed:
        raise Conflict(
            f"invocation {invocation_id} has not completed (it is {how}); only completed invocations "
            f"can be purged: cancel or kill it first (PATCH /invocations/{invocation_id}/cancel)"
        )
    if action != "purge" and completed:
        raise Conflict(
            f"invocation {invocation_id} has already completed ({how}), so it cannot be "
            f"{_PAST[action]}; forget it with PATCH /invocations/{invocation_id}/purge"
        )
    record: dict[str, Any] = {"invocation_id": invocation_id}
    if action in ("cancel", "kill"):
        record["reason"] = f"{action} requested through the admin API"
    elif action == "pause":
        record["reason"] = (
            f"paused through the admin API; resume it with PATCH /invocations/{invocation_id}/resume, or kill it"
        )
    elif action == "resume":
        record["deployment_id"] = resume_deployment(runtime, invocation_id, request.query.get("deployment"), known)
    await produce_command(
        runtime,
        _ACTIONS[action],
        record,
        key=invocation_id,
        partition_key=InvocationId.parse(invocation_id).partition_key,
        invocation_id=invocation_id,
        what=f"the {action} of {invocation_id}",
    )
    return web.Response(status=202)
