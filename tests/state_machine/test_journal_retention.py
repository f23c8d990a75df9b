"""Journal retention: a completed invocation's journal stays readable, then goes with (or before) its status row."""

from __future__ import annotations

from keystate.processors.state_machine import Config, RegisterTimer

from .builders import (
    Story,
    input_entry,
    object_target,
    of_type,
    output,
    purge,
    run_entry,
    service_target,
    set_state,
)

GREETER = service_target("Greeter", "greet")

DAY = 24 * 3600 * 1000
KEEP = Config(completion_retention_ms=60_000, journal_retention_ms=60_000)


def finished(story: Story, target: dict | None = None) -> str:
    iid = story.invoke(target or GREETER, argument=b"bob")
    story.step(iid, run_entry("s", b"1"))
    story.step(iid, output(b"hello"))
    return iid


def test_a_completed_invocation_keeps_its_whole_journal_output_included():
    story = Story(KEEP)

    iid = finished(story)

    assert story.journal(iid) == [input_entry(b"bob"), run_entry("s", b"1"), output(b"hello")]
    assert story.status(iid)["status"] == "COMPLETED"


def test_the_purge_timer_takes_the_journal_with_the_status():
    story = Story(KEEP)
    iid = finished(story)

    story.fire(story.last_timer("PURGE"))

    assert story.status(iid) is None
    assert story.journal(iid) == []
    assert story.tables.snapshot()["timers"] == {}


def test_an_explicit_purge_takes_the_journal_too():
    story = Story(KEEP)
    iid = finished(story)

    story.when(purge(iid))

    assert story.status(iid) is None
    assert story.journal(iid) == []


def test_journal_retention_0_deletes_the_journal_at_completion_as_before():
    story = Story(Config(completion_retention_ms=60_000, journal_retention_ms=0))

    iid = finished(story)

    assert story.journal(iid) == []
    assert story.status(iid)["status"] == "COMPLETED"


def test_the_status_row_lives_at_least_as_long_as_the_journal():
    story = Story(Config(completion_retention_ms=0, journal_retention_ms=DAY))
    iid = finished(story)

    [purge_timer] = [t for t in of_type(story.actions, RegisterTimer) if t.record["timer_kind"] == "PURGE"]

    assert purge_timer.fire_at_ms == story.now + DAY
    assert story.status(iid)["retention_ms"] == DAY
    assert len(story.journal(iid)) == 3


def test_a_shorter_journal_retention_deletes_the_journal_first_and_the_status_later():
    story = Story(Config(completion_retention_ms=60_000, journal_retention_ms=10_000))
    iid = finished(story)
    done_at = story.now
    journal_timer, status_timer = sorted(
        (t for t in of_type(story.actions, RegisterTimer) if t.record["timer_kind"] == "PURGE"),
        key=lambda t: t.fire_at_ms,
    )
    assert (journal_timer.fire_at_ms, status_timer.fire_at_ms) == (done_at + 10_000, done_at + 60_000)

    story.fire(journal_timer)

    assert story.journal(iid) == []
    assert story.status(iid)["status"] == "COMPLETED"

    story.fire(status_timer)

    assert story.status(iid) is None


def test_an_idempotency_retention_caps_the_journal_retention():
    story = Story(Config(completion_retention_ms=0, journal_retention_ms=DAY))
    iid = story.invoke(GREETER, idempotency_key="k")

    story.step(iid, output(b"x"))

    assert story.status(iid) is None
    assert story.journal(iid) == []
    assert story.tables.idempotency.get(("Greeter", "", "greet", "k")) is None


def test_the_service_retention_decides_for_the_journal_too():
    per_service = {"Counter": 5_000}
    story = Story(Config(completion_retention_ms=DAY, journal_retention_ms=DAY, service_retention_ms=per_service.get))
    iid = story.invoke(object_target())
    story.step(iid, set_state("n", b"1"))
    story.step(iid, output(b"1"))

    assert len(story.journal(iid)) == 3
    assert story.last_timer("PURGE").fire_at_ms == story.now + 5_000

    story.fire(story.last_timer("PURGE"))

    assert story.journal(iid) == []
    assert story.state("Counter", "alice") == {"n": b"1"}  # an object's state is not the invocation's


def test_a_service_journal_retention_apart_from_its_completion_retention():
    # PATCH /services journal_retention=0 with an hour of idempotency retention: the journal goes at
    # completion, the status row stays the hour.
    story = Story(Config(
        completion_retention_ms=60_000,
        journal_retention_ms=60_000,
        service_retention_ms=lambda service: 3_600_000,
        service_journal_retention_ms=lambda service: 0,
    ))

    iid = finished(story)

    assert story.journal(iid) == []
    assert story.status(iid)["status"] == "COMPLETED"
    assert story.status(iid)["retention_ms"] == 3_600_000
