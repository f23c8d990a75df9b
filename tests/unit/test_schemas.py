"""The .avsc files follow the house rules and agree with the schema id registry."""

import json
import re
from pathlib import Path

import pytest

from keystate.schemas._codec import AVRO_DIR, Codec
from keystate.schemas._registry import SCHEMA_IDS
from keystate.schemas.errors import ContractError

FILES = sorted(AVRO_DIR.glob("*.avsc"))
SCHEMAS = {f"keystate.{p.stem}": json.loads(p.read_text()) for p in FILES}
RECORDS = {name: s for name, s in SCHEMAS.items() if s["type"] == "record"}
SNAKE = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")
PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}


def refs(schema):
    if isinstance(schema, str):
        if schema not in PRIMITIVES:
            yield schema
    elif isinstance(schema, list):
        for branch in schema:
            yield from refs(branch)
    elif schema["type"] == "array":
        yield from refs(schema["items"])
    elif schema["type"] == "map":
        yield from refs(schema["values"])
    elif schema["type"] == "record":
        for field in schema["fields"]:
            yield from refs(field["type"])


REFERENCED = {r for s in SCHEMAS.values() for r in refs(s)}


def test_there_are_schemas():
    assert len(FILES) > 30
    assert "keystate.InvokeCommand" in SCHEMAS


def test_all_schemas_parse_together():
    assert set(Codec().names) == set(SCHEMA_IDS)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_file_defines_the_type_it_is_named_after(path: Path):
    schema = json.loads(path.read_text())
    assert schema["name"] == path.stem
    assert schema["namespace"] == "keystate"
    assert schema["type"] in ("record", "enum")


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_every_type_and_field_has_a_doc(name):
    schema = SCHEMAS[name]
    assert schema.get("doc", "").strip(), f"{name} has no doc"
    for field in schema.get("fields", []):
        assert field.get("doc", "").strip(), f"{name}.{field['name']} has no doc"


@pytest.mark.parametrize("name", sorted(RECORDS))
def test_field_conventions(name):
    for field in RECORDS[name]["fields"]:
        where = f"{name}.{field['name']}"
        assert SNAKE.match(field["name"]), f"{where} is not snake_case"
        type_ = field["type"]
        if isinstance(type_, list):
            assert "null" not in type_[1:], f"{where}: null must be the first branch"
            if type_[0] == "null":
                assert "default" in field and field["default"] is None, f"{where}: default null"
        if field["name"].endswith("_ms"):
            assert type_ in ("long", ["null", "long"]), f"{where}: times are long milliseconds"
        for ref in refs(type_):
            assert ref.startswith("keystate."), f"{where}: refer to {ref} by full name"
            assert ref in SCHEMAS, f"{where}: {ref} has no .avsc file"


def test_every_top_level_record_has_an_id():
    # A record that no other schema uses can only travel on its own, so it needs an id.
    roots = set(RECORDS) - REFERENCED
    assert roots - set(SCHEMA_IDS) == set()
    # JournalRecord is both a table value and part of messages.
    assert "keystate.JournalRecord" in SCHEMA_IDS


def test_registry_names_records_with_files():
    assert set(SCHEMA_IDS) <= set(RECORDS)


def test_ids_are_unique_positive_32_bit():
    ids = list(SCHEMA_IDS.values())
    assert len(ids) == len(set(ids))
    assert all(0 < i < 2**31 for i in ids)


def test_codec_rejects_ids_for_missing_files():
    with pytest.raises(ContractError, match="keystate.Nope"):
        Codec(ids={**SCHEMA_IDS, "keystate.Nope": 999})


def test_codec_rejects_duplicate_ids():
    with pytest.raises(ContractError, match="unique"):
        Codec(ids={"keystate.AckMessage": 1, "keystate.EndMessage": 1})


def test_codec_rejects_dangling_reference(tmp_path: Path):
    schema = {"type": "record", "name": "A", "namespace": "keystate", "doc": "a",
              "fields": [{"name": "b", "type": "keystate.B", "doc": "b"}]}
    (tmp_path / "A.avsc").write_text(json.dumps(schema))
    with pytest.raises(ContractError, match="keystate.B"):
        Codec(directory=tmp_path, ids={"keystate.A": 1})


def test_codec_rejects_inline_named_types(tmp_path: Path):
    inner = {"type": "record", "name": "B", "doc": "b", "fields": []}
    schema = {"type": "record", "name": "A", "namespace": "keystate", "doc": "a",
              "fields": [{"name": "b", "type": inner, "doc": "b"}]}
    (tmp_path / "A.avsc").write_text(json.dumps(schema))
    with pytest.raises(ContractError, match="exactly one named type"):
        Codec(directory=tmp_path, ids={"keystate.A": 1})


def test_codec_rejects_file_named_after_another_type(tmp_path: Path):
    schema = {"type": "record", "name": "A", "namespace": "keystate", "doc": "a", "fields": []}
    (tmp_path / "B.avsc").write_text(json.dumps(schema))
    with pytest.raises(ContractError, match="B.avsc"):
        Codec(directory=tmp_path, ids={})
