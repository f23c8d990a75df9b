"""The admin API (:9070): deployments, services, health and the schema registry view."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from aiohttp import web

from keystate.schemas._codec import codec
from keystate.schemas.errors import UnknownSchemaError
from keystate.server.discovery import discover
from keystate.server.meta import register, unregister

from .errors import BadRequest, NotFound, Unavailable, error_middleware
from .runtime import IngressRuntime

__all__ = ["admin_app", "deployment_json", "service_json"]

RUNTIME_KEY = web.AppKey("admin_runtime", IngressRuntime)
_MAX_REQUEST_BYTES = 1024 * 1024


def admin_app(runtime: IngressRuntime) -> web.Application:
    """The admin application; `runtime` must be started before it serves requests."""
    app = web.Application(client_max_size=_MAX_REQUEST_BYTES, middlewares=[error_middleware])
    app[RUNTIME_KEY] = runtime
    app.router.add_post("/deployments", _register)
    app.router.add_get("/deployments", _list_deployments)
    app.router.add_get("/deployments/{id}", _get_deployment)
    app.router.add_delete("/deployments/{id}", _delete_deployment)
    app.router.add_get("/services", _list_services)
    app.router.add_get("/services/{name}", _get_service)
    app.router.add_get("/health", _health)
    app.router.add_get("/schemas/ids/{id}", _schema)
    return app


def service_json(service: dict[str, Any], deployment_id: str) -> dict[str, Any]:
    return {
        "name": service["name"],
        "ty": service["service_type"],
        "deployment_id": deployment_id,
        "handlers": [
            {
                "name": h["name"],
                "ty": h["kind"],
                "input_content_type": h.get("input_content_type"),
                "output_content_type": h.get("output_content_type"),
            }
            for h in service["handlers"]
        ],
    }


def deployment_json(record: dict[str, Any]) -> dict[str, Any]:
    created = datetime.fromtimestamp(record["created_at_ms"] / 1000, tz=timezone.utc)
    return {
        "id": record["deployment_id"],
        "uri": record["uri"],
        "protocol_version": record["protocol_version"],
        "transports": list(record["transports"]),
        "services": [service_json(s, record["deployment_id"]) for s in record["services"]],
        "created_at": created.isoformat().replace("+00:00", "Z"),
    }


async def _register(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME_KEY]
    try:
        body = await request.json()
    except ValueError as exc:
        raise BadRequest(f'the body must be JSON like {{"uri": "http://localhost:9080"}} ({exc})') from exc
    if not isinstance(body, dict) or "uri" not in body:
        raise BadRequest('the body must be a JSON object with the deployment\'s "uri", e.g. {"uri": "http://localhost:9080"}')
    if runtime.http is None:
        raise Unavailable("the admin API is starting; retry in a moment")
    record = await discover(body["uri"], runtime.http, runtime.settings.discovery_timeout)
    registration = await register(
        runtime.meta, runtime.require_producer(), record, timeout=runtime.settings.register_timeout
    )
    payload = deployment_json(registration.deployment)
    return web.json_response(payload, status=201 if registration.created else 200)


async def _list_deployments(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME_KEY]
    return web.json_response({"deployments": [deployment_json(r) for r in runtime.meta.state.deployments.values()]})


def _deployment(runtime: IngressRuntime, deployment_id: str) -> dict[str, Any]:
    record = runtime.meta.state.deployments.get(deployment_id)
    if record is None:
        raise NotFound(f"unknown deployment {deployment_id!r}; list deployments with GET /deployments")
    return record


async def _get_deployment(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME_KEY]
    return web.json_response(deployment_json(_deployment(runtime, request.match_info["id"])))


async def _delete_deployment(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME_KEY]
    deployment_id = request.match_info["id"]
    _deployment(runtime, deployment_id)
    await unregister(runtime.meta, runtime.require_producer(), deployment_id, timeout=runtime.settings.register_timeout)
    return web.Response(status=202)


async def _list_services(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME_KEY]
    services = runtime.meta.state.services
    return web.json_response(
        {"services": [service_json(e.metadata, e.deployment_id) for _, e in sorted(services.items())]}
    )


async def _get_service(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME_KEY]
    name = request.match_info["name"]
    entry = runtime.meta.state.service(name)
    if entry is None:
        raise NotFound(f"unknown service {name!r}; list services with GET /services")
    return web.json_response(service_json(entry.metadata, entry.deployment_id))


async def _health(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME_KEY]
    if not runtime.ready:
        return web.json_response(
            {"status": "starting", "meta": runtime.meta.ready, "results": runtime.results.ready}, status=503
        )
    return web.json_response({"status": "ok"})


async def _schema(request: web.Request) -> web.Response:
    text = request.match_info["id"]
    try:
        schema_id = int(text)
    except ValueError:
        raise BadRequest(f"schema id {text!r} is not a number; ids are the 4 bytes after the magic byte") from None
    try:
        schema = codec().schema_for_id(schema_id)
    except UnknownSchemaError as exc:
        raise NotFound(f"{exc}; ids are listed in keystate.schemas._registry") from exc
    return web.json_response({"schema": json.dumps(schema)})
