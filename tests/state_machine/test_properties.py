"""Properties over generated command sequences: determinism, restore, redelivery, one writer per key."""

from __future__ import annotations

import copy
import dataclasses
import random
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keystate.processors.state_machine import (
    Action,
    Config,
    Invoke,
    RegisterTimer,
    RetryPolicy,
    SendToPartition,
    Tables,
    apply,
)
from keystate.processors.state_machine.model import is_exclusive

from . import builders as b

Command = tuple[str, dict[str, Any]]
Timed = tuple[Command, int]

TARGETS = [
    b.object_target("Counter", "a", "add"),
    b.object_target("Counter", "a", "add"),
    b.object_target("Counter", "a", "get", shared=True),
    b.object_target("Counter", "b", "add"),
    b.object_target("Counter", "b", "add"),
    b.workflow_target("Signup", "w", "run"),
    b.service_target("Greeter", "greet"),
]
SLOT_IDS = [b.new_id(t, 1_000 + i) for i, t in enumerate(TARGETS)]
RUNNING = {"INVOKED", "SUSPENDED", "BACKING_OFF"}
ENTRY_KINDS = ["run", "set", "set", "set", "clear", "clear_all", "get", "sleep", "call", "send", "awakeable", "output"]
CONFIGS = [
    Config(retry_policy=RetryPolicy(initial_interval_ms=100, max_attempts=3), completion_retention_ms=retention)
    for retention in (0, 2_000)
]

PROPERTY_SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

slot = st.integers(0, 30)
appends = st.tuples(
    st.just("append"),
    slot,
    st.sampled_from(ENTRY_KINDS),
    st.sampled_from(["valid"] * 8 + ["stale", "dup", "gap"]),
)
ops = st.lists(
    st.one_of(
        st.tuples(st.just("invoke"), slot, st.sampled_from([None, None, 300, 5_000])),
        appends,
        appends,
        appends,
        appends,
        st.tuples(st.just("suspend"), slot, st.integers(0, 5)),
        st.tuples(st.just("fail"), slot, st.booleans(), st.sampled_from([None, None, 0, 700])),
        st.tuples(st.just("complete"), slot, st.integers(0, 6), st.booleans()),
        st.tuples(st.just("deliver"), st.integers(0, 30)),
        st.tuples(st.just("fire"), st.integers(0, 30)),
    ),
    max_size=40,
)


@dataclass
class Scenario:
    cfg: Config
    commands: list[Timed]


class Driver:
    """Turns abstract ops into concrete commands that are mostly valid for the tables at that moment."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.tables = Tables()
        self.now = 1_000
        self.ids = list(SLOT_IDS)
        self.targets = {iid: t for iid, t in zip(SLOT_IDS, TARGETS)}
        self.sends: list[SendToPartition] = []
        self.timers: list[RegisterTimer] = []
        self.commands: list[Timed] = []
        self.next_id = 10_000

    def apply(self, command: Command) -> list[Action]:
        actions = apply(self.tables, command, self.now, self.cfg)
        self.commands.append((command, self.now))
        self.sends += [a for a in actions if isinstance(a, SendToPartition)]
        self.timers += [a for a in actions if isinstance(a, RegisterTimer)]
        return actions

    def _fresh_id(self, target: dict[str, Any]) -> str:
        self.next_id += 1
        return b.new_id(target, self.next_id)

    def _entry(self, kind: str, n: int) -> dict[str, Any]:
        callee_target = TARGETS[n % len(TARGETS)]
        if kind == "run":
            return b.run_entry(f"s{n}", bytes([n % 256]))
        if kind == "set":
            return b.set_state(f"k{n % 2}", bytes([n % 256]))
        if kind == "clear":
            return b.clear_state(f"k{n % 3}")
        if kind == "clear_all":
            return b.clear_all()
        if kind == "get":
            return b.get_state(f"k{n % 3}", None)
        if kind == "sleep":
            return b.sleep(self.now + 50 * (n % 4))
        if kind == "call":
            return b.call(callee_target, self._fresh_id(callee_target))
        if kind == "send":
            return b.send(callee_target, self._fresh_id(callee_target), invoke_at_ms=None if n % 2 else self.now + 400)
        if kind == "awakeable":
            return b.awakeable(f"awk-{n}")
        return b.output(b"done") if n % 3 else b.output_failure(500, "terminal")

    def _pick(self, kind: str, n: int) -> str:
        """Mostly an invocation that can act (so journals grow); sometimes any id, finished or unknown."""
        if kind != "invoke" and n < 24:
            live = [i for i in self.ids if (s := self.tables.status.get((i,))) and s["status"] == "INVOKED"]
            if live:
                return live[n % len(live)]
        return self.ids[n % len(self.ids)]

    def step(self, op: tuple[Any, ...]) -> None:
        self.now += 7
        kind = op[0]
        iid = self._pick(kind, op[1]) if kind not in ("deliver", "fire") else ""
        status = self.tables.status.get((iid,)) if iid else None
        attempt = status["attempt"] if status else 1
        length = status["journal_length"] if status else 1
        if kind == "invoke":
            delay = op[2]
            self.apply(b.invoke(self.targets[iid], iid, execute_at_ms=None if delay is None else self.now + delay))
        elif kind == "append":
            _, n, entry_kind, variant = op
            entry = self._entry(entry_kind, n)
            if variant == "stale":
                attempt -= 1
            elif variant == "dup":
                length = max(1, length - 1)
            elif variant == "gap":
                length += 1
            self.apply(b.append(iid, attempt, length, entry))
        elif kind == "suspend":
            completable = [
                i
                for (_, i), r in self.tables.journal.scan((iid,))
                if r["entry"][0]
                in ("keystate.CallEntry", "keystate.SleepEntry", "keystate.AwakeableEntry", "keystate.GetPromiseEntry")
            ]
            pick = op[2]
            waiting = [completable[pick % len(completable)]] if completable and pick < 4 else []
            self.apply(b.suspend(iid, attempt, *waiting))
        elif kind == "fail":
            self.apply(b.attempt_failed(iid, attempt, retryable=op[2], retry_after_ms=op[3]))
        elif kind == "complete":
            index = op[2] % max(1, length)
            result = b.value(b"r") if op[3] else b.failure(500, "f")
            self.apply(b.completion(iid, index, result))
        elif kind == "deliver" and self.sends:
            send = self.sends.pop(op[1] % len(self.sends))
            if send.name == "keystate.InvokeCommand" and send.invocation_id not in self.targets:
                self.ids.append(send.invocation_id)
                self.targets[send.invocation_id] = send.record["target"]
            self.apply(b.as_command(send))
        elif kind == "fire" and self.timers:
            timer = self.timers.pop(op[1] % len(self.timers))
            self.now = max(self.now, timer.fire_at_ms)
            self.apply(b.fired(timer))


def scenario(cfg: Config, abstract: list[tuple[Any, ...]]) -> Scenario:
    driver = Driver(cfg)
    for op in abstract:
        driver.step(op)
    return Scenario(cfg, driver.commands)


scenarios = st.builds(scenario, st.sampled_from(CONFIGS), ops)


def replay(commands: list[Timed], cfg: Config, tables: Tables | None = None) -> tuple[Tables, list[list[Action]]]:
    tables = tables or Tables()
    return tables, [apply(tables, command, now, cfg) for command, now in commands]


def restored(changes: list[tuple[str, Any, Any]]) -> Tables:
    """Fresh tables restored from a changelog, values copied as if they had been through Avro."""
    tables = Tables()
    for name, key, value in copy.deepcopy(changes):
        tables.restore(name, key, value)
    return tables


def compacted(changes: list[tuple[str, Any, Any]]) -> list[tuple[str, Any, Any]]:
    """What a compacted changelog topic holds: the last record per key, in the order of those records."""
    last: dict[tuple[str, Any], int] = {}
    for offset, (name, key, _) in enumerate(changes):
        last[(name, key)] = offset
    return [changes[offset] for offset in sorted(last.values())]


# ---------------------------------------------------------------- properties


@PROPERTY_SETTINGS
@given(scenarios)
def test_the_same_commands_give_the_same_tables_and_actions(sc: Scenario):
    first, first_actions = replay(sc.commands, sc.cfg)
    second, second_actions = replay(sc.commands, sc.cfg)

    assert first.snapshot() == second.snapshot()
    assert first_actions == second_actions
    assert first.drain() == second.drain()


@PROPERTY_SETTINGS
@given(scenarios)
def test_tables_restored_from_the_changelog_equal_the_live_tables(sc: Scenario):
    live, _ = replay(sc.commands, sc.cfg)
    changes = live.drain()

    assert restored(changes).snapshot() == live.snapshot()
    assert restored(compacted(changes)).snapshot() == live.snapshot()


@PROPERTY_SETTINGS
@given(scenarios, st.integers(0, 40))
def test_a_processor_restored_mid_way_continues_like_the_live_one(sc: Scenario, split: int):
    """A takeover: restore from the (compacted) changelog, then apply the rest; same tables and actions."""
    split = min(split, len(sc.commands))
    live, _ = replay(sc.commands[:split], sc.cfg)
    taken_over = restored(compacted(live.drain()))

    _, live_actions = replay(sc.commands[split:], sc.cfg, live)
    _, restored_actions = replay(sc.commands[split:], sc.cfg, taken_over)

    assert restored_actions == live_actions
    assert taken_over.snapshot() == live.snapshot()


@PROPERTY_SETTINGS
@given(scenarios)
def test_a_command_redelivered_right_after_itself_changes_nothing(sc: Scenario):
    tables = Tables()
    for command, now in sc.commands:
        apply(tables, command, now, sc.cfg)
        before = tables.snapshot()
        tables.drain()

        again = apply(tables, command, now, sc.cfg)

        assert again == [], f"redelivered {command[0]} emitted actions"
        assert tables.drain() == [], f"redelivered {command[0]} wrote the changelog"
        assert tables.snapshot() == before


@PROPERTY_SETTINGS
@given(scenarios)
def test_at_most_one_exclusive_invocation_runs_per_key_and_it_holds_the_lock(sc: Scenario):
    tables = Tables()
    for command, now in sc.commands:
        apply(tables, command, now, sc.cfg)
        check_one_writer_per_key(tables)


def check_one_writer_per_key(tables: Tables) -> None:
    running: dict[tuple[str, str], list[str]] = defaultdict(list)
    statuses = dict(tables.status.items())
    for (iid,), status in statuses.items():
        if is_exclusive(status["target"]) and status["status"] in RUNNING:
            running[(status["target"]["service"], status["target"]["key"])].append(iid)
    for key, ids in running.items():
        assert len(ids) == 1, f"{key}: {len(ids)} exclusive invocations running: {ids}"
        obj = tables.objects.get(key)
        assert obj is not None and obj["locked_by"] == ids[0], f"{key}: lock {obj} but {ids[0]} runs"
    for key, obj in tables.objects.items():
        holder = obj["locked_by"]
        assert holder is not None, f"{key}: an objects row without a lock holder: {obj}"
        assert holder in running.get(key, []), f"{key}: locked by {holder}, which is not running"
    for (service, key, seq), item in tables.inbox.items():
        status = statuses.get((item["invocation_id"],))
        assert status is not None and status["status"] == "INBOXED", f"inbox {service}/{key}#{seq}: {status}"


def test_the_generator_reaches_the_interesting_states():
    """Guards the properties against a driver that silently stops producing the cases they are about."""
    rnd = random.Random(7)
    seen: set[str] = set()
    for _ in range(100):
        driver = Driver(CONFIGS[rnd.randrange(2)])
        for _ in range(40):
            driver.step(random_op(rnd))
            seen |= {status["status"] for _, status in driver.tables.status.items()}
    assert seen == {"SCHEDULED", "INBOXED", "INVOKED", "SUSPENDED", "BACKING_OFF", "COMPLETED"}


def random_op(rnd: random.Random) -> tuple[Any, ...]:
    kind = rnd.choice(["invoke", *["append"] * 4, "suspend", "fail", "complete", "deliver", "fire"])
    n = rnd.randrange(30)
    if kind == "invoke":
        return (kind, n, rnd.choice([None, 300]))
    if kind == "append":
        return (kind, n, rnd.choice(ENTRY_KINDS), rnd.choice(["valid"] * 8 + ["stale", "dup", "gap"]))
    if kind == "suspend":
        return (kind, n, rnd.randrange(6))
    if kind == "fail":
        return (kind, n, rnd.random() < 0.8, None)
    if kind == "complete":
        return (kind, n, rnd.randrange(7), True)
    return (kind, n)
