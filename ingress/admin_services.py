"""The admin API's service routes: list, describe, and `PATCH /services/{name}` (Restate's modify service)."""

from __future__ import annotations

import re
import time
from typing import Any

from aiohttp import web

from keystate.server.service_settings import save_service_settings

from .admin_deployments import RUNTIME_KEY, service_json
from .errors import BadRequest, NotFound

__all__ = ["DURATION_FORMATS", "add_service_routes", "parse_duration_ms", "settings_patch"]

DURATION_FORMATS = (
    'a humantime string like "1d", "2h30m", "1h 30m", "10s" or "500ms", an ISO-8601 duration like "PT1H" or '
    '"P1DT12H", or a whole number of milliseconds'
)
# Restate's ModifyServiceRequest field -> the ServiceSettings field it sets.
_FIELDS = {
    "idempotency_retention": "idempotency_retention_ms",
    "workflow_completion_retention": "workflow_completion_retention_ms",
    "journal_retention": "journal_retention_ms",
    "inactivity_timeout": "inactivity_timeout_ms",
    "abort_timeout": "abort_timeout_ms",
}
_SECOND, _MINUTE, _HOUR, _DAY = 1000, 60_000, 3_600_000, 86_400_000
_HUMAN_UNITS = {
    **dict.fromkeys(("ms", "msec", "millis", "millisecond", "milliseconds"), 1),
    **dict.fromkeys(("s", "sec", "secs", "second", "seconds"), _SECOND),
    **dict.fromkeys(("m", "min", "mins", "minute", "minutes"), _MINUTE),
    **dict.fromkeys(("h", "hr", "hrs", "hour", "hours"), _HOUR),
    **dict.fromkeys(("d", "day", "days"), _DAY),
    **dict.fromkeys(("w", "week", "weeks"), 7 * _DAY),
}
_HUMAN_PART = re.compile(r"\s*(\d+)\s*([a-z]+)")
_ISO = re.compile(
    r"P(?:(?P<w>\d+)W)?(?:(?P<d>\d+)D)?(?:T(?:(?P<h>\d+)H)?(?:(?P<m>\d+)M)?(?:(?P<s>\d+(?:\.\d{1,3})?)S)?)?"
)
# Longest accepted duration: 100 years in ms fits Avro's long with room, and no setting needs more.
_MAX_MS = 100 * 365 * _DAY


def add_service_routes(app: web.Application) -> None:
    app.router.add_get("/services", _list_services)
    app.router.add_get("/services/{name}", _get_service)
    app.router.add_patch("/services/{name}", _patch_service)


def parse_duration_ms(value: Any) -> int:
    """`value` (humantime, ISO-8601 or whole milliseconds) in milliseconds; ValueError saying why not."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"{value!r} is not a duration")
    if isinstance(value, int):
        ms = value
    else:
        text = value.strip()
        ms = _iso_ms(text) if text[:1] in ("P", "p") else _human_ms(text)
    if not 0 <= ms <= _MAX_MS:
        raise ValueError(f"{value!r} is out of range (0 to 100 years)")
    return ms


def _human_ms(text: str) -> int:
    if text.isdigit():
        return int(text)
    total, pos, lowered = 0, 0, text.lower()
    while pos < len(lowered):
        match = _HUMAN_PART.match(lowered, pos)
        if match is None or match.group(2) not in _HUMAN_UNITS:
            raise ValueError(f"{text!r} is not a duration")
        total += int(match.group(1)) * _HUMAN_UNITS[match.group(2)]
        pos = match.end()
        while pos < len(lowered) and lowered[pos] in " ,":
            pos += 1
    if pos == 0:
        raise ValueError(f"{text!r} is not a duration")
    return total


def _iso_ms(text: str) -> int:
    match = _ISO.fullmatch(text.upper())
    if match is None or not any(match.groupdict().values()) or text.upper().endswith("T"):
        raise ValueError(f"{text!r} is not an ISO-8601 duration")
    parts = {k: v or "0" for k, v in match.groupdict().items()}
    seconds_ms = round(float(parts["s"]) * _SECOND)
    return (
        int(parts["w"]) * 7 * _DAY + int(parts["d"]) * _DAY + int(parts["h"]) * _HOUR + int(parts["m"]) * _MINUTE + seconds_ms
    )


def settings_patch(body: Any, service_type: str) -> dict[str, Any]:
    """Restate's ModifyServiceRequest body as a ServiceSettings patch; BadRequest naming the field at fault.

    A field given as null drops its override: the deployment's declared value (or the default) applies again.
    """
    accepted = ["public", *_FIELDS]
    if not isinstance(body, dict) or not body:
        raise BadRequest(
            f"the body must be a JSON object with at least one of {', '.join(accepted)}, "
            'e.g. {"public": false, "journal_retention": "1d"}'
        )
    unknown = sorted(set(body) - set(accepted))
    if unknown:
        raise BadRequest(f"unknown field{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; accepted: {', '.join(accepted)}")
    patch: dict[str, Any] = {}
    if "public" in body:
        if body["public"] is not None and not isinstance(body["public"], bool):
            raise BadRequest(f'"public" must be true or false, not {body["public"]!r}')
        patch["public"] = body["public"]
    for name, setting in _FIELDS.items():
        if name not in body:
            continue
        if body[name] is None:
            patch[setting] = None
            continue
        try:
            patch[setting] = parse_duration_ms(body[name])
        except ValueError as exc:
            raise BadRequest(f'"{name}": {exc}; write it as {DURATION_FORMATS}') from None
    if patch.get("workflow_completion_retention_ms") is not None and service_type != "WORKFLOW":
        raise BadRequest(
            '"workflow_completion_retention" applies to workflows only; for a service or virtual object set '
            '"idempotency_retention"'
        )
    return patch


async def _list_services(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME_KEY]
    services = runtime.meta.state.services
    return web.json_response(
        {"services": [service_json(e.metadata, e.deployment_id, e.settings) for _, e in sorted(services.items())]}
    )


async def _get_service(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME_KEY]
    name = request.match_info["name"]
    entry = runtime.meta.state.service(name)
    if entry is None:
        raise NotFound(f"unknown service {name!r}; list services with GET /services")
    return web.json_response(service_json(entry.metadata, entry.deployment_id, entry.settings))


async def _patch_service(request: web.Request) -> web.Response:
    """Change a service's settings for every process (keystate.meta); 200 with the service once the view has them."""
    runtime = request.app[RUNTIME_KEY]
    name = request.match_info["name"]
    entry = runtime.meta.state.service(name)
    if entry is None:
        raise NotFound(f"unknown service {name!r}; list services with GET /services")
    try:
        body = await request.json()
    except ValueError as exc:
        raise BadRequest(f'the body must be JSON like {{"public": false, "journal_retention": "1d"}} ({exc})') from exc
    patch = settings_patch(body, str(entry.metadata["service_type"]))
    await save_service_settings(
        runtime.meta,
        runtime.require_producer(),
        name,
        patch,
        now_ms=int(time.time() * 1000),
        timeout=runtime.settings.register_timeout,
    )
    entry = runtime.meta.state.service(name)
    if entry is None:  # its last deployment was removed meanwhile; the settings stay for a re-registration
        raise NotFound(f"service {name!r} was unregistered meanwhile; its settings are kept for when it is registered again")
    return web.json_response(service_json(entry.metadata, entry.deployment_id, entry.settings))
