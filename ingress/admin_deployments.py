"""The admin API's deployment routes: register, list and describe with each one's state, remove."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, UTC
from typing import Any

from aiohttp import web

from keystate.schemas.ids import InvocationId
from keystate.server.discovery import discover
from keystate.server.errors import RegistrationConflict
from keystate.server.meta import register, unregister
from keystate.server.service_settings import completion_retention_ms, journal_retention_ms

from .commands import produce_command
from .errors import BadRequest, Conflict, NotFound, Unavailable
from .readmodel import InvocationReadModel, InvocationSummary
from .runtime import IngressRuntime

__all__ = [
    "HANDLER_KIND_NAMES",
    "PAUSE_COMMAND",
    "RUNTIME_KEY",
    "SERVICE_TYPE_NAMES",
    "add_deployment_routes",
    "deployment_json",
    "flag",
    "pause_reason",
    "read_model",
    "resume_deployment",
    "service_json",
]

RUNTIME_KEY = web.AppKey("admin_runtime", IngressRuntime)
PAUSE_COMMAND = "keystate.PauseCommand"
# Started, not completed: the states of an invocation pinned to its deployment.
_PINNED_STATES = ("INVOKED", "SUSPENDED", "BACKING_OFF", "PAUSED")
_PAGE = 500


def add_deployment_routes(app: web.Application) -> None:
    app.router.add_post("/deployments", _register)
    app.router.add_get("/deployments", _list_deployments)
    app.router.add_get("/deployments/{id}", _get_deployment)
    app.router.add_delete("/deployments/{id}", _delete_deployment)


# The admin's JSON names types as Restate's admin API does; the records and discovery keep the manifest's.
SERVICE_TYPE_NAMES = {"SERVICE": "Service", "VIRTUAL_OBJECT": "VirtualObject", "WORKFLOW": "Workflow"}
HANDLER_KIND_NAMES = {"EXCLUSIVE": "Exclusive", "SHARED": "Shared", "WORKFLOW": "Workflow"}
_NOT_SETTINGS = ("service_name", "modified_at_ms")


def service_json(service: dict[str, Any], deployment_id: str, settings: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A service as the admin API shows it; `ty` is Service|VirtualObject|Workflow, a handler's Exclusive|Shared|Workflow.

    `service` and `settings` as `MetaState.service` gives them (effective metadata, the PATCH override):
    the *_ms fields are the effective values, null where the processor's default applies.
    """
    completion = completion_retention_ms(service, settings)
    workflow = service["service_type"] == "WORKFLOW"
    return {
        "name": service["name"],
        "ty": SERVICE_TYPE_NAMES.get(service["service_type"], service["service_type"]),
        "deployment_id": deployment_id,
        "handlers": [
            {
                "name": h["name"],
                "ty": HANDLER_KIND_NAMES.get(h["kind"], h["kind"]),
                "input_content_type": h.get("input_content_type"),
                "output_content_type": h.get("output_content_type"),
                "retry_policy": h.get("retry_policy"),
                "ingress_private": bool(h.get("ingress_private", False)),
            }
            for h in service["handlers"]
        ],
        "retry_policy": service.get("retry_policy"),
        "inactivity_timeout_ms": service.get("inactivity_timeout_ms"),
        "abort_timeout_ms": service.get("abort_timeout_ms"),
        "journal_retention_ms": journal_retention_ms(service, settings),
        "idempotency_retention_ms": None if workflow else completion,
        "workflow_completion_retention_ms": completion if workflow else None,
        "public": not service.get("ingress_private", False),
        "ingress_private": bool(service.get("ingress_private", False)),
        "forward_headers": list(service.get("forward_headers", [])),
        # Which settings were changed with PATCH /services/{name} (they outlive re-registrations).
        "overridden": sorted(k for k, v in (settings or {}).items() if v is not None and k not in _NOT_SETTINGS),
    }


def deployment_json(record: dict[str, Any]) -> dict[str, Any]:
    created = datetime.fromtimestamp(record["created_at_ms"] / 1000, tz=UTC)
    return {
        "id": record["deployment_id"],
        "uri": record["uri"],
        "protocol_version": record["protocol_version"],
        "transports": list(record["transports"]),
        "services": [service_json(s, record["deployment_id"]) for s in record["services"]],
        "created_at": created.isoformat().replace("+00:00", "Z"),
    }


async def _with_state(runtime: IngressRuntime, record: dict[str, Any]) -> dict[str, Any]:
    """`deployment_json` plus its lifecycle state.

    active: the latest deployment of some service (new invocations go to it); draining: no longer
    latest, but started invocations are pinned to it; drained: neither, safe to remove. While the
    read model is still reading, a deployment that is not latest is "unknown".
    """
    deployment_id = record["deployment_id"]
    latest_for = runtime.meta.state.latest_for(deployment_id)
    model = runtime.invocations
    pinned = await model.pinned_to(deployment_id) if model.ready and model.error is None else None
    if latest_for:
        state = "active"
    elif pinned is None:
        state = "unknown"
    else:
        state = "draining" if pinned else "drained"
    return {**deployment_json(record), "state": state, "latest_for": latest_for, "pinned_invocations": pinned}


async def _register(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME_KEY]
    try:
        body = await request.json()
    except ValueError as exc:
        raise BadRequest(f'the body must be JSON like {{"uri": "http://localhost:9080"}} ({exc})') from exc
    if not isinstance(body, dict) or "uri" not in body:
        raise BadRequest('the body must be a JSON object with the deployment\'s "uri", e.g. {"uri": "http://localhost:9080"}')
    options = {}
    for name in ("force", "breaking"):
        given = body.get(name, False)
        if not isinstance(given, bool):
            raise BadRequest(f'"{name}" must be true or false, not {given!r}')
        options[name] = given
    if runtime.http is None:
        raise Unavailable("the admin API is starting; retry in a moment")
    settings = runtime.settings
    record = await discover(
        body["uri"], settings.discovery_timeout, allow=settings.deployment_allow, identity=settings.identity
    )
    try:
        registration = await register(
            runtime.meta, runtime.require_producer(), record, timeout=settings.register_timeout, **options
        )
    except RegistrationConflict as exc:
        raise Conflict(str(exc)) from exc
    payload = await _with_state(runtime, registration.deployment)
    payload["overwritten"] = registration.overwritten
    return web.json_response(payload, status=201 if registration.created else 200)


async def _list_deployments(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME_KEY]
    records = list(runtime.meta.state.deployments.values())
    return web.json_response({"deployments": [await _with_state(runtime, r) for r in records]})


def _deployment(runtime: IngressRuntime, deployment_id: str) -> dict[str, Any]:
    record = runtime.meta.state.deployments.get(deployment_id)
    if record is None:
        raise NotFound(f"unknown deployment {deployment_id!r}; list deployments with GET /deployments")
    return record


async def _get_deployment(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME_KEY]
    return web.json_response(await _with_state(runtime, _deployment(runtime, request.match_info["id"])))


def pause_reason(deployment_id: str, invocation_id: str) -> str:
    """The last_failure message of an invocation paused because its deployment was removed."""
    return (
        f"paused: deployment {deployment_id}, which this invocation is pinned to, was removed with force; resume it "
        f"on another deployment with PATCH /invocations/{invocation_id}/resume?deployment=<id> (or =latest), "
        "or kill it"
    )


async def _pinned_ids(model: InvocationReadModel, deployment_id: str) -> list[str]:
    ids: list[str] = []
    after = None
    while True:
        page = await model.page(limit=_PAGE, statuses=_PINNED_STATES, deployment_id=deployment_id, after=after)
        ids += [s.invocation_id for s in page.invocations if s.status != "PAUSED"]
        if page.next_cursor is None:
            return ids
        after = page.next_cursor


async def _delete_deployment(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME_KEY]
    deployment_id = request.match_info["id"]
    _deployment(runtime, deployment_id)
    force = flag(request, "force")
    hint = "" if force else f"; remove the deployment anyway with DELETE /deployments/{deployment_id}?force=true"
    # With force too: the pinned invocations must be found to be paused.
    model = read_model(runtime, hint)
    paused: list[str] = []
    if not force:
        pinned = await model.pinned_to(deployment_id)
        if pinned:
            raise Conflict(
                f"deployment {deployment_id} has {pinned} invocation{'s' if pinned != 1 else ''} pinned to it "
                "that have not completed (an invocation finishes on the deployment it started on); wait for them, "
                f"cancel or kill them (GET /invocations?deployment={deployment_id} lists them), or remove it anyway "
                f"with DELETE /deployments/{deployment_id}?force=true, which pauses them until you resume them "
                "on another deployment"
            )
    else:
        # Paused before the tombstone, so no retry of theirs runs on whatever is latest meanwhile.
        for invocation_id in await _pinned_ids(model, deployment_id):
            await produce_command(
                runtime,
                PAUSE_COMMAND,
                {"invocation_id": invocation_id, "reason": pause_reason(deployment_id, invocation_id), "deployment_id": deployment_id},
                key=invocation_id,
                partition_key=InvocationId.parse(invocation_id).partition_key,
                invocation_id=invocation_id,
                what=f"the pause of {invocation_id}",
            )
            paused.append(invocation_id)
    successors = await unregister(
        runtime.meta, runtime.require_producer(), deployment_id, timeout=runtime.settings.register_timeout
    )
    return web.json_response(
        {
            "id": deployment_id,
            "removed": True,
            "latest": [{"service": name, "deployment_id": latest} for name, latest in sorted(successors.items())],
            "paused_invocations": paused,
        },
        status=202,
    )


def flag(request: web.Request, name: str) -> bool:
    value = request.query.get(name)
    if value is None:
        return False
    if value.lower() in ("", "true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise BadRequest(f"query parameter {name}={value!r} must be true or false")


def read_model(runtime: IngressRuntime, hint: str = "") -> InvocationReadModel:
    model = runtime.invocations
    if model.error is not None:
        raise Unavailable(f"the invocation read model cannot read {model.topic}: {model.error}{hint}")
    if not model.ready:
        raise Unavailable(
            f"the invocation read model is still reading {model.topic} ({model.records_seen} records so far); "
            f"retry in a moment{hint}"
        )
    return model


def resume_deployment(
    runtime: IngressRuntime, invocation_id: str, given: str | None, known: InvocationSummary | None
) -> str | None:
    """The deployment `PATCH /invocations/{id}/resume?deployment=` resumes on; None keeps the pinned one.

    `given`: a deployment id, "latest" (the service's latest deployment) or "keep"/None. Keeping
    a deployment that was removed is refused: the invoker would otherwise run the invocation on
    whatever code is latest, silently.
    """
    meta = runtime.meta.state
    service = None if known is None else known.target["service"]
    how = f"PATCH /invocations/{invocation_id}/resume?deployment=<id> (or ?deployment=latest)"
    if given in (None, "", "keep"):
        pinned = None if known is None else known.deployment_id
        if pinned is not None and pinned not in meta.deployments:
            raise Conflict(
                f"invocation {invocation_id} is pinned to deployment {pinned}, which was removed; resume it on "
                f"another deployment with {how}"
            )
        return None
    if given == "latest":
        if service is None:
            raise Unavailable(
                f"the read model does not know invocation {invocation_id} yet, so its service's latest deployment "
                f"is unknown; retry in a moment, or name the deployment with {how}"
            )
        entry = meta.service(service)
        if entry is None:
            raise Conflict(f"no deployment serves {service}; register one, then resume {invocation_id} again")
        return entry.deployment_id
    record = meta.deployments.get(given)
    if record is None:
        raise BadRequest(f"unknown deployment {given!r}; list deployments with GET /deployments")
    if service is not None and all(s["name"] != service for s in record["services"]):
        raise Conflict(
            f"deployment {given} does not serve {service}, which invocation {invocation_id} calls; "
            f"pick one that does (GET /services/{service} shows the latest) or use ?deployment=latest"
        )
    return given
