"""The read and lookup subset of the Confluent Schema Registry API, served by the admin from keystate's own schemas.

Confluent's clients (`SchemaRegistryClient`, `AvroSerializer`, `AvroDeserializer`) talk to it as to a
registry whose subjects follow the TopicNameStrategy: `<prefix>requests-value` holds
InvocationRequest, `<prefix>results-value` InvocationResult, `<prefix>requests.dlq-value` DeadLetter,
each with one version whose id is keystate's schema id (`keystate.schemas._registry`). Nothing can be
written: registering keystate's own schema answers its id, any other schema is refused, since keystate
reads its topics with its own schemas only. Errors have the registry's shape and codes, and join the
ingress tree of `errors.py`:

```
IngressError
 └── RegistryError    4xx  {"error_code": 40401|40402|40403|42201|42202|409|..., "message": ...}
```
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from fastavro.schema import parse_schema, to_parsing_canonical_form

from keystate.schemas._codec import Codec, codec
from keystate.schemas.errors import UnknownSchemaError
from keystate.schemas.topics import Topics

from .errors import IngressError

__all__ = [
    "CONTENT_TYPE",
    "INCOMPATIBLE_SCHEMA",
    "INVALID_SCHEMA",
    "INVALID_VERSION",
    "SCHEMA_NOT_FOUND",
    "SUBJECT_NOT_FOUND",
    "VERSION_NOT_FOUND",
    "RegistryError",
    "SchemaRegistry",
    "add_schema_registry_routes",
]

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
# Confluent's error codes: the HTTP status followed by a number for the reason.
SUBJECT_NOT_FOUND = 40401
VERSION_NOT_FOUND = 40402
SCHEMA_NOT_FOUND = 40403
INVALID_SCHEMA = 42201
INVALID_VERSION = 42202
INCOMPATIBLE_SCHEMA = 409

_MAX_VERSION = 2**31 - 1
_SERVED = (
    "GET /subjects, GET /subjects/{subject}/versions, GET /subjects/{subject}/versions/{version|latest}, "
    "POST /subjects/{subject}, POST /subjects/{subject}/versions, GET /schemas/ids/{id}, GET /schemas/types"
)


class RegistryError(IngressError):
    """A schema registry request keystate cannot serve; `error_code` is Confluent's code for the reason."""

    def __init__(self, status: int, error_code: int, message: str) -> None:
        super().__init__(message, status=status)
        self.error_code = error_code


@dataclass(frozen=True, slots=True)
class _Version:
    subject: str
    version: int
    name: str
    schema_id: int


class SchemaRegistry:
    """Subjects of one installation's topics and the answers of the registry API; no I/O."""

    def __init__(self, topics: Topics, schemas: Codec | None = None) -> None:
        self._codec = schemas or codec()
        # A record's versions in id order: a new version gets a new id and the next version number.
        by_subject = {
            f"{topics.requests}-value": ("keystate.InvocationRequest",),
            # 1: before `correlation` (still on the topic); 2: with it, compatible (the field has a default).
            f"{topics.results}-value": ("keystate.InvocationResultV1", "keystate.InvocationResult"),
            f"{topics.requests_dlq}-value": ("keystate.DeadLetter",),
        }
        self._subjects = {
            subject: [_Version(subject, i, name, self._codec.schema_id(name)) for i, name in enumerate(names, 1)]
            for subject, names in sorted(by_subject.items())
        }
        self._canonical: dict[int, str] = {}

    @property
    def subjects(self) -> list[str]:
        return list(self._subjects)

    def versions(self, subject: str) -> list[int]:
        return [v.version for v in self._versions(subject)]

    def version(self, subject: str, version: str) -> dict[str, Any]:
        """The registered schema `version` (a number, `latest` or -1) of `subject`."""
        versions = self._versions(subject)
        if version in ("latest", "-1"):
            return self._answer(versions[-1])
        try:
            number = int(version)
        except ValueError:
            number = 0
        if not 1 <= number <= _MAX_VERSION:
            raise RegistryError(
                422, INVALID_VERSION,
                f"version {version!r} is not valid: give a number from 1 to {_MAX_VERSION}, or latest (or -1)",
            )
        for v in versions:
            if v.version == number:
                return self._answer(v)
        raise RegistryError(
            404, VERSION_NOT_FOUND,
            f"subject {subject!r} has no version {number}; its versions are {self.versions(subject)} "
            "(a new version comes only with a new keystate release)",
        )

    def schema(self, schema_id: int) -> dict[str, Any]:
        """`GET /schemas/ids/{id}`: every keystate record's schema, self-contained."""
        try:
            return {"schema": json.dumps(self._codec.schema_for_id(schema_id))}
        except UnknownSchemaError as exc:
            raise RegistryError(
                404, SCHEMA_NOT_FOUND, f"{exc}; keystate's schema ids are listed in keystate.schemas._registry"
            ) from exc

    def lookup(self, subject: str, body: object) -> dict[str, Any]:
        """`POST /subjects/{subject}`: the registered version whose schema is `body`'s, in canonical form."""
        versions = self._versions(subject)
        canonical = _canonical_form(body)
        for v in reversed(versions):
            if self._canonical_of(v.schema_id) == canonical:
                return self._answer(v)
        raise RegistryError(404, SCHEMA_NOT_FOUND, f"this schema is not registered under {subject!r}: {self._why_not(subject, canonical)}")

    def register(self, subject: str, body: object) -> dict[str, Any]:
        """`POST /subjects/{subject}/versions`: the id of keystate's own schema; any other schema is refused."""
        versions = self._versions(subject)
        canonical = _canonical_form(body)
        for v in reversed(versions):
            if self._canonical_of(v.schema_id) == canonical:
                return {"id": v.schema_id, "subject": subject, "version": v.version}
        raise RegistryError(
            409, INCOMPATIBLE_SCHEMA,
            f"keystate's schema registry cannot register this schema under {subject!r}: {self._why_not(subject, canonical)}",
        )

    def _versions(self, subject: str) -> list[_Version]:
        versions = self._subjects.get(subject)
        if versions is None:
            raise RegistryError(
                404, SUBJECT_NOT_FOUND,
                f"subject {subject!r} not found: keystate serves the subjects of its own topics, named by the "
                f"TopicNameStrategy (the serializers' default): {', '.join(self._subjects)}; new subjects cannot be created",
            )
        return versions

    def _answer(self, v: _Version) -> dict[str, Any]:
        return {"subject": v.subject, "version": v.version, "id": v.schema_id, **self.schema(v.schema_id)}

    def _canonical_of(self, schema_id: int) -> str:
        if schema_id not in self._canonical:
            self._canonical[schema_id] = to_parsing_canonical_form(self._codec.schema_for_id(schema_id))
        return self._canonical[schema_id]

    def _why_not(self, subject: str, canonical: str) -> str:
        latest = self._versions(subject)[-1]
        for other, versions in self._subjects.items():
            for v in versions:
                if other != subject and self._canonical_of(v.schema_id) == canonical:
                    return f"it is {v.name} (id {v.schema_id}), the schema of subject {other!r}, not of this one"
        return (
            f"it differs from {latest.name} (id {latest.schema_id}), the schema keystate reads this topic with. "
            f"Serialize with keystate's own schema: set use.latest.version=True (auto.register.schemas=False), "
            f"or pass the schema of GET /subjects/{subject}/versions/latest"
        )


_REGISTRY_KEY = web.AppKey("schema_registry", SchemaRegistry)


def _canonical_form(body: object) -> str:
    """The Avro parsing canonical form of the schema in a request body; 422 42201 when there is none."""
    if not isinstance(body, dict) or not isinstance(body.get("schema"), str):
        raise RegistryError(422, INVALID_SCHEMA, 'the body must be a JSON object with the schema as a string: {"schema": "..."}')
    schema_type = body.get("schemaType") or "AVRO"
    if schema_type != "AVRO":
        raise RegistryError(422, INVALID_SCHEMA, f"schemaType {schema_type!r} is not supported: keystate's schemas are AVRO")
    if body.get("references"):
        raise RegistryError(
            422, INVALID_SCHEMA,
            "schema references are not supported: send the schema self-contained, as GET /schemas/ids/{id} gives it",
        )
    try:
        schema = json.loads(body["schema"])
        parse_schema(schema)
        return str(to_parsing_canonical_form(schema))
    except Exception as exc:  # json and fastavro raise a dozen kinds for a bad schema
        raise RegistryError(422, INVALID_SCHEMA, f"invalid Avro schema: {type(exc).__name__}: {exc}") from exc


_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _confluent(handler: Callable[[SchemaRegistry, web.Request], Awaitable[Any]]) -> _Handler:
    """Serve `handler`'s JSON with the registry's content type and its errors in the registry's shape."""

    async def serve(request: web.Request) -> web.StreamResponse:
        registry = request.app[_REGISTRY_KEY]
        try:
            return _json(await handler(registry, request))
        except RegistryError as exc:
            return _json({"error_code": exc.error_code, "message": exc.message}, exc.status)
        except IngressError as exc:
            return _json({"error_code": exc.status, "message": exc.message}, exc.status)

    return serve


def _json(payload: object, status: int = 200) -> web.Response:
    return web.Response(status=status, text=json.dumps(payload), content_type=CONTENT_TYPE)


async def _body(request: web.Request) -> object:
    try:
        return await request.json()
    except ValueError as exc:
        raise RegistryError(422, INVALID_SCHEMA, f'the body is not JSON ({exc}); send {{"schema": "..."}}') from exc


@_confluent
async def _subjects(registry: SchemaRegistry, request: web.Request) -> object:
    prefix = request.query.get("subjectPrefix", "")
    return [s for s in registry.subjects if s.startswith(prefix)]


@_confluent
async def _versions(registry: SchemaRegistry, request: web.Request) -> object:
    return registry.versions(request.match_info["subject"])


@_confluent
async def _version(registry: SchemaRegistry, request: web.Request) -> object:
    return registry.version(request.match_info["subject"], request.match_info["version"])


@_confluent
async def _lookup(registry: SchemaRegistry, request: web.Request) -> object:
    return registry.lookup(request.match_info["subject"], await _body(request))


@_confluent
async def _register(registry: SchemaRegistry, request: web.Request) -> object:
    return registry.register(request.match_info["subject"], await _body(request))


@_confluent
async def _schema(registry: SchemaRegistry, request: web.Request) -> object:
    text = request.match_info["id"]
    try:
        schema_id = int(text)
    except ValueError:
        raise RegistryError(400, 400, f"schema id {text!r} is not a number; ids are the 4 bytes after the magic byte") from None
    return registry.schema(schema_id)


@_confluent
async def _types(registry: SchemaRegistry, request: web.Request) -> object:
    return ["AVRO"]


@_confluent
async def _not_served(registry: SchemaRegistry, request: web.Request) -> object:
    if request.method in ("GET", "HEAD", "POST"):
        raise RegistryError(404, 404, f"keystate's schema registry has no {request.method} {request.path}; it serves {_SERVED}")
    raise RegistryError(
        405, 405,
        f"keystate's schema registry is read-only ({request.method} {request.path} is not served): its subjects, "
        f"schemas, compatibility and modes come with the keystate release. It serves {_SERVED}",
    )


def add_schema_registry_routes(app: web.Application, topics: Topics) -> None:
    """Serve the registry API on `app` for the topics under `topics`' prefix."""
    app[_REGISTRY_KEY] = SchemaRegistry(topics)
    router = app.router
    router.add_get("/subjects", _subjects)
    router.add_get("/subjects/{subject}/versions", _versions)
    router.add_post("/subjects/{subject}/versions", _register)
    router.add_get("/subjects/{subject}/versions/{version}", _version)
    router.add_post("/subjects/{subject}", _lookup)
    router.add_get("/schemas/ids/{id}", _schema)
    router.add_get("/schemas/types", _types)
    # Last: every other method or path of the registry API gets an answer in its shape, not the ingress's 404.
    for path in ("/subjects{tail:.*}", "/schemas{tail:.*}", "/config{tail:.*}", "/mode{tail:.*}", "/compatibility{tail:.*}"):
        router.add_route("*", path, _not_served)
