"""Errors of the ingress and admin API, and the one function that turns any error into HTTP.

```
IngressError                  500  root; every subclass carries its HTTP status
 ├── BadRequest               400  malformed request: bad JSON, bad delay, bad id
 │    ├── KeyMismatch         400  a key given for a service, or missing for an object/workflow
 │    ├── UnsupportedContentType 400  body with a content type the handler does not accept
 │    └── DeploymentRejected  400  discovery or registration of a deployment failed
 ├── NotFound                 404  unknown service, handler, deployment or schema
 ├── MethodNotAllowed         405  e.g. GET on an invocation path
 ├── Conflict                 409  e.g. a workflow run that already started, a deployment still in use
 ├── PayloadTooLarge          413  body over the configured limit
 ├── UriTooLong               414  request line (path and query) over max_url_bytes
 ├── HeadersTooLarge          431  request headers over max_header_bytes
 ├── InvocationFailed         4xx/5xx  the handler failed: its Failure {code, message}
 ├── NotReady                 470  output asked for while the invocation still runs (Restate's code)
 ├── Overloaded               503  too many calls waiting for their result
 ├── Unavailable              503  Kafka did not accept or acknowledge the request
 └── ResultTimeout            504  the invocation did not finish within the call timeout
```

Every error may carry the invocation id it concerns; `error_response` then sets `x-restate-id`
(and any further `headers` the error carries, e.g. `idempotency-expires`).
"""

from __future__ import annotations

import json
import logging

from aiohttp import web
from aiohttp.typedefs import Handler

from keystate.schemas.errors import ContractError
from keystate.schemas.ids import InvalidIdError
from keystate.schemas.limits import SETTING_HINT
from keystate.server.errors import KafkaUnavailable, MetaError

__all__ = [
    "BadRequest",
    "Conflict",
    "NotReady",
    "DeploymentRejected",
    "IngressError",
    "InvocationFailed",
    "KeyMismatch",
    "MethodNotAllowed",
    "NotFound",
    "Overloaded",
    "HeadersTooLarge",
    "PayloadTooLarge",
    "UriTooLong",
    "ResultTimeout",
    "Unavailable",
    "UnsupportedContentType",
    "error_response",
    "INVOCATION_ID_HEADER",
    "MAX_BODY_KEY",
    "error_middleware",
]

log = logging.getLogger(__name__)

INVOCATION_ID_HEADER = "x-restate-id"
MAX_BODY_KEY = web.AppKey("max_body_bytes", int)


class IngressError(Exception):
    """Root of the ingress errors; `status` is the HTTP status it answers with."""

    status = 500

    def __init__(
        self,
        message: str,
        *,
        invocation_id: str | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.invocation_id = invocation_id
        self.headers = dict(headers or {})
        if status is not None:
            self.status = status


class BadRequest(IngressError):
    status = 400


class KeyMismatch(BadRequest):
    """A key was given for a service, or is missing for a virtual object or workflow."""


class UnsupportedContentType(BadRequest):
    """The body has a content type the handler does not accept."""


class DeploymentRejected(BadRequest):
    """Discovery or registration of a deployment failed; the message says how to fix it."""


class NotFound(IngressError):
    status = 404


class MethodNotAllowed(IngressError):
    status = 405


class Conflict(IngressError):
    status = 409


class PayloadTooLarge(IngressError):
    status = 413


class UriTooLong(IngressError):
    status = 414


class HeadersTooLarge(IngressError):
    status = 431


class NotReady(IngressError):
    """The output of an invocation that has not completed yet; Restate answers 470."""

    status = 470


class InvocationFailed(IngressError):
    """The invocation ended with a failure; its code is the status (500 when not an HTTP error code)."""

    def __init__(
        self, code: int, message: str, *, invocation_id: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        status = code if 400 <= code <= 599 else 500
        super().__init__(message, invocation_id=invocation_id, status=status, headers=headers)
        self.code = status


class Overloaded(IngressError):
    status = 503


class Unavailable(IngressError):
    status = 503


class ResultTimeout(IngressError):
    status = 504


def error_response(exc: BaseException, *, max_body_bytes: int | None = None) -> web.Response:
    """The JSON response `{"code", "message"}` for any error raised while serving a request."""
    error = _as_ingress_error(exc, max_body_bytes)
    if error.status >= 500 and not isinstance(error, (InvocationFailed, Unavailable, Overloaded, ResultTimeout)):
        log.error("request failed: %s", error.message, exc_info=exc)
    headers = dict(error.headers)
    if error.invocation_id:
        headers[INVOCATION_ID_HEADER] = error.invocation_id
    return web.Response(
        status=error.status,
        reason=_REASONS.get(error.status),
        body=json.dumps({"code": error.status, "message": error.message}).encode("utf-8"),
        content_type="application/json",
        headers=headers or None,
    )


# Statuses without a standard reason phrase.
_REASONS = {431: "Request Header Fields Too Large", 470: "Not Ready"}


def _as_ingress_error(exc: BaseException, max_body_bytes: int | None) -> IngressError:
    """Translate foreign errors (aiohttp, Kafka, meta, ids) into the tree above."""
    if isinstance(exc, IngressError):
        return exc
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        limit = f" of {max_body_bytes} bytes" if max_body_bytes else ""
        return PayloadTooLarge(
            f"the request body is larger than the payload limit{limit}; send a smaller body or "
            f"{SETTING_HINT}"
        )
    if isinstance(exc, web.HTTPMethodNotAllowed):
        return MethodNotAllowed(f"method {exc.method} is not allowed here; use {', '.join(sorted(exc.allowed_methods))}")
    if isinstance(exc, web.HTTPNotFound):
        return NotFound("no such path; invoke handlers with POST /{service}/{handler} or /{service}/{key}/{handler}")
    if isinstance(exc, web.HTTPException):
        return IngressError(exc.reason or exc.text or "HTTP error", status=exc.status)
    if isinstance(exc, MetaError):
        return DeploymentRejected(str(exc))
    if isinstance(exc, KafkaUnavailable):
        return Unavailable(f"Kafka is unavailable: {exc}; retry when the cluster is back")
    if isinstance(exc, InvalidIdError):
        return BadRequest(str(exc))
    if isinstance(exc, ContractError):
        return IngressError(f"internal error encoding a record: {exc}")
    return IngressError(f"internal error: {type(exc).__name__}: {exc}")


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error of every route goes through `error_response`."""
    try:
        return await handler(request)
    except Exception as exc:  # noqa: BLE001 - this is the one place errors become HTTP
        return error_response(exc, max_body_bytes=request.app.get(MAX_BODY_KEY))
