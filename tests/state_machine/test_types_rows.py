"""Every row and record the state machine writes is valid for its schema and reads back as its typed record."""

from __future__ import annotations

from typing import Any

from hypothesis import given

from keystate.processors.state_machine import Publish, RegisterTimer, SendToPartition, Tables
from keystate.schemas import records
from keystate.schemas._codec import codec
from keystate.schemas.enums import InvocationState, ServiceType, TimerKind

from . import builders as b
from .test_properties import PROPERTY_SETTINGS, Scenario, replay, scenarios

ROW_RECORDS: dict[str, type[Any]] = {
    "status": records.InvocationStatus,
    "journal": records.JournalRecord,
    "state": records.StateValue,
    "inbox": records.InboxItem,
    "objects": records.ObjectStatus,
    "timers": records.TimerValue,
    "promises": records.PromiseValue,
    "idempotency": records.IdempotencyValue,
}


def test_every_table_has_its_typed_record() -> None:
    assert set(ROW_RECORDS) == set(Tables.names())


def _through_avro(cls: type[Any], row: dict[str, Any]) -> dict[str, Any]:
    name = "keystate." + cls.__name__
    return codec().decode_as(name, codec().encode(name, row))


@PROPERTY_SETTINGS
@given(scenarios)
def test_written_rows_encode_and_read_back_as_the_same_typed_record(sc: Scenario) -> None:
    tables, actions = replay(sc.commands, sc.cfg)
    for table, _, row in tables.drain():
        if row is None:
            continue  # a tombstone
        cls = ROW_RECORDS[table]
        decoded = _through_avro(cls, row)
        assert decoded == row
        assert cls.from_avro(decoded) == cls.from_avro(row)
        assert cls.from_avro(row).to_avro() == row
    for action in (a for batch in actions for a in batch):
        if isinstance(action, (Publish, SendToPartition)):
            decoded = codec().decode_as(action.name, codec().encode(action.name, action.record))
            # Commands may leave optional fields out; the codec fills them with their defaults.
            assert {k: decoded[k] for k in action.record} == action.record
        elif isinstance(action, RegisterTimer):
            assert _through_avro(records.TimerValue, action.record) == action.record


def test_a_story_writes_enum_members_that_compare_equal_to_decoded_symbols() -> None:
    story = b.Story()
    iid = story.invoke(b.object_target("Counter", "a", "add"))
    story.when(b.attempt_failed(iid, story.attempt(iid)))
    row = story.status(iid)
    assert row is not None
    status = records.InvocationStatus.from_avro(row)
    assert status.status is InvocationState.BACKING_OFF
    assert status.target.service_type is ServiceType.VIRTUAL_OBJECT
    assert status.target.exclusive and status.target.object_key() == ("Counter", "a")
    assert status.last_failure == records.Failure(code=500, message="boom")
    [timer] = story.timers(iid).values()
    assert records.TimerValue.from_avro(timer).timer_kind is TimerKind.RETRY
    decoded = _through_avro(records.InvocationStatus, row)
    assert type(decoded["status"]) is str and decoded["status"] == row["status"] == "BACKING_OFF"
