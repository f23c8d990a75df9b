"""Restore stories: a processor taking over a partition rebuilds its tables from the changelog topics."""

from __future__ import annotations


from keystate.processors.state_machine import Config, Invoke, Tables, apply

from .builders import Story, invoke, object_target, output, set_state, sleep, suspend
from .test_properties import compacted, restored

ADD = object_target("Counter", "alice", "add")
GET = object_target("Counter", "alice", "get", shared=True)


def test_restoring_the_changelog_gives_the_live_tables():
    story = Story()
    first = story.invoke(ADD)
    story.invoke(ADD)  # inboxed
    story.step(first, set_state("a", b"1"))
    story.step(first, sleep(99_000))
    story.when(suspend(first, 1, 2))
    done = story.invoke(GET)
    story.step(done, output())

    changes = story.tables.drain()

    assert restored(changes).snapshot() == story.tables.snapshot()
    assert restored(compacted(changes)).snapshot() == story.tables.snapshot()


def test_restore_does_not_capture_changes_again():
    story = Story()
    story.invoke(ADD)
    tables = Tables()
    for name, key, value in story.tables.drain():
        tables.restore(name, key, value)

    assert tables.drain() == []


def test_compaction_keeps_the_last_record_per_key_in_offset_order():
    changes = [("state", ("S", "k", "a"), 1), ("state", ("S", "k", "b"), 2), ("state", ("S", "k", "a"), 3)]

    assert compacted(changes) == [("state", ("S", "k", "b"), 2), ("state", ("S", "k", "a"), 3)]


def test_eager_state_has_the_same_order_after_a_restore_from_a_compacted_changelog():
    story = Story()
    writer = story.invoke(ADD)
    story.step(writer, set_state("a", b"1"))
    story.step(writer, set_state("b", b"2"))
    story.step(writer, set_state("a", b"3"))  # compaction moves "a" after "b"
    taken_over = restored(compacted(story.tables.drain()))
    reader = invoke(GET)

    [live] = apply(story.tables, reader, 5_000, Config())
    [after_restore] = apply(taken_over, reader, 5_000, Config())

    assert isinstance(live, Invoke)
    assert after_restore == live
