"""Crashes: kill -9 of processors and deployments; bad records on keystate.requests."""

from __future__ import annotations

import threading
import time
from collections import Counter as Tally
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from confluent_kafka import Producer

from keystate.schemas._codec import codec
from keystate.schemas.topics import Topics

from harness import SERVICES_SCRIPT, HttpResponse, Stack, free_port, http
from results import read_all

pytestmark = pytest.mark.integration


def _send_increments(stack: Stack, key: str, n: int) -> list[str]:
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda _: http("POST", f"{stack.url}/Counter/{key}/add/send", 1), range(n)))
    assert all(r.status == 202 for r in responses), [r.body for r in responses if r.status != 202]
    return [r.json()["invocationId"] for r in responses]


def _wait_results(stack: Stack, ids: list[str], timeout: float = 120.0) -> list[dict]:
    wanted = set(ids)
    records = read_all(
        stack.bootstrap,
        Topics(stack.prefix).results,
        until=lambda rs: wanted <= {r["invocation_id"] for r in rs},
        timeout=timeout,
    )
    return [r for r in records if r["invocation_id"] in wanted]


def _assert_exactly_once(stack: Stack, ids: list[str], key: str) -> None:
    results = _wait_results(stack, ids)
    per_id = Tally(r["invocation_id"] for r in results)
    assert set(per_id) == set(ids), f"missing results for {set(ids) - set(per_id)}\n{stack.logs()}"
    assert max(per_id.values()) == 1, "an invocation completed twice"
    assert all(r["status"] == "SUCCEEDED" for r in results)
    # Every increment saw a distinct old value: none lost, none applied twice.
    old_values = sorted(int(r["output"]) for r in results)
    assert old_values == list(range(len(ids)))
    assert http("POST", f"{stack.url}/Counter/{key}/get").json() == len(ids)


def test_processor_killed_under_load_loses_nothing(running: Stack) -> None:
    processor = running.procs[0]
    ids: list[str] = []
    sender = threading.Thread(target=lambda: ids.extend(_send_increments(running, "load", 150)))
    sender.start()
    time.sleep(1.0)
    processor.kill9()
    sender.join()
    running.processor("a")  # same instance id: fences the dead one's open transaction
    _assert_exactly_once(running, ids, "load")


def test_second_processor_takes_over_the_partitions_of_a_killed_one(stack: Stack, deployment_env: dict[str, str]) -> None:
    first = stack.processor("a")
    stack.processor("b")
    stack.ingress()
    port = free_port()
    stack.deployment(SERVICES_SCRIPT, port, env=deployment_env)
    stack.register(f"http://127.0.0.1:{port}")
    # Warm up on several keys so both processors own partitions with state.
    keys = [f"k{i}" for i in range(8)]
    for key in keys:
        assert http("POST", f"{stack.url}/Counter/{key}/add", 1).status == 200
    ids = {key: _send_increments(stack, key, 10) for key in keys}
    first.kill9()
    more = {key: _send_increments(stack, key, 10) for key in keys}
    all_ids = [i for key in keys for i in ids[key] + more[key]]
    results = _wait_results(stack, all_ids, timeout=180)
    assert Tally(r["invocation_id"] for r in results) == Tally(all_ids), stack.logs()
    for key in keys:
        assert http("POST", f"{stack.url}/Counter/{key}/get").json() == 21


def test_deployment_killed_after_a_run_step_replays_the_step(running: Stack, deployment_env: dict[str, str]) -> None:
    ledger = Path(deployment_env["KEYSTATE_TEST_LEDGER"])
    deployment = running.procs[-1]
    port = int(deployment.argv[-1])
    box: list[HttpResponse] = []
    caller = threading.Thread(target=lambda: box.append(http("POST", f"{running.url}/Steps/charge_once", "o-1", timeout=120)))
    caller.start()
    deadline = time.monotonic() + 60
    while not (ledger.exists() and ledger.read_text().strip()):
        assert time.monotonic() < deadline, running.logs()
        time.sleep(0.02)
    time.sleep(0.3)  # the step's entry is journaled and acknowledged while the second step waits
    deployment.kill9()
    running.deployment(SERVICES_SCRIPT, port, name="deployment-2", env=deployment_env)
    Path(deployment_env["KEYSTATE_TEST_RELEASE"]).touch()
    caller.join(120)
    assert box and box[0].status == 200, running.logs()
    charged = ledger.read_text().split()
    assert len(charged) == 1, f"the step ran {len(charged)} times"
    assert box[0].json() == charged[0]


def test_bad_requests_go_to_the_dlq_and_good_ones_still_run(running: Stack) -> None:
    topics = Topics(running.prefix)
    producer = Producer({"bootstrap.servers": running.bootstrap})
    c = codec()
    producer.produce(topics.requests, b"\x00garbage")
    producer.produce(topics.requests, b"not avro at all")
    producer.produce(topics.requests, c.encode("keystate.InvocationRequest", {"service": "Nope", "handler": "x", "argument": b"1"}))
    producer.produce(topics.requests, c.encode("keystate.InvocationRequest", {"service": "Counter", "handler": "add", "argument": b"1"}))
    producer.produce(
        topics.requests,
        c.encode("keystate.InvocationRequest", {"service": "Counter", "handler": "add", "key": "dlq", "argument": b"3", "reply_topic": topics.results}),
        key=b"anything",
    )
    producer.flush(10)
    letters = read_all(running.bootstrap, topics.requests_dlq, until=lambda rs: len(rs) >= 4)
    reasons = sorted(letter["reason"] for letter in letters)
    assert len(letters) == 4
    assert any("unknown service 'Nope'" in r for r in reasons)
    assert any("'key' is required" in r for r in reasons)
    assert sum("not an InvocationRequest" in r for r in reasons) == 2
    assert {letter["value"] for letter in letters} >= {b"\x00garbage", b"not avro at all"}
    deadline = time.monotonic() + 60
    while http("POST", f"{running.url}/Counter/dlq/get").json() != 3:
        assert time.monotonic() < deadline, running.logs()
        time.sleep(0.1)


def test_a_step_longer_than_the_inactivity_timeout_completes_thanks_to_heartbeats(
    stack: Stack, deployment_env: dict[str, str]
) -> None:
    stack.processor("a", "--inactivity-timeout", "2")
    stack.ingress()
    port = free_port()
    stack.deployment(SERVICES_SCRIPT, port, env=deployment_env)
    stack.register(f"http://127.0.0.1:{port}")
    assert http("POST", f"{stack.url}/Steps/long_step", 4.0).json() == 4.0
    assert "inactivity timeout" not in stack.procs[0].log_path.read_text()
