"""Avro codec in the Confluent wire format for every keystate record, schemas parsed once.

Wire format: magic byte 0, the schema id as 4 bytes big-endian (see `SCHEMA_IDS`), then the
Avro binary body of the record (no Avro container, no schema).

Records are plain dicts keyed by field name; optional fields may be left out (they default to
null) and unknown keys are ignored. Values follow fastavro: `bytes` for bytes, `str` for
strings, `int` for int/long, enum symbols as `str`, maps as `dict[str, ...]`.

Unions, one convention for both directions:

- A union with at most one record type (`["null", "string"]`, `["null", "keystate.Failure"]`)
  holds the plain value: `None`, a `str`, a dict.
- A union of two or more record types (`JournalRecord.entry`, every `result` of
  `Value`/`Failure`) holds a tuple `(full_name, dict)`, e.g.
  `("keystate.Failure", {"code": 409, "message": "already completed"})` or
  `("keystate.SetStateEntry", {"key": "k", "value": b"v"})`. `decode` always returns that tuple
  (fastavro's `return_record_name=True` with `return_record_name_override=True`) and `encode`
  takes it (fastavro's tuple notation), so a decoded record encodes back to the same bytes.
  Give the tuple when encoding: a bare dict is matched by shape, and a shape can fit several
  branches (`EndMessage`-like empty records fit anything).
"""

from __future__ import annotations

import copy
import functools
import io
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, cast

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.validation import validate

from ._registry import SCHEMA_IDS, UPGRADES
from .errors import ContractError, DecodeError, EncodeError, UnknownSchemaError

__all__ = ["AVRO_DIR", "MAGIC_BYTE", "Codec", "codec"]

AVRO_DIR = Path(__file__).parent / "avro"
"""Where the `.avsc` files live: one file per named type, file name = type name."""

MAGIC_BYTE = 0
_HEADER_SIZE = 5
_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})


class Codec:
    """Encodes and decodes keystate records; build once (see `codec()`), then share.

    `directory`, `ids` and `upgrades` exist for tests; by default the packaged schemas, `SCHEMA_IDS` and
    `UPGRADES` (old versions decoded as the current one, missing fields set to their defaults).
    """

    def __init__(
        self,
        directory: Path = AVRO_DIR,
        ids: Mapping[str, int] = SCHEMA_IDS,
        upgrades: Mapping[str, str] = UPGRADES,
    ) -> None:
        self._raw = _load(directory)
        missing = sorted(set(ids) - set(self._raw))
        if missing:
            raise ContractError(f"schema ids for records without a .avsc file: {missing}")
        if len(set(ids.values())) != len(ids):
            raise ContractError("two records share a schema id; every id must be unique")
        self._parsed = _parse_all(self._raw)
        self._ids = dict(ids)
        self._names_by_id = {schema_id: name for name, schema_id in ids.items()}
        # Hot path state: per name the 5-byte header and the parsed schema; per id the same.
        self._writers = {
            name: (bytes([MAGIC_BYTE]) + schema_id.to_bytes(4, "big"), self._parsed[name])
            for name, schema_id in ids.items()
        }
        self._readers = {
            schema_id: (name, self._parsed[name]) for name, schema_id in ids.items()
        }
        self._resolved: dict[str, dict[str, Any]] = {}
        # Old version -> (current name, the current version's fields it lacks, with their defaults).
        self._upgrades = {
            old: (new, _added_defaults(self._raw[old], self._raw[new]))
            for old, new in upgrades.items()
            if old in self._ids and new in self._ids
        }

    @property
    def names(self) -> tuple[str, ...]:
        """Full names of the records that have a schema id, in id order."""
        return tuple(sorted(self._ids, key=self._ids.__getitem__))

    def schema_id(self, name: str) -> int:
        """The schema id of a top-level record, by full name (`keystate.InvokeCommand`)."""
        try:
            return self._ids[name]
        except KeyError:
            raise self._unknown_name(name) from None

    def schema_for_id(self, schema_id: int) -> dict[str, Any]:
        """The schema of an id as written in the .avsc files, self-contained for other tools.

        Named types from other files are inlined at their first use (later uses stay by name,
        as Avro requires), so `GET /schemas/ids/{id}` gives a schema any Avro tool can parse.
        """
        try:
            name = self._names_by_id[schema_id]
        except KeyError:
            raise UnknownSchemaError(f"unknown schema id {schema_id}") from None
        if name not in self._resolved:
            resolved = _inline(name, self._raw, set())
            upgrade = self._upgrades.get(name)
            if upgrade is not None:
                # Served under the name it was written with, so Avro readers resolve it against the current version.
                resolved["name"] = upgrade[0].rsplit(".", 1)[-1]
            self._resolved[name] = resolved
        return copy.deepcopy(self._resolved[name])

    def encode(self, name: str, record: Mapping[str, Any]) -> bytes:
        """The wire-format bytes of `record`, a record of type `name` (full name)."""
        try:
            header, schema = self._writers[name]
        except KeyError:
            raise self._unknown_name(name) from None
        out = io.BytesIO()
        out.write(header)
        try:
            schemaless_writer(out, schema, record)
        except Exception as exc:
            raise EncodeError(_explain(name, schema, record, exc)) from exc
        return out.getvalue()

    def decode(self, data: bytes) -> tuple[str, dict[str, Any]]:
        """The full record name and the record in wire-format `data`; an old version comes upgraded."""
        name, schema = self._header(data)
        record = _read_body(name, schema, data)
        return self._upgrade(name, record)

    def decode_as(self, name: str, data: bytes) -> dict[str, Any]:
        """The record in `data`, which must be of type `name` (full name), or an old version of it, upgraded."""
        if name not in self._ids:
            raise self._unknown_name(name)
        actual, schema = self._header(data)
        upgraded = self._upgrades.get(actual)
        if actual != name and (upgraded is None or upgraded[0] != name):
            raise DecodeError(f"expected a {name} record, got a {actual}")
        return self._upgrade(actual, _read_body(actual, schema, data))[1]

    def _upgrade(self, name: str, record: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        upgrade = self._upgrades.get(name)
        if upgrade is None:
            return name, record
        current, defaults = upgrade
        for field_name, default in defaults:
            record[field_name] = copy.deepcopy(default)
        return current, record

    def _header(self, data: bytes) -> tuple[str, dict[str, Any]]:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise DecodeError(f"expected bytes, got {type(data).__name__}")
        if len(data) < _HEADER_SIZE:
            raise DecodeError(
                f"{len(data)} bytes is too short for a record: the wire format starts with "
                "a magic byte and a 4-byte schema id"
            )
        if data[0] != MAGIC_BYTE:
            raise DecodeError(
                f"wrong magic byte {data[0]}: not a Confluent wire-format record (expected 0)"
            )
        schema_id = int.from_bytes(data[1:_HEADER_SIZE], "big")
        try:
            return self._readers[schema_id]
        except KeyError:
            raise UnknownSchemaError(
                f"unknown schema id {schema_id}: written by a newer keystate, or not a keystate record"
            ) from None

    def _unknown_name(self, name: str) -> UnknownSchemaError:
        if f"keystate.{name}" in self._ids:
            return UnknownSchemaError(f"unknown record {name!r}; did you mean 'keystate.{name}'?")
        if name in self._raw:
            return UnknownSchemaError(f"{name} is an inner type and has no schema id of its own")
        return UnknownSchemaError(f"unknown record {name!r}")


@functools.cache
def codec() -> Codec:
    """The process-wide codec for the packaged schemas."""
    return Codec()


def _added_defaults(old: dict[str, Any], new: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    """The fields `new` adds to `old`, with their defaults; refuses a change that is not such an addition."""
    before = {f["name"] for f in old["fields"]}
    added = []
    for f in new["fields"]:
        if f["name"] in before:
            continue
        if "default" not in f:
            raise ContractError(f"{new['name']}.{f['name']} has no default, so an old {old['name']} cannot be upgraded")
        added.append((f["name"], f["default"]))
    return tuple(added)


def _read_body(name: str, schema: dict[str, Any], data: bytes) -> dict[str, Any]:
    body = io.BytesIO(data)
    body.seek(_HEADER_SIZE)
    # Any exception here means bad input: fastavro raises EOFError, ValueError, IndexError,
    # UnicodeDecodeError, struct.error, ... depending on where the bytes go wrong.
    try:
        record = schemaless_reader(
            body, schema, None, return_record_name=True, return_record_name_override=True
        )
    except Exception as exc:
        raise DecodeError(
            f"body is not a valid {name} record ({type(exc).__name__}: {exc})"
        ) from exc
    if body.tell() != len(data):
        raise DecodeError(
            f"{len(data) - body.tell()} trailing bytes after a {name} record"
        )
    return cast(dict[str, Any], record)  # every keystate schema is a record


def _explain(name: str, schema: dict[str, Any], record: Any, exc: Exception) -> str:
    """Say which field of which record is wrong; only runs once encoding has failed."""
    if not isinstance(record, Mapping):
        return f"cannot encode {name}: expected a dict, got {type(record).__name__}"
    try:
        validate(record, schema, raise_errors=True)
    except Exception as invalid:
        details = [_shorten(str(d)) for d in getattr(invalid, "errors", None) or [invalid]]
        return f"cannot encode {name}: {'; '.join(details)} ({exc})"
    return f"cannot encode {name}: {type(exc).__name__}: {exc}"


def _shorten(detail: str, limit: int = 200) -> str:
    # fastavro prints a whole expected schema; the field path at the start is what helps.
    return detail if len(detail) <= limit else detail[:limit] + "..."


def _load(directory: Path) -> dict[str, dict[str, Any]]:
    """The JSON of every .avsc by full name; each file defines exactly the type it is named after."""
    raw: dict[str, dict[str, Any]] = {}
    for path in sorted(directory.glob("*.avsc")):
        try:
            schema = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ContractError(f"cannot read schema {path.name}: {exc}") from exc
        if not isinstance(schema, dict) or schema.get("name") != path.stem:
            raise ContractError(f"{path.name} must define one named type called {path.stem}")
        namespace = schema.get("namespace")
        full_name = f"{namespace}.{path.stem}" if namespace else path.stem
        raw[full_name] = schema
    if not raw:
        raise ContractError(f"no .avsc files in {directory}")
    return raw


def _references(schema: Any) -> Iterator[str]:
    """Names of the named types a schema refers to (not those it defines)."""
    if isinstance(schema, str):
        if schema not in _PRIMITIVES:
            yield schema
    elif isinstance(schema, list):
        for branch in schema:
            yield from _references(branch)
    elif isinstance(schema, dict):
        kind = schema.get("type")
        if kind == "record":
            for field in schema.get("fields", ()):
                yield from _references(field["type"])
        elif kind == "array":
            yield from _references(schema["items"])
        elif kind == "map":
            yield from _references(schema["values"])
        elif kind not in ("enum", "fixed"):
            yield from _references(kind)


def _parse_all(raw: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Parse every schema once, each after the types it refers to, sharing one name table."""
    order: list[str] = []
    state: dict[str, str] = {}

    def visit(name: str, path: tuple[str, ...]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "visiting":
            raise ContractError(f"recursive schema references: {' -> '.join((*path, name))}")
        state[name] = "visiting"
        for ref in _references(raw[name]):
            if ref not in raw:
                raise ContractError(
                    f"{name} refers to {ref!r}, which has no .avsc file (use full names)"
                )
            visit(ref, (*path, name))
        state[name] = "done"
        order.append(name)

    for name in sorted(raw):
        visit(name, ())
    named: dict[str, Any] = {}
    parsed: dict[str, dict[str, Any]] = {}
    for name in order:
        before = set(named)
        try:
            parsed[name] = cast(dict[str, Any], parse_schema(copy.deepcopy(raw[name]), named))
        except Exception as exc:
            raise ContractError(f"invalid schema {name}: {exc}") from exc
        if set(named) - before != {name}:
            raise ContractError(f"{name}.avsc must define exactly one named type, inline none")
    # fastavro copies a parsed schema's name table on every read and write: give each schema
    # only the types it uses, not all of them (halves the cost of encoding a small record).
    for name, schema in parsed.items():
        if isinstance(schema, dict) and "__named_schemas" in schema:
            used = _closure(name, raw)
            parsed[name] = {**schema, "__named_schemas": {n: named[n] for n in used}}
    return parsed


def _closure(name: str, raw: dict[str, dict[str, Any]]) -> set[str]:
    """`name` and every named type it uses, directly or not."""
    found = {name}
    pending = [name]
    while pending:
        for ref in _references(raw[pending.pop()]):
            if ref not in found:
                found.add(ref)
                pending.append(ref)
    return found


def _inline(schema: Any, raw: dict[str, dict[str, Any]], seen: set[str]) -> Any:
    """A copy of `schema` with each referenced named type defined at its first use."""
    if isinstance(schema, str):
        if schema in _PRIMITIVES or schema in seen:
            return schema
        seen.add(schema)
        return _inline(raw[schema], raw, seen)
    if isinstance(schema, list):
        return [_inline(branch, raw, seen) for branch in schema]
    if not isinstance(schema, dict):
        return schema
    kind = schema.get("type")
    out = dict(schema)
    if kind == "record":
        out["fields"] = [{**f, "type": _inline(f["type"], raw, seen)} for f in schema["fields"]]
    elif kind == "array":
        out["items"] = _inline(schema["items"], raw, seen)
    elif kind == "map":
        out["values"] = _inline(schema["values"], raw, seen)
    elif kind not in ("enum", "fixed"):
        out["type"] = _inline(kind, raw, seen)
    return out
