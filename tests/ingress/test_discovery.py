"""Discovery against a real (local) HTTP server: good manifests become records, bad ones typed errors."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp import web

from keystate.schemas._codec import codec
from keystate.server.discovery import RETRY_POLICY_DEFAULTS, discover, manifest_to_record, new_deployment_id, normalize_uri
from keystate.server.errors import MetaError

from ingress_support import COUNTER, GREETER, SIGNUP, Deployment, handler, manifest, service


async def test_a_good_manifest_becomes_a_deployment_record(deployment: Deployment) -> None:
    deployment.respond = lambda: web.json_response(manifest(GREETER, COUNTER, SIGNUP))

    record = await discover(deployment.uri + "/", timeout=5)

    assert re.fullmatch(r"dp_[a-z2-7]{26}", record["deployment_id"])
    assert record["uri"] == deployment.uri
    assert record["protocol_version"] == 1
    assert record["transports"] == ["websocket"]
    by_name = {s["name"]: s for s in record["services"]}
    assert by_name["Greeter"]["service_type"] == "SERVICE"
    assert [(h["name"], h["kind"], h["input_content_type"]) for h in by_name["Greeter"]["handlers"]] == [
        ("greet", "EXCLUSIVE", None),
        ("upload", "EXCLUSIVE", "application/octet-stream"),
    ]
    assert [(h["name"], h["kind"]) for h in by_name["Counter"]["handlers"]] == [("add", "EXCLUSIVE"), ("get", "SHARED")]
    assert [(h["name"], h["kind"]) for h in by_name["Signup"]["handlers"]] == [("run", "WORKFLOW"), ("status", "SHARED")]


async def test_handler_kinds_default_by_service_type(deployment: Deployment) -> None:
    deployment.respond = lambda: web.json_response(
        manifest(
            service("Obj", "VIRTUAL_OBJECT", handler("a")),
            service("Wf", "WORKFLOW", handler("run", "WORKFLOW"), handler("query")),
        )
    )
    record = await discover(deployment.uri, timeout=5)
    kinds = {(s["name"], h["name"]): h["kind"] for s in record["services"] for h in s["handlers"]}
    assert kinds == {("Obj", "a"): "EXCLUSIVE", ("Wf", "run"): "WORKFLOW", ("Wf", "query"): "SHARED"}


async def test_every_registration_gets_a_new_id() -> None:
    ids = {new_deployment_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(re.fullmatch(r"dp_[a-z2-7]{26}", i) for i in ids)


async def test_an_unreachable_deployment_asks_whether_it_runs() -> None:
    # A port nobody listens on: bind one, note it, release it.
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()

    with pytest.raises(MetaError, match=rf"could not reach the deployment at http://127.0.0.1:{port}: .* check the address"):
        await discover(f"http://127.0.0.1:{port}", timeout=5)


async def test_a_deployment_that_does_not_answer_in_time(deployment: Deployment) -> None:
    deployment.delay = 5.0
    with pytest.raises(MetaError, match="could not reach the deployment at .*: no HTTP answer to GET /discover within 0.2 s"):
        await discover(deployment.uri, timeout=0.2)


@pytest.mark.parametrize(
    ("respond", "message"),
    [
        (lambda: web.Response(status=404, text="not here"), r"answered HTTP 404; the uri must point at a keystate deployment"),
        (lambda: web.Response(status=500), r"answered HTTP 500"),
        (lambda: web.Response(text="<html>hello</html>", content_type="text/html"), r"did not return JSON"),
        (lambda: web.json_response([1, 2]), r"is not a JSON object"),
        (lambda: web.json_response({"transports": ["websocket"], "services": []}), r"no 'protocol' field"),
        (lambda: web.json_response({**manifest(GREETER), "protocol": "1"}), r"field 'protocol' must be an integer"),
        (lambda: web.json_response(manifest(GREETER, protocol=7)), r"speaks protocol version 7; this server supports 1"),
        (lambda: web.json_response({**manifest(GREETER), "transports": []}), r"field 'transports' must be a non-empty list"),
        (lambda: web.json_response({**manifest(GREETER), "transports": ["carrier-pigeon"]}), r"unknown transport 'carrier-pigeon'"),
        (lambda: web.json_response({**manifest(GREETER), "services": None}), r"field 'services' must be a list"),
        (lambda: web.json_response(manifest()), r"declares no services"),
        (lambda: web.json_response(manifest({"name": "Empty", "ty": "SERVICE", "handlers": []})), r"services\[0\] \(Empty\) has no handlers"),
        (lambda: web.json_response(manifest({"name": "NoHandlers", "ty": "SERVICE"})), r"\(NoHandlers\): field 'handlers' must be a list"),
        (lambda: web.json_response(manifest({"ty": "SERVICE", "handlers": [handler("a")]})), r"services\[0\]: field 'name' must be a non-empty string"),
        (lambda: web.json_response(manifest(service("", "SERVICE"))), r"field 'name' must be a non-empty string"),
        (lambda: web.json_response(manifest(service("A/B", "SERVICE"))), r"service name 'A/B' must not contain '/'"),
        (lambda: web.json_response(manifest(service("A", "SERVICE", handler("x/y")))), r"handler name 'x/y' must not contain '/'"),
        (lambda: web.json_response(manifest(service("A", "ACTOR"))), r"\(A\): field 'ty' must be one of SERVICE, VIRTUAL_OBJECT, WORKFLOW, got 'ACTOR'"),
        (lambda: web.json_response(manifest(service("A", "SERVICE", handler("h", "LOCKED")))), r"handlers\[0\] \(h\): field 'ty' must be one of EXCLUSIVE, SHARED, WORKFLOW"),
        (lambda: web.json_response(manifest(service("A", "SERVICE", handler("h", "SHARED")))), r"a SERVICE cannot have a SHARED handler"),
        (lambda: web.json_response(manifest(service("A", "VIRTUAL_OBJECT", handler("h", "WORKFLOW")))), r"a VIRTUAL_OBJECT cannot have a WORKFLOW handler"),
        (lambda: web.json_response(manifest(service("W", "WORKFLOW", handler("q", "SHARED")))), r"a workflow needs exactly one"),
        (lambda: web.json_response(manifest(GREETER, GREETER)), r"declares service 'Greeter' twice"),
        (lambda: web.json_response(manifest(service("A", "SERVICE", handler("h"), handler("h")))), r"declares handler 'h' twice"),
        (lambda: web.json_response(manifest(service("A", "SERVICE", handler("h", input={"contentType": 3})))), r"'input.contentType' must be a media type"),
        (lambda: web.json_response(manifest({**GREETER, "inactivityTimeout": -1})), r"field 'inactivityTimeout' must be a non-negative integer"),
    ],
)
async def test_a_bad_answer_is_a_meta_error_that_says_what_to_fix(
    deployment: Deployment, respond: Callable[[], web.Response], message: str
) -> None:
    deployment.respond = respond
    with pytest.raises(MetaError, match=message):
        await discover(deployment.uri, timeout=5)


@pytest.mark.parametrize("uri", ["", "localhost:9080", "ftp://host", "http://", "http://host/?q=1", None])
def test_a_uri_that_is_not_http_is_rejected_before_any_request(uri: Any) -> None:
    with pytest.raises(MetaError, match="uri"):
        normalize_uri(uri)


def test_a_uri_loses_its_trailing_slash() -> None:
    assert normalize_uri(" http://host:9080/base/ ") == "http://host:9080/base"


def _one_service(**settings: Any) -> dict[str, Any]:
    return service("Billing", "SERVICE", handler("charge"), handler("refund", retryPolicy={"maxAttempts": 3, "onMaxAttempts": "PAUSE"})) | settings


def test_service_and_handler_settings_map_to_the_record() -> None:
    spec = _one_service(
        retryPolicy={"initialInterval": 250, "factor": 1.5, "maxInterval": 30_000, "maxAttempts": None, "onMaxAttempts": "FAIL"},
        inactivityTimeout=60_000,
        abortTimeout=10_000,
        journalRetention=86_400_000,
    )
    record = manifest_to_record(manifest(spec), "http://x")
    billing = record["services"][0]

    assert billing["retry_policy"] == {
        "initial_interval_ms": 250, "factor": 1.5, "max_interval_ms": 30_000, "max_attempts": None, "on_max_attempts": "FAIL"
    }
    assert (billing["inactivity_timeout_ms"], billing["abort_timeout_ms"], billing["retention_ms"]) == (60_000, 10_000, 86_400_000)
    charge, refund = billing["handlers"]
    assert charge["retry_policy"] is None
    # Fields left out of a partial policy take the processors' defaults.
    assert refund["retry_policy"] == RETRY_POLICY_DEFAULTS | {"max_attempts": 3, "on_max_attempts": "PAUSE"}
    codec().encode("keystate.DeploymentRecord", record)  # fits the schema


def test_without_settings_everything_is_the_server_default() -> None:
    billing = manifest_to_record(manifest(service("Plain")), "http://x")["services"][0]
    assert billing["retry_policy"] is None
    assert billing["retention_ms"] is billing["inactivity_timeout_ms"] is billing["abort_timeout_ms"] is None


def test_request_response_is_a_known_transport() -> None:
    spec = manifest(service("Plain")) | {"transports": ["request-response", "websocket", "request-response"]}
    assert manifest_to_record(spec, "http://x")["transports"] == ["request-response", "websocket"]
    with pytest.raises(MetaError, match="unknown transport 'grpc'; known transports are request-response, websocket"):
        manifest_to_record(manifest(service("Plain")) | {"transports": ["grpc"]}, "http://x")


@pytest.mark.parametrize(
    ("settings", "fragment"),
    [
        ({"retryPolicy": 5}, "services[0] (Billing): field 'retryPolicy' must be an object"),
        ({"retryPolicy": {"factor": 0.5}}, "retryPolicy: field 'factor' must be a number of at least 1.0, got 0.5"),
        ({"retryPolicy": {"factor": "2"}}, "field 'factor' must be a number"),
        ({"retryPolicy": {"initialInterval": -1}}, "retryPolicy: field 'initialInterval' must be a non-negative integer of milliseconds"),
        ({"retryPolicy": {"maxInterval": 1.5}}, "field 'maxInterval' must be a non-negative integer of milliseconds"),
        ({"retryPolicy": {"maxAttempts": 0}}, "field 'maxAttempts' must be a positive integer, or null for unlimited"),
        ({"retryPolicy": {"onMaxAttempts": "RETRY"}}, "field 'onMaxAttempts' must be one of FAIL, PAUSE, got 'RETRY'"),
        ({"retryPolicy": {"initialInterval": 5000, "maxInterval": 100}}, "'maxInterval' (100 ms) is below 'initialInterval' (5000 ms)"),
        ({"inactivityTimeout": "1m"}, "field 'inactivityTimeout' must be a non-negative integer of milliseconds, got '1m'"),
        ({"abortTimeout": True}, "field 'abortTimeout' must be a non-negative integer"),
        ({"journalRetention": -5}, "field 'journalRetention' must be a non-negative integer"),
    ],
)
def test_bad_service_settings_name_the_field(settings: dict[str, Any], fragment: str) -> None:
    with pytest.raises(MetaError) as info:
        manifest_to_record(manifest(_one_service(**settings)), "http://x")
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        ({"retryPolicy": {"maxAttempts": "3"}}, "handlers[0] (charge): retryPolicy: field 'maxAttempts'"),
        ({"inactivityTimeout": 1000}, "handlers[0] (charge): field 'inactivityTimeout' is not supported per handler"),
        ({"journalRetention": "x"}, "handlers[0] (charge): field 'journalRetention' must be a non-negative integer"),
    ],
)
def test_bad_handler_settings_name_the_handler_and_field(extra: dict[str, Any], fragment: str) -> None:
    with pytest.raises(MetaError) as info:
        manifest_to_record(manifest(service("Billing", "SERVICE", handler("charge", **extra))), "http://x")
    assert fragment in str(info.value)
