"""`keystate log tail`: each topic's records decoded, from a real invocation on a real stack.

Issue 11, "kcat debugging". The stack (processor, ingress, the examples) is shared by the module;
the records are those of one Kafka-produced Greeter/greet, a request for an unknown service and a
record that is not Avro at all (both dead-lettered).
"""

from __future__ import annotations

import base64
import io
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from confluent_kafka import Producer

from keystate.cli import main as cli_main
from keystate.cli.log_tail import render, tail
from keystate.schemas._codec import codec
from keystate.schemas.topics import Topics
from keystate.server.topics import TopicSettings, ensure_topics

from tests.e2e.harness import ROOT, Stack, free_port, http
from tests.e2e.results import read_all

GARBAGE = b"\x00\x00\x00\x00\x00not avro"  # the magic byte, then schema id 0, which keystate never gave


@dataclass
class Story:
    stack: Stack
    topics: Topics
    invocation_id: str
    http_invocation_id: str


def _request(**fields: Any) -> bytes:
    return codec().encode("keystate.InvocationRequest", {"service": "Greeter", "handler": "greet", "argument": b'"Ann"', **fields})


@pytest.fixture(scope="module")
def story(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Story]:
    prefix = f"lt{uuid.uuid4().hex[:8]}."
    topics = Topics(prefix)
    ensure_topics(kafka_bootstrap, topics, TopicSettings(partitions=2))
    stack = Stack(kafka_bootstrap, prefix, tmp_path_factory.mktemp("log-tail"))
    try:
        stack.processor("a")
        stack.ingress()
        port = free_port()
        stack.deployment(str(ROOT / "examples" / "serve.py"), port, name="examples")
        stack.register(f"http://127.0.0.1:{port}")
        by_http = http("POST", f"{stack.url}/Greeter/greet", "Cy")  # another invocation, through the ingress
        assert by_http.json() == "Hello Cy!"
        producer = Producer({"bootstrap.servers": kafka_bootstrap})
        producer.produce(topics.requests, _request(), key=b"order-7", headers=[("correlation-id", b"c-1")])
        producer.produce(topics.requests, _request(service="Nobody"), key=b"order-8")
        producer.produce(topics.requests, GARBAGE, key=b"order-9")
        assert producer.flush(10) == 0
        results = read_all(kafka_bootstrap, topics.results, until=lambda rs: any(r.get("output") for r in rs), timeout=90)
        done = [r for r in results if r.get("output") == b'"Hello Ann!"']
        assert done, stack.logs()
        read_all(kafka_bootstrap, topics.requests_dlq, until=lambda rs: len(rs) >= 2, timeout=60)
        yield Story(stack, topics, done[0]["invocation_id"], by_http.headers["x-restate-id"])
    finally:
        stack.stop()


def _tail(story: Story, which: str, **options: Any) -> list[dict[str, Any]]:
    out = io.StringIO()
    count = tail(story.stack.bootstrap, story.topics, which, out, **options)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert count == len(lines)
    return lines


@pytest.mark.integration
def test_requests_are_decoded_with_key_and_headers_and_a_bad_record_is_a_line_with_error(story: Story) -> None:
    lines = _tail(story, "requests", from_beginning=True)

    by_key = {line["key"]: line for line in lines}
    assert sorted(by_key) == ["order-7", "order-8", "order-9"]
    good = by_key["order-7"]
    assert good["topic"] == story.topics.requests and good["type"] == "keystate.InvocationRequest"
    assert good["headers"] == {"correlation-id": "c-1"}
    assert good["value"]["service"] == "Greeter" and good["value"]["argument"] == '"Ann"'
    assert isinstance(good["partition"], int) and isinstance(good["offset"], int) and good["timestamp"] > 0
    bad = by_key["order-9"]
    assert "unknown schema id 0" in bad["error"]
    assert base64.b64decode(bad["raw"]) == GARBAGE and "value" not in bad


@pytest.mark.integration
def test_the_log_shows_an_invocations_commands_with_their_headers(story: Story) -> None:
    iid = story.invocation_id

    everything = _tail(story, "log", from_beginning=True)
    mine = _tail(story, "log", invocation_id=iid)

    assert mine and all(line["headers"]["invocation_id"] == iid for line in mine)
    assert len(everything) > len(mine)  # Greeter/greet("Cy") through the ingress is there too
    assert any(line["value"]["source"] == "ingress" for line in everything if line["type"] == "keystate.InvokeCommand")
    invoke = next(line for line in mine if line["type"] == "keystate.InvokeCommand")
    assert invoke["key"] == iid  # a plain service: keyed by the invocation id
    assert invoke["headers"] == {"type": "keystate.InvokeCommand", "invocation_id": iid, "target": "Greeter/greet"}
    assert invoke["value"]["source"].startswith(f"kafka:{story.topics.requests}/")
    assert invoke["value"]["headers"] == {}  # the request's Avro headers field, not its Kafka headers


@pytest.mark.integration
def test_the_results_and_the_request_of_one_invocation(story: Story) -> None:
    iid = story.invocation_id

    results = _tail(story, "results", invocation_id=iid)
    requests = _tail(story, "requests", invocation_id=iid)

    assert len(results) == 1
    result = results[0]
    # The request's correlation header comes back on its result (issue 11), readable as kcat shows it.
    headers = {"type": "keystate.InvocationResult", "correlation-id": "c-1"}
    assert (result["key"], result["type"], result["headers"]) == (iid, "keystate.InvocationResult", headers)
    assert result["value"]["status"] == "SUCCEEDED" and result["value"]["output"] == '"Hello Ann!"'
    assert result["value"]["target"]["service"] == "Greeter"
    assert [r["key"] for r in requests] == ["order-7"]  # found through the InvokeCommand's source


@pytest.mark.integration
def test_no_request_belongs_to_an_invocation_started_through_the_ingress(
    story: Story, capsys: pytest.CaptureFixture[str]
) -> None:
    requests = _tail(story, "requests", invocation_id=story.http_invocation_id)
    results = _tail(story, "results", invocation_id=story.http_invocation_id)

    assert requests == []
    assert "started by 'ingress', not from Kafka" in capsys.readouterr().err
    assert [line["value"]["output"] for line in results] == ['"Hello Cy!"']


@pytest.mark.integration
def test_dead_letters_show_the_reason_and_the_rejected_record_decoded_when_it_is_one(story: Story) -> None:
    lines = _tail(story, "dlq", from_beginning=True)

    by_key = {line["key"]: line for line in lines}
    assert sorted(by_key) == ["order-8", "order-9"]
    unknown = by_key["order-8"]
    assert unknown["type"] == "keystate.DeadLetter" and "unknown service 'Nobody'" in unknown["value"]["reason"]
    assert unknown["headers"]["reason"] == unknown["value"]["reason"]
    assert unknown["value"]["value"] == {"type": "keystate.InvocationRequest", "record": {
        "service": "Nobody", "handler": "greet", "key": None, "argument": '"Ann"', "headers": {},
        "idempotency_key": None, "reply_topic": None, "delay_ms": None}}
    garbage = by_key["order-9"]["value"]
    assert garbage["topic"] == story.topics.requests and garbage["value"] == GARBAGE.decode()


@pytest.mark.integration
def test_without_from_beginning_it_starts_near_the_end_of_each_partition(story: Story) -> None:
    last = _tail(story, "log", lines=1)
    everything = _tail(story, "log", from_beginning=True)

    assert 0 < len(last) <= 2  # at most one offset per partition (a commit marker takes an offset too)
    assert all(line in everything for line in last)


@pytest.mark.integration
def test_the_cli_prints_json_lines_and_follows_new_records(story: Story, capsys: pytest.CaptureFixture[str]) -> None:
    common = ["--bootstrap", story.stack.bootstrap, "--prefix", story.stack.prefix]
    assert cli_main(["log", "tail", "results", "--invocation", story.invocation_id, *common]) == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["key"] for line in printed] == [story.invocation_id]

    follower = subprocess.Popen(
        [sys.executable, "-m", "keystate.cli", "log", "tail", "results", "--from-beginning", "-f", *common],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, start_new_session=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in follower.stdout or ()], daemon=True).start()

    def output_of_next_result() -> str:
        try:
            line = json.loads(lines.get(timeout=90))
        except queue.Empty:
            raise AssertionError(f"no line from the follower\n{story.stack.logs()}") from None
        return str(line["value"]["output"]) if line["type"] == "keystate.InvocationResult" else ""

    try:
        while output_of_next_result() != '"Hello Ann!"':  # the history first
            pass
        producer = Producer({"bootstrap.servers": story.stack.bootstrap})
        producer.produce(story.topics.requests, _request(argument=b'"Bo"'), key=b"order-10")
        assert producer.flush(10) == 0
        while output_of_next_result() != '"Hello Bo!"':  # then what comes later
            pass
        assert follower.poll() is None  # still following
    finally:
        os.kill(follower.pid, signal.SIGINT)
        follower.wait(15)
    assert follower.returncode == 0, follower.stderr.read() if follower.stderr else ""


def test_render_never_raises_and_prints_bytes_and_unions_readably() -> None:
    failure = ("keystate.Failure", {"code": 500, "message": "boom"})
    value = codec().encode("keystate.QueryOutputReply", {
        "request_id": "r1", "invocation_id": None, "status": "FAILED", "result": failure,
        "previously_accepted": False, "expires_at_ms": None})

    reply = render("t", 0, 5, 1_700_000_000_000, b"\xff\xfe", [("type", b"x"), ("type", b"y")], value)
    tombstone = render("t", 1, 6, None, None, None, None)
    short = render("t", 0, 7, 1, b"k", [], b"\x00\x01")

    assert reply["key"] == {"base64": base64.b64encode(b"\xff\xfe").decode()}
    assert reply["headers"] == {"type": ["x", "y"]}
    assert reply["value"]["result"] == {"keystate.Failure": {"code": 500, "message": "boom"}}
    assert reply["time"] == "2023-11-14T22:13:20.000Z"
    assert (tombstone["type"], tombstone["value"], tombstone["time"]) == (None, None, None)
    assert "too short" in short["error"] and short["raw"] == base64.b64encode(b"\x00\x01").decode()
