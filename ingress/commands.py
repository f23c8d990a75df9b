"""Producing commands to keystate.log for the ingress and admin API, and turning results into HTTP."""

from __future__ import annotations

import asyncio
import email.utils
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from keystate.schemas.ids import InvocationTarget
from keystate.server.commands import command_record
from keystate.server.errors import KafkaUnavailable

from .errors import INVOCATION_ID_HEADER, InvocationFailed, ResultTimeout, Unavailable
from .runtime import IngressRuntime

__all__ = [
    "IDEMPOTENCY_EXPIRES_HEADER",
    "JSON",
    "await_within",
    "http_date",
    "private_message",
    "produce_command",
    "reply_outcome",
    "result_response",
    "target_record",
]

JSON = "application/json"
IDEMPOTENCY_EXPIRES_HEADER = "idempotency-expires"


def private_message(service: str, handler: str) -> str:
    """Restate's answer (400) to a call of an ingress-private handler, with how to reach it."""
    return (
        f"the invoked service is not public: {service}/{handler} is ingress-private, only other handlers can call "
        "it (ctx.service_call, ctx.object_call, sends); to call it from outside, declare it with "
        "ingress_private=False and register the deployment again"
    )


def target_record(target: InvocationTarget) -> dict[str, Any]:
    """The Avro `keystate.Target` of `target`."""
    return target.to_record()


async def produce_command(
    runtime: IngressRuntime,
    name: str,
    record: dict[str, Any],
    *,
    key: str,
    partition_key: int,
    invocation_id: str | None = None,
    target: Mapping[str, Any] | None = None,
    what: str = "the request",
    retry_hint: str = "retry",
) -> None:
    """Append `record` as the command `name` to the log at the partition of `partition_key`.

    Built by `command_record`, like every command on the log. Returns once Kafka acknowledged it;
    otherwise `Unavailable`, saying it may or may not be there.
    """
    producer = runtime.require_producer()
    out = command_record(
        name,
        record,
        runtime.log_partitions,
        partition_key=partition_key,
        key=key.encode("utf-8"),
        target=target,
        invocation_id=invocation_id,
    )
    timeout = runtime.settings.produce_timeout
    try:
        delivery = producer.produce(runtime.settings.topics.log, out.value, **out.produce_kwargs())
        await asyncio.wait_for(delivery, timeout)
    except TimeoutError:
        raise Unavailable(
            f"Kafka did not acknowledge {what} within {timeout:g} s, so it may or may not have been "
            f"accepted; {retry_hint} to be safe",
            invocation_id=invocation_id,
        ) from None
    except KafkaUnavailable as exc:
        raise Unavailable(f"Kafka did not accept {what} ({exc}); {retry_hint} to be safe", invocation_id=invocation_id) from exc


async def await_within(
    runtime: IngressRuntime, future: asyncio.Future[dict[str, Any]], message: str, *, invocation_id: str | None
) -> dict[str, Any]:
    """The value of `future`, or `ResultTimeout` with `message` after the call timeout."""
    try:
        return await asyncio.wait_for(asyncio.shield(future), runtime.settings.call_timeout)
    except TimeoutError:
        raise ResultTimeout(message, invocation_id=invocation_id) from None


def http_date(ms: int) -> str:
    """An HTTP date (RFC 9110 IMF-fixdate) of a time in ms since the epoch."""
    return email.utils.formatdate(ms / 1000, usegmt=True)


def reply_outcome(reply: dict[str, Any]) -> dict[str, Any]:
    """A completed QueryOutputReply as an InvocationResult-like `{status, output, failure}`."""
    output = failure = None
    result = reply.get("result")
    if result is not None:
        name, body = result
        if name == "keystate.Value":
            output = body["value"]
        else:
            failure = body
    return {"invocation_id": reply.get("invocation_id"), "status": reply["status"], "output": output, "failure": failure}


def result_response(
    result: dict[str, Any], output_content_type: str | None, id_text: str, headers: dict[str, str] | None = None
) -> web.Response:
    """The HTTP answer for a finished invocation: 200 with its output, or its failure as a JSON error."""
    extra = dict(headers or {})
    status = result["status"]
    if status == "SUCCEEDED":
        return web.Response(
            status=200,
            body=result.get("output") or b"",
            headers={"content-type": output_content_type or JSON, INVOCATION_ID_HEADER: id_text, **extra},
        )
    failure = result.get("failure")
    if failure is not None:
        raise InvocationFailed(failure.get("code", 500), failure["message"], invocation_id=id_text, headers=extra)
    # Cancelled and killed invocations without a failure answer like Restate: 409.
    raise InvocationFailed(409, f"the invocation was {status.lower()}", invocation_id=id_text, headers=extra)
