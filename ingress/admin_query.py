"""`POST /query`: read-only SQL over the invocation read model, answered like Restate's (`{"rows": [...]}`)."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from keystate.server.meta import MetaState

from .admin_deployments import RUNTIME_KEY, read_model
from .errors import BadRequest, IngressError
from .readmodel import QUERY_MAX_ROWS_ENV, MetaTables

__all__ = ["add_query_routes", "meta_tables"]

_EXAMPLE = '{"query": "SELECT id, status FROM sys_invocation LIMIT 10"}'
_SERVICE_TY = {"SERVICE": "Service", "VIRTUAL_OBJECT": "VirtualObject", "WORKFLOW": "Workflow"}


def add_query_routes(app: web.Application) -> None:
    app.router.add_post("/query", _query)


def _accepts_json(accept: str) -> bool:
    """Whether an Accept header allows JSON (none given, */*, application/*, application/json)."""
    if not accept.strip():
        return True
    for part in accept.split(","):
        media = part.split(";", 1)[0].strip().lower()
        if media in ("*/*", "application/*", "application/json"):
            return True
    return False


async def _query(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME_KEY]
    accept = request.headers.get("Accept", "")
    if not _accepts_json(accept):
        raise IngressError(
            f"this endpoint answers JSON only, not {accept[:100]!r}; send Accept: application/json", status=406
        )
    try:
        body = await request.json()
    except ValueError as exc:
        raise BadRequest(f"the body must be JSON like {_EXAMPLE} ({exc})") from None
    sql = body.get("query") if isinstance(body, dict) else None
    if not isinstance(sql, str) or not sql.strip():
        raise BadRequest(f'the body must be a JSON object with the SQL text in "query", e.g. {_EXAMPLE}')
    model = read_model(runtime)
    settings = runtime.settings
    result = await model.query(
        sql, timeout=settings.query_timeout, max_rows=settings.query_max_rows, meta=meta_tables(runtime.meta.state)
    )
    answer: dict[str, Any] = {"rows": result.rows}
    if result.truncated:
        answer["truncated"] = True
        answer["message"] = (
            f"only the first {settings.query_max_rows} rows are shown; add a LIMIT or a WHERE, or raise "
            f"${QUERY_MAX_ROWS_ENV}"
        )
    return web.json_response(answer, dumps=_dumps)


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def meta_tables(meta: MetaState) -> MetaTables:
    """`sys_deployment` and `sys_service` rows as the meta view has them now."""
    deployments = []
    services = []
    revisions: dict[str, int] = {}
    for deployment_id, record in meta.deployments.items():  # in log order: a service's revisions count up
        transports = list(record.get("transports", []))
        ty = "websocket" if "websocket" in transports else "http"
        latest = bool(meta.latest_for(deployment_id))
        deployments.append((deployment_id, ty, str(record["uri"]), int(record["created_at_ms"]), latest))
        for service in record["services"]:
            revisions[service["name"]] = revisions.get(service["name"], 0) + 1
    for name, entry in sorted(meta.services.items()):
        service = entry.metadata
        completion = entry.completion_retention_ms()
        workflow = service["service_type"] == "WORKFLOW"
        services.append((
            name,
            revisions.get(name, 1),
            not bool(service.get("ingress_private", False)),
            _SERVICE_TY.get(str(service["service_type"]), str(service["service_type"])),
            entry.deployment_id,
            None if workflow else completion,
            completion if workflow else None,
            entry.journal_retention_ms(),
            service.get("inactivity_timeout_ms"),
            service.get("abort_timeout_ms"),
        ))
    return MetaTables(deployments, services)
