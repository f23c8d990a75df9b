"""The typed records and enums match the .avsc files: a schema change without a code change fails here."""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from typing import Any

import pytest

from keystate.schemas import enums, records
from keystate.schemas._codec import AVRO_DIR, codec
from keystate.schemas.ids import InvocationIdStr

NS = "keystate."

# Every class of keystate.schemas.records and the Avro record it stands for (same name).
RECORD_CLASSES: list[type[Any]] = [
    records.InvocationStatus,
    records.JournalRecord,
    records.StateValue,
    records.InboxItem,
    records.ObjectStatus,
    records.TimerValue,
    records.PromiseValue,
    records.IdempotencyValue,
    records.Target,
    records.CallerRef,
    records.Failure,
    records.Correlation,
    records.SetStateCommand,
]
TABLE_ROWS = RECORD_CLASSES[:8]

# Unions of several records travel as (full name, record) tuples: which alias types each.
_MULTI_RECORD_UNIONS = {
    frozenset({NS + "Value", NS + "Failure"}): records.Result,
}


def _schema(name: str) -> dict[str, Any]:
    return dict(json.loads((AVRO_DIR / f"{name.removeprefix(NS)}.avsc").read_text()))


def _expected_type(avro: Any) -> Any:
    """The Python type a dataclass field must have for the Avro type `avro`."""
    primitives = {"string": str, "int": int, "long": int, "boolean": bool, "bytes": bytes, "double": float}
    if isinstance(avro, str):
        if avro in primitives:
            return primitives[avro]
        full = avro if avro.startswith(NS) else NS + avro
        schema = _schema(full)
        if schema["type"] == "enum":
            return enums.AVRO_ENUMS[full]
        return getattr(records, schema["name"])
    if isinstance(avro, list):
        branches = [b for b in avro if b != "null"]
        if len(branches) > 1:
            if all(isinstance(b, str) and _schema(b)["type"] == "record" for b in branches):
                union = frozenset(b if b.startswith(NS) else NS + b for b in branches)
                if union in _MULTI_RECORD_UNIONS:
                    inner = _MULTI_RECORD_UNIONS[union]
                else:
                    inner = records.Entry  # the journal's *Entry records
            else:
                raise AssertionError(f"no Python type for the union {avro}")
        else:
            inner = _expected_type(branches[0])
        return inner | None if "null" in avro else inner
    if avro["type"] == "array":
        return tuple[_expected_type(avro["items"]), ...]
    if avro["type"] == "map":
        return dict[str, _expected_type(avro["values"])]
    raise AssertionError(f"no Python type for {avro}")


def _normalize(hint: Any) -> Any:
    """NewTypes compare as their base type (InvocationIdStr is a str on the wire)."""
    if hint is InvocationIdStr:
        return str
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return typing.Union[tuple(_normalize(a) for a in typing.get_args(hint))]  # noqa: UP007
    args = typing.get_args(hint)
    if args and typing.get_origin(hint) in (tuple, dict, list):
        return typing.get_origin(hint)[tuple(a if a is Ellipsis else _normalize(a) for a in args)]
    return hint


@pytest.mark.parametrize("cls", RECORD_CLASSES, ids=lambda c: c.__name__)
def test_fields_match_the_schema_names_order_types_and_defaults(cls: type[Any]) -> None:
    schema = _schema(NS + cls.__name__)
    fields = dataclasses.fields(cls)
    assert [f.name for f in fields] == [f["name"] for f in schema["fields"]]
    hints = typing.get_type_hints(cls)
    for field, avro in zip(fields, schema["fields"], strict=True):
        where = f"{cls.__name__}.{field.name}"
        assert _normalize(hints[field.name]) == _normalize(_expected_type(avro["type"])), where
        if "default" in avro:
            if field.default is not dataclasses.MISSING:
                default = field.default
            else:
                assert field.default_factory is not dataclasses.MISSING, f"{where} needs the default {avro['default']!r}"
                default = field.default_factory()
            # Avro writes an array default as a list; the records hold tuples.
            assert (list(default) if isinstance(default, tuple) else default) == avro["default"], where
        else:
            assert field.default is dataclasses.MISSING, f"{where} has a default the schema does not"
            assert field.default_factory is dataclasses.MISSING, f"{where} has a default the schema does not"


@pytest.mark.parametrize("cls", RECORD_CLASSES, ids=lambda c: c.__name__)
def test_records_are_frozen_slotted_and_keyword_only(cls: type[Any]) -> None:
    params = cls.__dataclass_params__
    assert params.frozen
    assert "__slots__" in cls.__dict__
    assert all(f.kw_only for f in dataclasses.fields(cls))


def test_every_avro_enum_has_a_strenum_with_exactly_its_symbols() -> None:
    in_schemas = {}
    for path in sorted(AVRO_DIR.glob("*.avsc")):
        schema = json.loads(path.read_text())
        if schema["type"] == "enum":
            in_schemas[NS + schema["name"]] = schema["symbols"]
    assert set(enums.AVRO_ENUMS) == set(in_schemas)
    for name, cls in enums.AVRO_ENUMS.items():
        assert [m.value for m in cls] == in_schemas[name], name
        assert all(m == m.value and str(m) == m.value for m in cls), name


def test_the_ids_module_shares_the_enums() -> None:
    from keystate.schemas import ids

    assert ids.ServiceType is enums.ServiceType
    assert ids.HandlerKind is enums.HandlerKind


# ---------------------------------------------------------------- round trips through the codec


def _sample(avro: Any, full: bool) -> Any:
    """A value of Avro type `avro` as the codec decodes it; `full` fills optional fields too."""
    primitives = {"string": "s", "int": 7, "long": 1_700_000_000_000, "boolean": True, "bytes": b"\x00x", "double": 1.5}
    if isinstance(avro, str):
        if avro in primitives:
            return primitives[avro]
        schema = _schema(avro if avro.startswith(NS) else NS + avro)
        if schema["type"] == "enum":
            return schema["symbols"][-1]
        return {f["name"]: _sample(f["type"], full) for f in schema["fields"]}
    if isinstance(avro, list):
        branches = [b for b in avro if b != "null"]
        if not full and "null" in avro:
            return None
        if len(branches) > 1:
            name = branches[-1] if branches[-1].startswith(NS) else NS + branches[-1]
            return (name, _sample(name, full))
        return _sample(branches[0], full)
    if avro["type"] == "array":
        return [_sample(avro["items"], full)] if full else []
    if avro["type"] == "map":
        return {"k": _sample(avro["values"], full)} if full else {}
    raise AssertionError(avro)


@pytest.mark.parametrize("full", [True, False], ids=["every-field-set", "optionals-empty"])
@pytest.mark.parametrize("cls", TABLE_ROWS, ids=lambda c: c.__name__)
def test_a_decoded_row_converts_to_the_record_and_back_unchanged(cls: type[Any], full: bool) -> None:
    name = NS + cls.__name__
    decoded = codec().decode_as(name, codec().encode(name, _sample(name, full)))
    row = cls.from_avro(decoded)
    assert row.to_avro() == decoded
    assert codec().decode_as(name, codec().encode(name, row.to_avro())) == decoded


def test_from_avro_fills_omitted_optional_fields_with_their_defaults() -> None:
    name = NS + "InvocationStatus"
    schema = _schema(name)
    required = {f["name"]: _sample(f["type"], True) for f in schema["fields"] if "default" not in f}
    status = records.InvocationStatus.from_avro(required)
    assert status.to_avro() == codec().decode_as(name, codec().encode(name, required))


def test_fastavro_encodes_strenum_members_as_their_symbols() -> None:
    status = _sample(NS + "InvocationStatus", True)
    plain = codec().encode(NS + "InvocationStatus", status)
    typed = records.InvocationStatus.from_avro(status)
    assert isinstance(typed.status, enums.InvocationState)
    assert isinstance(typed.to_avro()["target"]["service_type"], enums.ServiceType)
    assert codec().encode(NS + "InvocationStatus", typed.to_avro()) == plain
    timer = {"invocation_id": "i", "timer_kind": enums.TimerKind.RETRY, "entry_index": None, "attempt": 2,
             "fire_at_ms": 5}
    decoded = codec().decode_as(NS + "TimerValue", codec().encode(NS + "TimerValue", timer))
    assert decoded == timer
    assert type(decoded["timer_kind"]) is str  # decoded symbols are plain strings, equal to the members
