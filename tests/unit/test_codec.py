"""The codec round-trips every record and turns every bad input into a typed error."""

import io
import json

import fastavro
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keystate.schemas._codec import AVRO_DIR, Codec, codec
from keystate.schemas._registry import SCHEMA_IDS, UPGRADES
from keystate.schemas.errors import ContractError, DecodeError, EncodeError, UnknownSchemaError

TYPES = {f"keystate.{p.stem}": json.loads(p.read_text()) for p in AVRO_DIR.glob("*.avsc")}
NAMES = sorted(SCHEMA_IDS)
MAX_BRANCHES = max(
    len(f["type"])
    for s in TYPES.values()
    for f in s.get("fields", [])
    if isinstance(f["type"], list)
)


def resolve(schema):
    return TYPES[schema] if isinstance(schema, str) and schema in TYPES else schema


def is_record(schema) -> bool:
    schema = resolve(schema)
    return isinstance(schema, dict) and schema["type"] == "record"


def tagged(union) -> bool:
    """The codec's convention: a union of two or more records holds (full_name, dict)."""
    return sum(map(is_record, union)) > 1


def sample(schema, variant: int):
    """A deterministic value of `schema`; `variant` picks union branches, enums and numbers."""
    schema = resolve(schema)
    if isinstance(schema, list):
        branch = schema[variant % len(schema)]
        value = sample(branch, variant)
        return (branch, value) if tagged(schema) and is_record(branch) else value
    if isinstance(schema, str):
        return {
            "null": None,
            "boolean": variant % 2 == 0,
            "int": -(variant + 1) * 1000,
            "long": (variant + 1) * 1_700_000_000_000,
            "double": variant + 0.5,
            "float": 0.25,
            "bytes": bytes(range(variant % 7 + 1)),
            "string": f"s-{variant}-\u00e9",
        }[schema]
    kind = schema["type"]
    if kind == "record":
        return {f["name"]: sample(f["type"], variant) for f in schema["fields"]}
    if kind == "enum":
        return schema["symbols"][variant % len(schema["symbols"])]
    if kind == "array":
        return [sample(schema["items"], variant), sample(schema["items"], variant + 1)]
    if kind == "map":
        return {"a": sample(schema["values"], variant), "b\u00fc": sample(schema["values"], variant + 1)}
    raise AssertionError(f"unhandled schema {schema}")


def strategy(schema):
    """Hypothesis strategy for any value of `schema`, following the codec's union convention."""
    schema = resolve(schema)
    if isinstance(schema, list):
        branches = []
        for branch in schema:
            if tagged(schema) and is_record(branch):
                branches.append(st.tuples(st.just(branch), strategy(branch)))
            else:
                branches.append(strategy(branch))
        return st.one_of(branches)
    if isinstance(schema, str):
        return {
            "null": st.none(),
            "boolean": st.booleans(),
            "int": st.integers(-(2**31), 2**31 - 1),
            "long": st.integers(-(2**63), 2**63 - 1),
            "double": st.floats(allow_nan=False),
            "bytes": st.binary(max_size=20),
            "string": st.text(max_size=20),
        }[schema]
    kind = schema["type"]
    if kind == "record":
        return st.fixed_dictionaries({f["name"]: strategy(f["type"]) for f in schema["fields"]})
    if kind == "enum":
        return st.sampled_from(schema["symbols"])
    if kind == "array":
        return st.lists(strategy(schema["items"]), max_size=3)
    if kind == "map":
        return st.dictionaries(st.text(max_size=5), strategy(schema["values"]), max_size=3)
    raise AssertionError(f"unhandled schema {schema}")


# ---- round trips


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("variant", range(MAX_BRANCHES))
def test_every_record_round_trips(name, variant):
    record = sample(name, variant)
    data = codec().encode(name, record)
    assert codec().decode(data) == _read_as(name, record)
    assert codec().decode_as(*_read_as(name, record)[:1], data) == _read_as(name, record)[1]


def _read_as(name, record):
    """What decoding `record` written as `name` gives: old versions come back upgraded (UPGRADES)."""
    if name not in UPGRADES:
        return name, record
    added: dict[str, object] = {"correlation": None}
    if name == "keystate.InvocationStatusV1":
        added["reply_topics"] = []
    if name == "keystate.InboxItemV1":
        added = {"state_edit": None}
    if name == "keystate.StartMessageV1":
        added = {"attempt_headers": {}}
    return UPGRADES[name], {**record, **added}


@pytest.mark.parametrize(("old", "new"), sorted(UPGRADES.items()))
def test_an_old_version_is_read_as_the_current_one_with_the_added_fields_defaulted(old, new):
    record = sample(old, 0)
    data = codec().encode(old, record)
    assert data[1:5] == SCHEMA_IDS[old].to_bytes(4, "big")  # still written under its own id

    name, read = codec().decode(data)

    assert name == new
    assert read == _read_as(old, record)[1]
    assert codec().decode_as(new, data) == read
    assert codec().encode(new, read)[1:5] == SCHEMA_IDS[new].to_bytes(4, "big")  # written back as the current one


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=25, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_record_round_trips_property(name, data):
    record = data.draw(strategy(name))
    encoded = codec().encode(name, record)
    assert codec().decode(encoded) == _read_as(name, record)
    assert codec().encode(name, codec().decode_as(name, encoded)) == encoded


def test_samples_cover_every_journal_entry():
    entries = {sample("keystate.JournalRecord", v)["entry"][0] for v in range(MAX_BRANCHES)}
    assert entries == set(TYPES["keystate.JournalRecord"]["fields"][0]["type"])


def test_union_of_records_decodes_to_tagged_tuple():
    record = {"index": 3, "result": ("keystate.Failure", {"code": 409, "message": "taken"})}
    data = codec().encode("keystate.CompletionMessage", record)
    assert codec().decode_as("keystate.CompletionMessage", data)["result"] == (
        "keystate.Failure",
        {"code": 409, "message": "taken"},
    )


def test_journal_record_holds_tagged_entry():
    record = {"entry": ("keystate.SetStateEntry", {"key": "k", "value": b"v"})}
    data = codec().encode("keystate.JournalRecord", record)
    assert codec().decode_as("keystate.JournalRecord", data) == record
    empty = {"entry": ("keystate.ClearAllStateEntry", {})}
    assert codec().decode_as(
        "keystate.JournalRecord", codec().encode("keystate.JournalRecord", empty)
    ) == empty


def test_optional_single_record_is_a_plain_dict():
    record = sample("keystate.InvokeCommand", 1)
    record["caller"] = {"invocation_id": "inv-1", "entry_index": 4}
    decoded = codec().decode_as("keystate.InvokeCommand", codec().encode("keystate.InvokeCommand", record))
    assert decoded["caller"] == {"invocation_id": "inv-1", "entry_index": 4}


def test_optional_fields_default_to_null():
    record = {"service": "Greeter", "handler": "greet", "argument": b"{}", "headers": {}}
    decoded = codec().decode_as("keystate.InvocationRequest", codec().encode("keystate.InvocationRequest", record))
    assert decoded == {**record, "key": None, "idempotency_key": None, "reply_topic": None, "delay_ms": None}


# ---- wire format and ids


def test_wire_format_header():
    for name in NAMES:
        data = codec().encode(name, sample(name, 0))
        assert data[0] == 0
        assert int.from_bytes(data[1:5], "big") == SCHEMA_IDS[name]
        assert data[:5] == b"\x00" + codec().schema_id(name).to_bytes(4, "big")


def test_exact_bytes_of_a_small_record():
    # magic 0, id 503 (0x1F7), zigzag varint 5 = 0x0A
    assert codec().encode("keystate.AckMessage", {"index": 5}) == b"\x00\x00\x00\x01\xf7\x0a"
    assert codec().encode("keystate.EndMessage", {}) == b"\x00\x00\x00\x01\xfb"


@pytest.mark.parametrize(
    ("name", "schema_id"),
    [
        # 101/201/302 keep the layout before correlation (read and upgraded); the current ones are 117/209/304.
        ("keystate.InvokeCommandV1", 101),
        ("keystate.InvokeCommand", 117),
        ("keystate.JournalAppendCommand", 102),
        ("keystate.PurgeCommand", 113),
        # 114 keeps ResumeCommand's first layout (read); the current one, naming a deployment, is 116.
        ("keystate.ResumeCommandV1", 114),
        ("keystate.PauseCommand", 115),
        ("keystate.ResumeCommand", 116),
        ("keystate.InvocationStatusV1", 201),
        ("keystate.InvocationStatus", 209),
        ("keystate.InboxItemV1", 204),
        ("keystate.InboxItem", 210),
        ("keystate.SetStateCommand", 118),
        ("keystate.RestartAsNewCommand", 119),
        ("keystate.JournalRecord", 202),
        ("keystate.InvocationRequest", 301),
        ("keystate.InvocationResultV1", 302),
        ("keystate.InvocationResult", 304),
        ("keystate.DeadLetter", 303),
        # 401 keeps the layout it was written with (read and upgraded); the current one is 402.
        ("keystate.DeploymentRecordV1", 401),
        ("keystate.DeploymentRecord", 402),
        # 501 keeps StartMessage's first layout (sent to SDKs without warm connections); 510 adds attempt_headers.
        ("keystate.StartMessageV1", 501),
        ("keystate.StartMessage", 510),
        ("keystate.MessageBatch", 508),
    ],
)
def test_schema_ids_are_stable(name, schema_id):
    # These ids are in records already on Kafka: changing one breaks every reader.
    assert codec().schema_id(name) == schema_id


def test_names_are_the_registry_in_id_order():
    assert list(codec().names) == sorted(SCHEMA_IDS, key=SCHEMA_IDS.get)


@pytest.mark.parametrize("name", NAMES)
def test_schema_for_id_is_self_contained(name):
    schema = codec().schema_for_id(SCHEMA_IDS[name])
    # An old version is served under the name it was written with (the current one's), so readers resolve it.
    assert schema["name"] == UPGRADES.get(name, name).removeprefix("keystate.")
    assert schema["doc"] == TYPES[name]["doc"]
    parsed = fastavro.parse_schema(schema)  # no named_schemas: must stand alone
    record = sample(name, 1)
    data = codec().encode(name, record)
    body = fastavro.schemaless_reader(
        io.BytesIO(data[5:]), parsed, None, return_record_name=True, return_record_name_override=True
    )
    assert body == record


def test_schema_for_id_returns_a_copy():
    codec().schema_for_id(101)["doc"] = "changed"
    assert codec().schema_for_id(101)["doc"] != "changed"


def test_schema_for_unknown_id():
    with pytest.raises(UnknownSchemaError, match="12345"):
        codec().schema_for_id(12345)


def test_unknown_names():
    with pytest.raises(UnknownSchemaError, match="did you mean 'keystate.InvokeCommand'"):
        codec().schema_id("InvokeCommand")
    with pytest.raises(UnknownSchemaError, match="inner type"):
        codec().encode("keystate.Failure", {"code": 500, "message": "x"})
    with pytest.raises(UnknownSchemaError):
        codec().decode_as("keystate.Nope", codec().encode("keystate.AckMessage", {"index": 1}))


def test_codec_is_cached():
    assert codec() is codec()


# ---- bad input to decode

GOOD = codec().encode("keystate.AckMessage", {"index": 1})


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "too short"),
        (b"\x00\x00\x00", "too short"),
        (b"\x01" + GOOD[1:], "magic byte"),
        (b"{\"index\": 1}", "magic byte"),
        (GOOD + b"\x00", "trailing"),
        (b"\x00\x00\x00\x00\x65\x80", "InvokeCommand"),
    ],
)
def test_bad_bytes_raise_decode_error(data, message):
    with pytest.raises(DecodeError, match=message):
        codec().decode(data)


def test_unknown_id():
    with pytest.raises(UnknownSchemaError, match="999999"):
        codec().decode(b"\x00" + (999999).to_bytes(4, "big") + GOOD[5:])


def test_not_bytes():
    with pytest.raises(DecodeError, match="expected bytes"):
        codec().decode("not bytes")  # type: ignore[arg-type]


def test_bytearray_and_memoryview_decode():
    assert codec().decode(bytearray(GOOD)) == codec().decode(memoryview(GOOD))


def test_decode_as_other_type():
    with pytest.raises(DecodeError, match="expected a keystate.EndMessage record, got a keystate.AckMessage"):
        codec().decode_as("keystate.EndMessage", GOOD)


@pytest.mark.parametrize("name", NAMES)
def test_every_truncation_is_a_decode_error(name):
    for variant in (0, 1):
        data = codec().encode(name, sample(name, variant))
        for length in range(len(data)):
            with pytest.raises(DecodeError):
                codec().decode(data[:length])


@pytest.mark.parametrize("name", NAMES)
def test_trailing_bytes_are_a_decode_error(name):
    with pytest.raises(DecodeError, match="trailing"):
        codec().decode(codec().encode(name, sample(name, 1)) + b"\x02")


def check_garbage(data: bytes) -> None:
    try:
        name, record = codec().decode(data)
    except DecodeError:
        return
    assert name in SCHEMA_IDS
    assert isinstance(record, dict)


@settings(max_examples=300)
@given(st.binary(max_size=64))
def test_random_bytes_only_raise_decode_error(data):
    check_garbage(data)


@settings(max_examples=1000)
@given(st.sampled_from(sorted(SCHEMA_IDS.values())), st.binary(max_size=64))
def test_random_bodies_only_raise_decode_error(schema_id, body):
    check_garbage(b"\x00" + schema_id.to_bytes(4, "big") + body)


@settings(max_examples=300)
@given(st.sampled_from(NAMES), st.data())
def test_corrupted_records_only_raise_decode_error(name, data):
    encoded = bytearray(codec().encode(name, sample(name, 2)))
    position = data.draw(st.integers(5, len(encoded) - 1)) if len(encoded) > 5 else None
    if position is not None:
        encoded[position] = data.draw(st.integers(0, 255))
    check_garbage(bytes(encoded))


# ---- bad input to encode


def required_fields(name):
    return [f["name"] for f in TYPES[name]["fields"] if "default" not in f]


@pytest.mark.parametrize(
    ("name", "field"), [(n, f) for n in NAMES for f in required_fields(n)]
)
def test_missing_required_field_is_an_encode_error(name, field):
    record = sample(name, 1)
    del record[field]
    with pytest.raises(EncodeError, match=f"{name}.*{field}"):
        codec().encode(name, record)


def test_wrong_type_names_the_field():
    record = sample("keystate.InvokeCommand", 1)
    record["target"] = {**record["target"], "service": 7}
    with pytest.raises(EncodeError, match=r"keystate\.Target\.service"):
        codec().encode("keystate.InvokeCommand", record)


def test_unknown_union_branch_is_an_encode_error():
    with pytest.raises(EncodeError, match="keystate.JournalRecord"):
        codec().encode("keystate.JournalRecord", {"entry": ("keystate.NoSuchEntry", {})})


def test_bad_enum_symbol_is_an_encode_error():
    record = sample("keystate.TimerValue", 0)
    record["timer_kind"] = "NAP"
    with pytest.raises(EncodeError, match="timer_kind|NAP"):
        codec().encode("keystate.TimerValue", record)


def test_not_a_dict_is_an_encode_error():
    with pytest.raises(EncodeError, match="expected a dict"):
        codec().encode("keystate.AckMessage", [1])  # type: ignore[arg-type]


def test_errors_share_one_root():
    assert issubclass(EncodeError, ContractError)
    assert issubclass(UnknownSchemaError, DecodeError)
    assert issubclass(DecodeError, ContractError)
    assert not issubclass(ContractError, (ValueError, TypeError))


def test_a_second_codec_agrees():
    other = Codec()
    record = sample("keystate.InvocationStatus", 3)
    assert other.encode("keystate.InvocationStatus", record) == codec().encode("keystate.InvocationStatus", record)
