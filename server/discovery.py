"""Deployment discovery: fetch `GET {uri}/discover`, validate the manifest, build a DeploymentRecord."""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from .address_policy import AddressNotAllowed, AddressPolicy, GuardedResolver, literal_address
from .errors import MetaError
from .identity import RequestIdentity, signing_middleware

__all__ = [
    "RETRY_POLICY_DEFAULTS",
    "SUPPORTED_PROTOCOL_VERSIONS",
    "TRANSPORTS",
    "discover",
    "manifest_to_record",
    "new_deployment_id",
    "normalize_uri",
]

SUPPORTED_PROTOCOL_VERSIONS = frozenset({1})
TRANSPORTS = frozenset({"websocket", "request-response"})
log = logging.getLogger(__name__)

_SERVICE_TYPES = ("SERVICE", "VIRTUAL_OBJECT", "WORKFLOW")
_HANDLER_KINDS = ("EXCLUSIVE", "SHARED", "WORKFLOW")
# Which handler kinds each service type may declare, and the kind a handler without `ty` gets.
_ALLOWED_KINDS = {
    "SERVICE": ("EXCLUSIVE",),
    "VIRTUAL_OBJECT": ("EXCLUSIVE", "SHARED"),
    "WORKFLOW": ("WORKFLOW", "SHARED"),
}
_DEFAULT_KIND = {"SERVICE": "EXCLUSIVE", "VIRTUAL_OBJECT": "EXCLUSIVE", "WORKFLOW": "SHARED"}
_MAX_MANIFEST_BYTES = 4 * 1024 * 1024
# Fields of a partial retryPolicy that the manifest leaves out; the processors' default policy.
RETRY_POLICY_DEFAULTS = {
    "initial_interval_ms": 100,
    "factor": 2.0,
    "max_interval_ms": 10_000,
    "max_attempts": None,
    "on_max_attempts": "FAIL",
}
_ON_MAX_ATTEMPTS = ("FAIL", "PAUSE")
# Service-level settings the schema has no per-handler place for (HandlerMetadata has retry_policy only).
_SERVICE_ONLY_SETTINGS = ("inactivityTimeout", "abortTimeout", "journalRetention")


def new_deployment_id() -> str:
    """`dp_` and 26 random base32 characters (128 bits)."""
    return "dp_" + base64.b32encode(os.urandom(16)).decode("ascii").rstrip("=").lower()


def normalize_uri(uri: object) -> str:
    """The deployment's base URI without a trailing slash; rejects anything but http(s)://host."""
    if not isinstance(uri, str) or not uri.strip():
        raise MetaError("the deployment uri is missing; give the base URL the deployment serves on, e.g. http://localhost:9080")
    text = uri.strip().rstrip("/")
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise MetaError(
            f"deployment uri {uri!r} is not an http(s) URL; give the base URL the deployment serves on, "
            "e.g. http://localhost:9080"
        )
    if parts.query or parts.fragment:
        raise MetaError(f"deployment uri {uri!r} must not have a query or fragment; give its base URL only")
    return text


async def discover(
    uri: str, timeout: float = 10.0, *, allow: AddressPolicy | None = None, identity: RequestIdentity | None = None
) -> dict[str, Any]:
    """Ask the deployment at `uri` what it serves; a new DeploymentRecord (fresh id) on success.

    Connects only to addresses `allow` permits (default `$KEYSTATE_DEPLOYMENT_ALLOW`, see
    `keystate.server.address_policy`), follows no redirects, and never puts the deployment's answer
    into an error beyond its status code. Every failure is a `MetaError` whose message says what to
    fix; failures to connect or to get an HTTP answer share one message, so a caller cannot tell a
    closed port from an open one (the detail goes to the log). With an `identity` the request is signed,
    so deployments that check `identity_keys` answer.
    """
    base = normalize_uri(uri)
    url = f"{base}/discover"
    policy = AddressPolicy.from_env() if allow is None else allow
    literal = literal_address(urlsplit(base).hostname or "")
    if literal is not None:
        policy.check(literal, base)  # aiohttp does not resolve (so GuardedResolver never sees) literals
    # A connector of its own: GuardedResolver checks each address it is about to connect to, no DNS
    # cache, no proxy from the environment (a proxy would connect on our behalf, unchecked).
    connector = aiohttp.TCPConnector(resolver=GuardedResolver(policy, base), use_dns_cache=False, force_close=True)
    try:
        signing = (signing_middleware(identity),) if identity is not None else ()
        async with aiohttp.ClientSession(connector=connector, trust_env=False, middlewares=signing) as session:
            async with session.get(
                url,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=timeout),
                headers={"accept": "application/json"},
            ) as response:
                status = response.status
                body = await _read_capped(response) if status == 200 else b""
    except AddressNotAllowed as exc:
        log.info("discovery of %s refused: %s is a %s address the policy %s does not allow", url, exc.address, exc.klass,
                 policy.describe())
        raise
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        log.info("discovery of %s failed: %s: %s", url, type(exc).__name__, exc)
        raise MetaError(
            f"could not reach the deployment at {base}: no HTTP answer to GET /discover within {timeout:g} s; "
            "check the address, that the deployment runs and that the keystate server can reach it "
            "(the server log has the reason)"
        ) from exc
    if 300 <= status < 400:
        raise MetaError(
            f"GET {url} answered HTTP {status}, a redirect; keystate does not follow redirects when it registers "
            "a deployment: register the final URL the deployment serves on"
        )
    if status != 200:
        raise MetaError(
            f"GET {url} answered HTTP {status}; the uri must point at a keystate deployment (one that serves "
            "/discover), check the address and path"
        )
    if len(body) > _MAX_MANIFEST_BYTES:
        raise MetaError(f"the manifest from {url} is larger than {_MAX_MANIFEST_BYTES} bytes; is this a keystate deployment?")
    try:
        manifest = json.loads(body)
    except ValueError as exc:
        raise MetaError(
            f"GET {url} did not return JSON ({exc}); the uri must point at a keystate deployment, "
            "check the address and path"
        ) from exc
    return manifest_to_record(manifest, base)


async def _read_capped(response: aiohttp.ClientResponse) -> bytes:
    """The body, or its first `_MAX_MANIFEST_BYTES + 1` bytes (read() returns what has arrived, so loop)."""
    chunks: list[bytes] = []
    size = 0
    while size <= _MAX_MANIFEST_BYTES:
        chunk = await response.content.read(_MAX_MANIFEST_BYTES + 1 - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def manifest_to_record(manifest: object, uri: str, *, now_ms: int | None = None) -> dict[str, Any]:
    """Validate a discovery manifest and turn it into a DeploymentRecord dict."""
    where = f"the manifest from {uri}/discover"
    if not isinstance(manifest, Mapping):
        raise MetaError(f"{where} is not a JSON object; is this a keystate deployment?")
    protocol = manifest.get("protocol")
    if protocol is None:
        raise MetaError(f"{where} has no 'protocol' field; is this a keystate deployment?")
    if not isinstance(protocol, int) or isinstance(protocol, bool):
        raise MetaError(f"{where}: field 'protocol' must be an integer, got {_shown(protocol)}")
    if protocol not in SUPPORTED_PROTOCOL_VERSIONS:
        supported = ", ".join(str(v) for v in sorted(SUPPORTED_PROTOCOL_VERSIONS))
        raise MetaError(
            f"{where} speaks protocol version {protocol}; this server supports {supported}. "
            "Upgrade the server or use an SDK version that speaks a supported protocol"
        )
    transports = manifest.get("transports")
    if not isinstance(transports, list) or not transports:
        raise MetaError(f"{where}: field 'transports' must be a non-empty list, e.g. [\"websocket\"]")
    for transport in transports:
        if transport not in TRANSPORTS:
            raise MetaError(
                f"{where}: field 'transports' has unknown transport {_shown(transport)}; "
                f"known transports are {', '.join(sorted(TRANSPORTS))}"
            )
    services = manifest.get("services")
    if not isinstance(services, list):
        raise MetaError(f"{where}: field 'services' must be a list of services")
    if not services:
        raise MetaError(f"{where} declares no services; bind at least one service to the deployment")
    converted = []
    seen: set[str] = set()
    for index, service in enumerate(services):
        meta = _service(service, f"{where}: services[{index}]")
        if meta["name"] in seen:
            raise MetaError(f"{where} declares service {_shown(meta['name'])} twice; service names must be unique")
        seen.add(meta["name"])
        converted.append(meta)
    return {
        "deployment_id": new_deployment_id(),
        "uri": uri,
        "transports": list(dict.fromkeys(transports)),
        "protocol_version": protocol,
        "services": converted,
        "created_at_ms": int(time.time() * 1000) if now_ms is None else now_ms,
    }


def _shown(value: object) -> str:
    """`repr(value)` cut to 40 characters: errors name what was wrong without relaying the target's answer."""
    return _clipped(repr(value))


def _clipped(text: str) -> str:
    return text if len(text) <= 40 else text[:37] + "..."


def _name(value: object, where: str, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise MetaError(f"{where}: field 'name' must be a non-empty string, got {_shown(value)}")
    if "/" in value:
        raise MetaError(f"{where}: {what} name {_shown(value)} must not contain '/', it is part of the URL path")
    if value != value.strip():
        raise MetaError(f"{where}: {what} name {_shown(value)} must not start or end with whitespace")
    return value


def _optional_ms(spec: Mapping[str, Any], field: str, where: str) -> int | None:
    value = spec.get(field)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**63:
        raise MetaError(f"{where}: field {field!r} must be a non-negative integer of milliseconds, got {_shown(value)}")
    return value


def _retry_policy(spec: object, where: str) -> dict[str, Any] | None:
    """A RetryPolicy record from a manifest's `retryPolicy`; fields left out take the server defaults."""
    if spec is None:
        return None
    if not isinstance(spec, Mapping):
        raise MetaError(
            f"{where}: field 'retryPolicy' must be an object like "
            '{"initialInterval": 100, "factor": 2.0, "maxInterval": 10000, "maxAttempts": 10, "onMaxAttempts": "PAUSE"}'
        )
    where = f"{where}: retryPolicy"
    policy: dict[str, Any] = dict(RETRY_POLICY_DEFAULTS)
    for field, name in (("initialInterval", "initial_interval_ms"), ("maxInterval", "max_interval_ms")):
        value = _optional_ms(spec, field, where)
        if value is not None:
            policy[name] = value
    factor = spec.get("factor")
    if factor is not None:
        if not isinstance(factor, (int, float)) or isinstance(factor, bool) or not factor >= 1.0 or factor == float("inf"):
            raise MetaError(f"{where}: field 'factor' must be a number of at least 1.0, got {_shown(factor)}")
        policy["factor"] = float(factor)
    max_attempts = spec.get("maxAttempts")
    if max_attempts is not None:
        if not isinstance(max_attempts, int) or isinstance(max_attempts, bool) or max_attempts < 1:
            raise MetaError(
                f"{where}: field 'maxAttempts' must be a positive integer, or null for unlimited, got {_shown(max_attempts)}"
            )
        if max_attempts > 2**31 - 1:
            raise MetaError(f"{where}: field 'maxAttempts' must be at most {2**31 - 1}, got {_shown(max_attempts)}")
        policy["max_attempts"] = max_attempts
    on_max = spec.get("onMaxAttempts")
    if on_max is not None:
        if on_max not in _ON_MAX_ATTEMPTS:
            raise MetaError(f"{where}: field 'onMaxAttempts' must be one of {', '.join(_ON_MAX_ATTEMPTS)}, got {_shown(on_max)}")
        policy["on_max_attempts"] = on_max
    if policy["max_interval_ms"] < policy["initial_interval_ms"]:
        raise MetaError(
            f"{where}: field 'maxInterval' ({policy['max_interval_ms']} ms) is below 'initialInterval' "
            f"({policy['initial_interval_ms']} ms); the delay grows from the initial interval up to the maximum"
        )
    return policy


def _service(spec: object, where: str) -> dict[str, Any]:
    if not isinstance(spec, Mapping):
        raise MetaError(f"{where} must be an object with 'name', 'ty' and 'handlers'")
    name = _name(spec.get("name"), where, "service")
    where = f"{where} ({_clipped(name)})"
    ty = spec.get("ty")
    if ty not in _SERVICE_TYPES:
        raise MetaError(f"{where}: field 'ty' must be one of {', '.join(_SERVICE_TYPES)}, got {_shown(ty)}")
    handlers = spec.get("handlers")
    if not isinstance(handlers, list):
        raise MetaError(f"{where}: field 'handlers' must be a list of handlers")
    if not handlers:
        raise MetaError(f"{where} has no handlers; a service needs at least one handler to be invoked")
    private = _optional_bool(spec, "ingressPrivate", where)
    converted = []
    seen: set[str] = set()
    for index, handler in enumerate(handlers):
        meta = _handler(handler, ty, bool(private), f"{where}: handlers[{index}]")
        if meta["name"] in seen:
            raise MetaError(f"{where} declares handler {_shown(meta['name'])} twice; handler names must be unique")
        seen.add(meta["name"])
        converted.append(meta)
    if ty == "WORKFLOW":
        runs = [h["name"] for h in converted if h["kind"] == "WORKFLOW"]
        if len(runs) != 1:
            raise MetaError(
                f"{where} is a WORKFLOW with {len(runs)} handlers of ty WORKFLOW; "
                "a workflow needs exactly one (its run handler), the others must be SHARED"
            )
    return {
        "name": name,
        "service_type": ty,
        "handlers": converted,
        "retry_policy": _retry_policy(spec.get("retryPolicy"), where),
        "retention_ms": _optional_ms(spec, "journalRetention", where),
        "inactivity_timeout_ms": _optional_ms(spec, "inactivityTimeout", where),
        "abort_timeout_ms": _optional_ms(spec, "abortTimeout", where),
        "ingress_private": bool(private),
        "forward_headers": _forward_headers(spec.get("forwardHeaders"), where),
    }


def _optional_bool(spec: Mapping[str, Any], field: str, where: str) -> bool | None:
    value = spec.get(field)
    if value is not None and not isinstance(value, bool):
        raise MetaError(f"{where}: field {field!r} must be true or false, got {value!r}")
    return value


_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def _forward_headers(value: object, where: str) -> list[str]:
    """`forwardHeaders` (keystate's extension): names of redacted headers the service still wants."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) and _HEADER_NAME.fullmatch(v) for v in value):
        raise MetaError(
            f"{where}: field 'forwardHeaders' must be a list of HTTP header names like [\"authorization\"], got {value!r}"
        )
    return sorted({v.lower() for v in value})


def _handler(spec: object, service_type: str, service_private: bool, where: str) -> dict[str, Any]:
    if not isinstance(spec, Mapping):
        raise MetaError(f"{where} must be an object with 'name' and 'ty'")
    name = _name(spec.get("name"), where, "handler")
    where = f"{where} ({_clipped(name)})"
    kind = spec.get("ty")
    if kind is None:
        kind = _DEFAULT_KIND[service_type]
    if kind not in _HANDLER_KINDS:
        raise MetaError(f"{where}: field 'ty' must be one of {', '.join(_HANDLER_KINDS)}, got {_shown(kind)}")
    if kind not in _ALLOWED_KINDS[service_type]:
        raise MetaError(
            f"{where}: a {service_type} cannot have a {kind} handler; allowed: "
            f"{', '.join(_ALLOWED_KINDS[service_type])}"
        )
    for setting in _SERVICE_ONLY_SETTINGS:
        if _optional_ms(spec, setting, where) is not None:
            raise MetaError(
                f"{where}: field {setting!r} is not supported per handler by this server; "
                "set it on the service instead (it then applies to every handler)"
            )
    return {
        "name": name,
        "kind": kind,
        "input_content_type": _content_type(spec.get("input"), where, "input"),
        "output_content_type": _content_type(spec.get("output"), where, "output"),
        "retry_policy": _retry_policy(spec.get("retryPolicy"), where),
        # Restate's rule: the handler's own ingressPrivate, else the service's.
        "ingress_private": _resolved(_optional_bool(spec, "ingressPrivate", where), service_private),
    }


def _resolved(own: bool | None, inherited: bool) -> bool:
    return inherited if own is None else own


def _content_type(spec: object, where: str, field: str) -> str | None:
    if spec is None:
        return None
    if not isinstance(spec, Mapping):
        raise MetaError(f"{where}: field {field!r} must be an object like {{\"contentType\": \"application/json\"}}")
    content_type = spec.get("contentType")
    if content_type is None:
        return None
    if not isinstance(content_type, str) or "/" not in content_type:
        raise MetaError(f"{where}: field '{field}.contentType' must be a media type like application/json, got {_shown(content_type)}")
    return content_type
