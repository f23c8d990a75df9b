"""Operators' commands end to end: journals kept after completion, state edits in order, restart-as-new, pause."""

from __future__ import annotations

import base64
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from keystate.cli import main as cli_main
from keystate.schemas.state import state_version
from keystate.schemas.topics import Topics

from harness import ROOT, HttpResponse, Stack, free_port, http

pytestmark = pytest.mark.integration

SERVICES = str(ROOT / "tests" / "e2e" / "_state_ops_services.py")


@pytest.fixture
def ops(stack: Stack, tmp_path: Path) -> Stack:
    """processor (default journal retention) + ingress + the Register object and the TwoSteps service."""
    stack.processor("a")
    stack.ingress()
    port = free_port()
    stack.deployment(SERVICES, port, env={"KEYSTATE_TEST_RELEASE": str(tmp_path / "release")})
    stack.register(f"http://127.0.0.1:{port}")
    # Processors restore their partitions first: an edit is only answered at once by a running one.
    assert http("POST", f"{stack.url}/Register/warm-up/read", None).status == 200
    return stack


def changelog_rows(stack: Stack) -> dict[tuple[Any, ...], bytes | None]:
    """The last value of every changelog key (None: a tombstone), read to the end of every partition."""
    topic = Topics(stack.prefix).changelog_topic
    consumer = Consumer({"bootstrap.servers": stack.bootstrap, "group.id": f"t-{time.time()}", "enable.auto.commit": False,
                         "isolation.level": "read_committed"})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions}
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        rows: dict[tuple[Any, ...], bytes | None] = {}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is not None and not msg.error():
                rows[tuple(json.loads(msg.key()))] = msg.value()
                continue
            # Transaction markers take offsets too: done when every position reached the end.
            positions = consumer.position([TopicPartition(topic, p) for p in partitions])
            if all(tp.offset >= ends[tp.partition] for tp in positions if tp.offset >= 0):
                if all(tp.offset >= 0 or ends[tp.partition] == 0 for tp in positions):
                    break
        return rows
    finally:
        consumer.close()


def journal_indexes(stack: Stack, iid: str) -> list[int]:
    """Indexes of the invocation's journal rows still on the changelog (not tombstoned)."""
    rows = changelog_rows(stack)
    return sorted(k[2] for k, v in rows.items() if k[0] == "journal" and k[1] == iid and v is not None)


def eventually(check: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


def attach(stack: Stack, iid: str) -> HttpResponse:
    return http("GET", f"{stack.url}/restate/invocation/{iid}/attach", timeout=60)


def send(stack: Stack, path: str, body: Any) -> str:
    resp = http("POST", f"{stack.url}/{path}/send", body)
    assert resp.status == 202, resp.body
    return str(resp.json()["invocationId"])


def edit(stack: Stack, state: dict[str, Any], version: str | None = None, key: str = "k") -> HttpResponse:
    new_state = {k: base64.b64encode(json.dumps(v).encode()).decode() for k, v in state.items()}
    body = {"object_key": key, "version": version, "new_state": new_state}
    return http("POST", f"{stack.admin_url}/services/Register/state", body)


def test_a_completed_journal_stays_on_the_changelog_until_purged_and_can_be_restarted_as_new(ops: Stack) -> None:
    resp = http("POST", f"{ops.url}/TwoSteps/draw", None)
    assert resp.status == 200, resp.body
    first, second = resp.json()
    iid = resp.headers["x-restate-id"]

    # input, two runs and the output: all kept after completion
    assert eventually(lambda: journal_indexes(ops, iid) == [0, 1, 2, 3]), journal_indexes(ops, iid)

    restarted = http("PATCH", f"{ops.admin_url}/invocations/{iid}/restart-as-new?from=2")
    assert restarted.status == 200, restarted.body
    new_id = restarted.json()["new_invocation_id"]
    again = attach(ops, new_id)
    assert again.status == 200, again.body
    copied, drawn = again.json()
    assert copied == first and drawn != second  # entry 1 copied, entry 2 run anew

    too_far = http("PATCH", f"{ops.admin_url}/invocations/{iid}/restart-as-new?from=9")
    assert too_far.status == 400 and b"entry 3 is the output" in too_far.body, too_far.body

    assert http("PATCH", f"{ops.admin_url}/invocations/{iid}/purge").status == 202
    assert eventually(lambda: journal_indexes(ops, iid) == []), journal_indexes(ops, iid)
    rows = changelog_rows(ops)
    assert rows.get(("status", iid), b"") is None  # the status row went with it


def test_a_state_edit_of_a_busy_object_is_applied_in_order_with_its_exclusive_handlers(
    ops: Stack, tmp_path: Path
) -> None:
    holder = send(ops, "Register/k/append", "hold")
    before = send(ops, "Register/k/append", "before")
    answers: list[HttpResponse] = []
    posting = threading.Thread(target=lambda: answers.append(edit(ops, {"log": ["edited"]})))
    posting.start()
    posting.join(30)
    [queued] = answers
    assert queued.status == 202, queued.body  # still waiting behind "hold" and "before": it is on the log
    after = send(ops, "Register/k/append", "after")

    (tmp_path / "release").touch()

    assert attach(ops, holder).json() == []
    assert attach(ops, before).json() == ["hold"]
    assert attach(ops, after).json() == ["edited"]  # the edit ran after "before" and before "after"
    assert http("POST", f"{ops.url}/Register/k/read", None).json() == ["edited", "after"]


def test_an_edit_of_an_idle_object_answers_its_version_and_a_stale_version_is_refused(ops: Stack) -> None:
    applied = edit(ops, {"log": ["one"]}, key="idle")
    assert applied.status == 200, applied.body
    version = applied.json()["version"]
    assert version == state_version({"log": json.dumps(["one"]).encode()})

    assert edit(ops, {"log": ["two"]}, version=version, key="idle").status == 200
    stale = edit(ops, {"log": ["three"]}, version=version, key="idle")

    assert stale.status == 409, stale.body
    assert "Register/idle" in stale.json()["message"] and version in stale.json()["message"]
    assert http("POST", f"{ops.url}/Register/idle/read", None).json() == ["two"]
    cleared = edit(ops, {}, key="idle")
    assert cleared.status == 200 and cleared.json()["version"] == state_version({})
    assert http("POST", f"{ops.url}/Register/idle/read", None).json() is None


def test_state_routes_refuse_services_and_unknown_names(ops: Stack) -> None:
    body = {"object_key": "k", "new_state": {}}
    service = http("POST", f"{ops.admin_url}/services/TwoSteps/state", body)
    assert service.status == 400 and b"SERVICE" in service.body, service.body
    assert http("POST", f"{ops.admin_url}/services/Nope/state", body).status == 404
    bad = http("POST", f"{ops.admin_url}/services/Register/state", {"object_key": "k", "new_state": {"x": "%%"}})
    assert bad.status == 400 and b"base64" in bad.body


def test_pause_through_the_admin_parks_a_running_invocation(ops: Stack, tmp_path: Path) -> None:
    holder = send(ops, "Register/p/append", "hold")  # on the log before the pause: same partition, acked first
    running = http("PATCH", f"{ops.admin_url}/invocations/{holder}/restart-as-new")
    assert running.status == 409 and b"only completed or paused" in running.body, running.body

    assert http("PATCH", f"{ops.admin_url}/invocations/{holder}/pause").status == 202

    def paused() -> bool:
        resp = http("GET", f"{ops.admin_url}/invocations/{holder}")
        return resp.status == 200 and resp.json()["status"] == "PAUSED"

    assert eventually(paused)
    restarted = http("PATCH", f"{ops.admin_url}/invocations/{holder}/restart-as-new?from=1")
    assert restarted.status == 200, restarted.body
    new_id = restarted.json()["new_invocation_id"]
    assert new_id != holder and new_id[:12] == holder[:12]  # same partition key: created by the same partition


def test_keystate_state_edit_on_a_busy_object_is_applied_in_order_with_its_exclusive_handlers(
    ops: Stack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    holder = send(ops, "Register/c/append", "hold")
    before = send(ops, "Register/c/append", "before")
    document = tmp_path / "state.json"
    document.write_text(json.dumps({"log": ["edited by the cli"]}))
    argv = ["state", "--admin", ops.admin_url, "edit", "Register", "c", "--file", str(document), "--force"]

    code = cli_main(argv)  # waits up to 5 s for the edit, then reports it queued behind the key's invocations

    out = capsys.readouterr().out
    assert code == 0 and "queued" in out, out
    after = send(ops, "Register/c/append", "after")
    (tmp_path / "release").touch()
    assert attach(ops, holder).json() == []
    assert attach(ops, before).json() == ["hold"]
    assert attach(ops, after).json() == ["edited by the cli"]  # after "before", before "after"
    assert http("POST", f"{ops.url}/Register/c/read", None).json() == ["edited by the cli", "after"]



def test_an_invocation_that_just_completed_is_purged_though_the_read_model_still_shows_it_running(
    stack: Stack, tmp_path: Path
) -> None:
    """The read model writes what it read at intervals: the admin must not refuse on its stale row."""
    stack.processor("a")
    stack.ingress(env={"KEYSTATE_READMODEL_INTERVAL_MS": "60000"})  # after its first write, the next in a minute
    port = free_port()
    release = tmp_path / "release"
    stack.deployment(SERVICES, port, env={"KEYSTATE_TEST_RELEASE": str(release)})
    stack.register(f"http://127.0.0.1:{port}")
    iid = send(stack, "Register/stale/append", "hold")
    rows = eventually(lambda: _read_model_status(stack, iid), timeout=60)
    assert rows == "running", rows  # its first write: the invocation holds the key
    running = http("PATCH", f"{stack.admin_url}/invocations/{iid}/purge")  # the processor confirms: running
    assert running.status == 409 and b"only completed invocations can be purged" in running.body, running.body

    release.touch()
    assert attach(stack, iid).status == 200
    assert _read_model_status(stack, iid) == "running"  # the read model has not caught up

    purged = http("PATCH", f"{stack.admin_url}/invocations/{iid}/purge")
    assert purged.status == 202, purged.body


def _read_model_status(stack: Stack, iid: str) -> str | None:
    resp = http("POST", f"{stack.admin_url}/query", {"query": f"SELECT status FROM sys_invocation WHERE id = '{iid}'"},
                headers={"accept": "application/json"})
    rows = resp.json().get("rows", []) if resp.status == 200 else []
    return str(rows[0]["status"]) if rows else None
