"""Properties over generated command sequences: determinism, restore, redelivery, one writer per key."""

from __future__ import annotations

import copy
import os
import random
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keystate.processors.state_machine import (
    Action,
    Config,
    Publish,
    RegisterTimer,
    RetryPolicy,
    SendToPartition,
    Tables,
    apply,
)
from keystate.processors.state_machine.model import is_exclusive
from keystate.schemas.ids import InvocationId, PartitionKey
from keystate.schemas.state import state_version

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
LOCK_HOLDERS = RUNNING | {"PAUSED"}  # a paused exclusive invocation keeps its key until resumed or ended
ENTRY_KINDS = [
    "run", "set", "set", "set", "clear", "clear_all", "get", "sleep", "call", "call_idem", "send", "awakeable",
    "cancel_other", "output",
]  # fmt: skip
VARIANTS = ["valid"] * 8 + ["stale", "dup", "gap"]
IDEMPOTENCY_KEYS = ["k0", "k1"]
CONFIGS = [
    Config(retry_policy=RetryPolicy(initial_interval_ms=100, max_attempts=3), completion_retention_ms=retention)
    for retention in (0, 2_000)
] + [
    Config(
        retry_policy=RetryPolicy(initial_interval_ms=100, max_attempts=2, on_max_attempts="PAUSE"),
        completion_retention_ms=2_000,
    )
] + [
    # Journals kept after completion: as long as the status, shorter (a journal-only purge), longer.
    Config(retry_policy=RetryPolicy(initial_interval_ms=100, max_attempts=2, on_max_attempts=on_max),
           completion_retention_ms=status, journal_retention_ms=journal)
    for status, journal, on_max in ((2_000, 2_000, "FAIL"), (2_000, 500, "PAUSE"), (0, 1_000, "PAUSE"))
]

PROPERTY_SETTINGS = settings(max_examples=int(os.environ.get("KEYSTATE_PROPERTY_EXAMPLES", "200")), deadline=None, suppress_health_check=[HealthCheck.too_slow])

slot = st.integers(0, 30)
appends = st.tuples(
    st.just("append"),
    slot,
    st.sampled_from(ENTRY_KINDS),
    st.sampled_from(VARIANTS),
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
        st.tuples(st.just("invoke_idem"), slot, st.sampled_from(IDEMPOTENCY_KEYS), st.booleans()),
        st.tuples(st.sampled_from(["cancel", "cancel", "kill"]), slot),
        st.tuples(st.sampled_from(["resume", "purge", "query"]), slot, st.integers(0, 2)),
        st.tuples(st.just("edit"), slot, st.integers(0, 2)),
        st.tuples(st.just("restart"), slot, st.integers(0, 4)),
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
        self.targets = {iid: t for iid, t in zip(SLOT_IDS, TARGETS, strict=True)}
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

    def _fresh_idempotent_id(self, target: dict[str, Any], key: str) -> str:
        self.next_id += 1
        return b.idempotent_id(target, key, self.next_id)

    def _learn(self, iid: str, target: dict[str, Any]) -> None:
        """Remember an id created on the way (a callee, an idempotent request) so later ops can act on it."""
        if iid not in self.targets:
            self.ids.append(iid)
            self.targets[iid] = target

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
        if kind == "call_idem":
            key = IDEMPOTENCY_KEYS[n % 2]
            return b.call(callee_target, self._fresh_idempotent_id(callee_target, key), idempotency_key=key)
        if kind == "cancel_other":
            return b.cancel_invocation(self.ids[n % len(self.ids)])
        if kind == "send":
            return b.send(callee_target, self._fresh_id(callee_target), invoke_at_ms=None if n % 2 else self.now + 400)
        if kind == "awakeable":
            return b.awakeable(f"awk-{n}")
        return b.output(b"done") if n % 3 else b.output_failure(500, "terminal")

    # Which statuses an op mostly picks its invocation from (so it has an effect); the rest: any id.
    _WANTS = {
        "cancel": {"SCHEDULED", "INBOXED", "INVOKED", "SUSPENDED", "BACKING_OFF", "PAUSED"},
        "kill": {"SCHEDULED", "INBOXED", "INVOKED", "SUSPENDED", "BACKING_OFF", "PAUSED"},
        "resume": {"PAUSED"},
        "purge": {"COMPLETED"},
        "query": {"INVOKED", "COMPLETED"},
        "restart": {"COMPLETED", "PAUSED"},
    }

    def _pick(self, kind: str, n: int) -> str:
        """Mostly an invocation that can act (so journals grow); sometimes any id, finished or unknown."""
        if kind != "invoke" and n < 24:
            wanted = self._WANTS.get(kind, {"INVOKED"})
            live = [i for i in self.ids if (s := self.tables.status.get((i,))) and s["status"] in wanted]
            if live:
                return live[n % len(live)]
        return self.ids[n % len(self.ids)]

    def step(self, op: tuple[Any, ...]) -> None:
        self.now += 7
        kind = op[0]
        iid = self._pick(kind, op[1]) if kind not in ("deliver", "fire", "invoke_idem", "edit") else ""
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
            if send.name == "keystate.InvokeCommand":
                self._learn(send.invocation_id, send.record["target"])
            self.apply(b.as_command(send))
        elif kind == "fire" and self.timers:
            timer = self.timers.pop(op[1] % len(self.timers))
            self.now = max(self.now, timer.fire_at_ms)
            self.apply(b.fired(timer))
        elif kind == "invoke_idem":
            _, n, key, with_request = op
            target = TARGETS[n % len(TARGETS)]
            fresh = self._fresh_idempotent_id(target, key)
            self._learn(fresh, target)
            self.apply(b.invoke(target, fresh, idempotency_key=key, request_id=f"r{n}" if with_request else None))
        elif kind == "cancel":
            self.apply(b.cancel(iid))
        elif kind == "kill":
            self.apply(b.kill(iid))
        elif kind == "resume":
            self.apply(b.resume(iid))
        elif kind == "purge":
            self.apply(b.purge(iid))
        elif kind == "restart":
            self.next_id += 1
            pk = InvocationId.parse(iid).partition_key
            fresh = str(InvocationId.new(PartitionKey(pk), random=self.next_id.to_bytes(15, "big")))
            self._learn(fresh, self.targets[iid])
            record = {"invocation_id": iid, "new_invocation_id": fresh, "from_index": op[2], "deployment_id": None,
                      "request_id": f"r{self.next_id}", "reply_topic": "admin.replies"}
            self.apply(("keystate.RestartAsNewCommand", record))
        elif kind == "edit":
            self.apply(self._edit(op[1], op[2]))
        elif kind == "query":
            mode, target = op[2], TARGETS[op[1] % len(TARGETS)]
            if mode == 0:
                self.apply(b.query(f"q{op[1]}", invocation_id=iid))
            elif mode == 1:
                self.apply(b.query(f"q{op[1]}", idempotency=(target, IDEMPOTENCY_KEYS[op[1] % 2])))
            else:
                self.apply(b.query(f"q{op[1]}", workflow=TARGETS[5]))


    def _edit(self, n: int, mode: int) -> Command:
        """A SetStateCommand of a keyed target: unconditional, at the current version, or at a stale one."""
        keyed = [t for t in TARGETS if t["key"] is not None]
        target = keyed[n % len(keyed)]
        current = {k[2]: v["value"] for k, v in self.tables.state.scan((target["service"], target["key"]))}
        expected = [None, state_version(current), state_version({"stale": b""})][mode]
        return (
            "keystate.SetStateCommand",
            {
                "service": target["service"],
                "key": target["key"],
                "new_state": {f"k{n % 2}": bytes([n % 256])} if n % 5 else {},
                "expected_version": expected,
                "request_id": f"e{len(self.commands)}",
                "reply_topic": "admin.replies",
            },
        )


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


def is_answer(action: Action) -> bool:
    """A reply to a request or a completion for a caller: receivers keep the first, so repeating one is harmless."""
    if isinstance(action, Publish):
        return action.name == "keystate.QueryOutputReply"
    return isinstance(action, SendToPartition) and action.name == "keystate.CompletionCommand"


@PROPERTY_SETTINGS
@given(scenarios)
def test_a_command_redelivered_right_after_itself_changes_nothing(sc: Scenario):
    """No table write and no action, except that a request or a duplicate's caller may be answered again."""
    tables = Tables()
    for command, now in sc.commands:
        apply(tables, command, now, sc.cfg)
        before = tables.snapshot()
        tables.drain()

        again = apply(tables, command, now, sc.cfg)

        assert [a for a in again if not is_answer(a)] == [], f"redelivered {command[0]} emitted actions"
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
        if is_exclusive(status["target"]) and status["status"] in LOCK_HOLDERS:
            running[(status["target"]["service"], status["target"]["key"])].append(iid)
    for key, ids in running.items():
        assert len(ids) == 1, f"{key}: {len(ids)} exclusive invocations running or paused: {ids}"
        obj = tables.objects.get(key)
        assert obj is not None and obj["locked_by"] == ids[0], f"{key}: lock {obj} but {ids[0]} runs"
    for key, obj in tables.objects.items():
        holder = obj["locked_by"]
        assert holder is not None, f"{key}: an objects row without a lock holder: {obj}"
        assert holder in running.get(key, []), f"{key}: locked by {holder}, which is not running"
    for (service, key, seq), item in tables.inbox.items():
        if item.get("state_edit") is not None:
            continue  # a state edit waiting for its turn
        status = statuses.get((item["invocation_id"],))
        assert status is not None and status["status"] == "INBOXED", f"inbox {service}/{key}#{seq}: {status}"


def test_the_generator_reaches_the_interesting_states():
    """Guards the properties against a driver that silently stops producing the cases they are about."""
    rnd = random.Random(7)
    seen: set[str] = set()
    endings: set[str] = set()
    events: set[str] = set()
    for _ in range(150):
        driver = Driver(CONFIGS[rnd.randrange(len(CONFIGS))])
        for _ in range(40):
            driver.step(random_op(rnd))
            for _, status in driver.tables.status.items():
                seen.add(status["status"])
                endings.add(status["completion_status"])
                if status["attached_callers"]:
                    events.add("attached caller")
                if status["cancel_pending"]:
                    events.add("cancel pending")
            if any(item.get("state_edit") for _, item in driver.tables.inbox.items()):
                events.add("state edit waiting")
            name, record = driver.commands[-1][0] if driver.commands else ("", {})
            if name == "keystate.InvokeCommand" and driver.tables.status.get((record["invocation_id"],)) is None:
                events.add("deduplicated")
            if name == "keystate.RestartAsNewCommand" and driver.tables.status.get((record["new_invocation_id"],)):
                events.add("restarted as new")
    assert seen == {"SCHEDULED", "INBOXED", "INVOKED", "SUSPENDED", "BACKING_OFF", "COMPLETED", "PAUSED"}
    assert endings >= {"SUCCEEDED", "FAILED", "CANCELLED", "KILLED"}
    assert events == {"attached caller", "cancel pending", "deduplicated", "state edit waiting", "restarted as new"}


def random_op(rnd: random.Random) -> tuple[Any, ...]:
    kind = rnd.choice(
        ["invoke", *["append"] * 4, "suspend", "fail", "complete", "deliver", "fire", "invoke_idem", "cancel", "kill"]
        + ["resume", "purge", "query", "edit", "restart"]
    )
    n = rnd.randrange(30)
    if kind == "invoke":
        return (kind, n, rnd.choice([None, 300]))
    if kind == "invoke_idem":
        return (kind, n, rnd.choice(IDEMPOTENCY_KEYS), rnd.random() < 0.5)
    if kind in ("cancel", "kill"):
        return (kind, n)
    if kind in ("resume", "purge", "query", "edit", "restart"):
        return (kind, n, rnd.randrange(3))
    if kind == "append":
        return (kind, n, rnd.choice(ENTRY_KINDS), rnd.choice(VARIANTS))
    if kind == "suspend":
        return (kind, n, rnd.randrange(6))
    if kind == "fail":
        return (kind, n, rnd.random() < 0.8, None)
    if kind == "complete":
        return (kind, n, rnd.randrange(7), True)
    return (kind, n)
