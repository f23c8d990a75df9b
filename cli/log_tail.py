"""`keystate log tail [log|requests|results|dlq]`: a topic's records decoded, one JSON line each (kcat, decoded).

Each line holds `topic`, `partition`, `offset`, `timestamp` (ms) and `time`, `key`, `headers`, `type`
(the record's full name) and `value` (the record, decoded with keystate's own schemas). Bytes print as
text when they are UTF-8 and as `{"base64": ...}` when not; a union branch of several records prints as
`{"<full name>": record}` (Avro's JSON encoding). A dead letter's `value` (the rejected record) is
decoded too when it is one of keystate's. A record that cannot be decoded prints as a line with `error`
and its `raw` value in base64: a bad record never stops the tail.

`--invocation ID` keeps the records of one invocation: on the log its `invocation_id` header (or
field), on the results its key (or field), on the DLQ the rejected record's id. A request on
`requests` carries no invocation id: the one that started ID is found through the `source`
(`kafka:<topic>/<partition>/<offset>`) of ID's InvokeCommands on the log (printed once, even with -f).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from typing import IO, Any

from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, Consumer, KafkaError, KafkaException, Message, TopicPartition

from keystate.schemas._codec import codec
from keystate.schemas.errors import ContractError
from keystate.schemas.ids import InvalidIdError, InvocationId
from keystate.schemas.topics import Topics
from keystate.server.errors import KafkaUnavailable, ServerError
from keystate.server.kafka import KafkaSettings, kafka_error, watermarks

__all__ = ["TOPICS", "Reader", "add_parser", "concerns", "jsonable", "render", "tail", "topic_name"]

TOPICS = ("log", "requests", "results", "dlq")
_DEFAULT_LINES = 10
_POLL_S = 0.5


def topic_name(topics: Topics, which: str) -> str:
    """The topic `which` (one of TOPICS) names under `topics`' prefix."""
    return {"log": topics.log, "requests": topics.requests, "results": topics.results, "dlq": topics.requests_dlq}[which]


def jsonable(value: Any) -> Any:
    """`value` as decoded by the codec, made printable as JSON (bytes, union tuples)."""
    if isinstance(value, bytes):
        return _bytes(value)
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str):
        return {value[0]: jsonable(value[1])}  # a (full name, record) union branch
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [jsonable(v) for v in value]
    return value


def _bytes(data: bytes) -> Any:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(data).decode("ascii")}


Headers = Iterable[tuple[str, str | bytes | None]] | Mapping[str, str | bytes | None] | None
"""Record headers as confluent-kafka gives them: (name, value) pairs; a mapping is taken too."""


def _headers(headers: Headers) -> dict[str, Any]:
    out: dict[str, Any] = {}
    pairs = headers.items() if isinstance(headers, Mapping) else headers or ()
    for name, raw in pairs:
        value = _bytes(raw) if isinstance(raw, bytes) else raw
        if name in out:  # a repeated header keeps every value, in order
            previous = out[name]
            out[name] = [*previous, value] if isinstance(previous, list) else [previous, value]
        else:
            out[name] = value
    return out


def render(
    topic: str,
    partition: int,
    offset: int,
    timestamp_ms: int | None,
    key: bytes | None,
    headers: Headers,
    value: bytes | None,
) -> dict[str, Any]:
    """One record as the JSON object `log tail` prints; never raises for a bad value."""
    line: dict[str, Any] = {
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "timestamp": timestamp_ms,
        "time": None if timestamp_ms is None else _iso(timestamp_ms),
        "key": None if key is None else _bytes(key),
        "headers": _headers(headers),
    }
    if value is None:
        return {**line, "type": None, "value": None}  # a tombstone
    try:
        name, record = codec().decode(value)
    except ContractError as exc:
        return {**line, "error": f"cannot decode the value: {exc}", "raw": base64.b64encode(value).decode("ascii")}
    decoded = jsonable(record)
    if name == "keystate.DeadLetter" and record.get("value") is not None:
        decoded["value"] = _rejected(record["value"])
    return {**line, "type": name, "value": decoded}


def _rejected(data: bytes) -> Any:
    """A dead letter's record: decoded when it is a keystate record, else as bytes."""
    try:
        name, record = codec().decode(data)
    except ContractError:
        return _bytes(data)
    return {"type": name, "record": jsonable(record)}


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def concerns(line: dict[str, Any], invocation_id: str) -> bool:
    """Whether a rendered record belongs to the invocation: by key, `invocation_id` header or field."""
    value = line.get("value")
    rejected = value.get("value") if isinstance(value, dict) and line.get("type") == "keystate.DeadLetter" else None
    return (
        line.get("key") == invocation_id
        or line["headers"].get("invocation_id") == invocation_id
        or (isinstance(value, dict) and value.get("invocation_id") == invocation_id)
        or (isinstance(rejected, dict) and rejected.get("record", {}).get("invocation_id") == invocation_id)
    )


def tail(
    bootstrap: str,
    topics: Topics,
    which: str,
    out: IO[str],
    *,
    invocation_id: str | None = None,
    from_beginning: bool = False,
    follow: bool = False,
    lines: int = _DEFAULT_LINES,
) -> int:
    """Print `which`'s records as JSON lines to `out`; returns how many were printed.

    From the last `lines` records of each partition (every record with `from_beginning`, or when an
    invocation is asked for: its history starts anywhere), to the end; with `follow`, on until interrupted.
    """
    topic = topic_name(topics, which)
    printed = 0

    def emit(line: dict[str, Any]) -> None:
        nonlocal printed
        out.write(json.dumps(line, ensure_ascii=False) + "\n")
        out.flush()  # a pipe to jq or grep sees each record as it comes
        printed += 1

    with Reader(bootstrap, topics) as reader:
        if which == "requests" and invocation_id is not None:
            # Found first, read after: one consumer cannot read the log and the requests at once.
            for position in _request_positions(reader, topics, invocation_id):
                line = reader.read_at(*position)
                if line is not None:
                    emit(line)
            return printed
        keep: Callable[[dict[str, Any]], bool] = (
            (lambda line: True) if invocation_id is None else (lambda line: concerns(line, invocation_id))
        )
        for line in reader.records(topic, None if from_beginning or invocation_id else lines, follow=follow):
            if keep(line):
                emit(line)
    return printed


def _request_positions(reader: Reader, topics: Topics, invocation_id: str) -> list[tuple[str, int, int]]:
    """Where the requests that started `invocation_id` are: the `source` of its InvokeCommands on the log.

    Several when an idempotency key made more than one request start the same invocation.
    """
    positions, sources = [], []
    for line in reader.records(topics.log, None, follow=False):
        if line.get("type") != "keystate.InvokeCommand" or line["value"].get("invocation_id") != invocation_id:
            continue
        source = str(line["value"].get("source", ""))
        where = _kafka_source(source)
        if where is None:
            sources.append(source)
        else:
            positions.append(where)
    if not positions:
        why = f"it was started by {', '.join(map(repr, sources))}, not from Kafka" if sources else f"{topics.log} has no InvokeCommand of it"
        print(f"keystate log tail: no record of {topics.requests} started invocation {invocation_id}: {why}", file=sys.stderr)
    return positions


def _kafka_source(source: str) -> tuple[str, int, int] | None:
    """`kafka:<topic>/<partition>/<offset>` (the router's source of an InvokeCommand) as a position."""
    if not source.startswith("kafka:"):
        return None
    head, _, offset = source[len("kafka:"):].rpartition("/")
    topic, _, partition = head.rpartition("/")
    try:
        return topic, int(partition), int(offset)
    except ValueError:
        return None


class Reader:
    """A consumer that assigns partitions itself (no group, no commits) and yields rendered records."""

    def __init__(self, bootstrap: str, topics: Topics) -> None:
        settings = KafkaSettings(bootstrap, topics, client_id="keystate-log-tail")
        self._consumer = Consumer(settings.consumer_config(**{
            "group.id": f"keystate-log-tail-{uuid.uuid4().hex}",  # never joined: partitions are assigned
            "enable.partition.eof": True,  # how a tail without --follow knows it reached the end
            "auto.offset.reset": "earliest",
        }))

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self._consumer.close()

    def _partitions(self, topic: str) -> list[int]:
        try:
            meta = self._consumer.list_topics(topic, timeout=10.0).topics.get(topic)
        except KafkaException as exc:
            raise kafka_error(f"reading the metadata of {topic}", exc) from exc
        if meta is None or meta.error is not None or not meta.partitions:
            raise KafkaUnavailable(
                f"topic {topic} does not exist; check --prefix and --bootstrap, or create keystate's topics "
                "with `keystate topics create`"
            )
        return sorted(meta.partitions)

    def records(self, topic: str, last: int | None, *, follow: bool) -> Iterator[dict[str, Any]]:
        """`topic`'s records: the last `last` of each partition (None: all) up to its end, then on with `follow`."""
        positions: dict[int, int] = {}
        for partition in self._partitions(topic):
            try:
                low, high = watermarks(self._consumer, TopicPartition(topic, partition), timeout=10.0)
            except KafkaException as exc:
                raise kafka_error(f"reading the offsets of {topic}[{partition}]", exc) from exc
            positions[partition] = high
            window: Iterable[Message] = (
                self._until_end(topic, partition, low, high) if last is None else self._last(topic, partition, low, high, last)
            )
            for message in window:
                positions[partition] = max(positions[partition], int(message.offset() or 0) + 1)
                yield _rendered(message)
        if not follow:
            return
        self._consumer.assign([TopicPartition(topic, p, offset) for p, offset in positions.items()])
        try:
            while True:
                event = self._poll(topic)
                if event is not None and event.error() is None:
                    yield _rendered(event)
        finally:
            self._consumer.unassign()

    def _last(self, topic: str, partition: int, low: int, high: int, count: int) -> list[Message]:
        """The last `count` records before `high`: transaction markers take offsets too, so widen until found."""
        if count == 0:
            return []
        width = count
        while True:
            start = max(low, high - width)
            window = list(self._until_end(topic, partition, start, high))
            if len(window) >= count or start == low:
                return window[-count:]
            width *= 2

    def _until_end(self, topic: str, partition: int, start: int, high: int) -> Iterator[Message]:
        """The records of one partition from `start` to its end (read_committed: the last committed one)."""
        if start >= high:
            return
        self._consumer.assign([TopicPartition(topic, partition, start)])
        try:
            while True:
                message = self._poll(topic)
                if message is None or message.partition() != partition:
                    continue
                if message.error() is not None:  # only the end of the partition comes back from _poll
                    return
                yield message
        finally:
            self._consumer.unassign()

    def _poll(self, topic: str) -> Message | None:
        """The next record, the partition-EOF event (a message with that error), or None."""
        message = self._consumer.poll(_POLL_S)
        if message is None:
            return None
        error = message.error()
        if error is None or error.code() == KafkaError._PARTITION_EOF:
            return message if error is None or message.topic() == topic else None
        if error.fatal():
            raise kafka_error(f"reading {topic}", error)
        print(f"keystate log tail: {topic}: {error.str()}", file=sys.stderr)  # the client retries on its own
        return None

    def read_at(self, topic: str, partition: int, offset: int) -> dict[str, Any] | None:
        """The record at one position, or None when there is none (compacted, deleted, aborted)."""
        for message in self._until_end(topic, partition, offset, offset + 1):
            return _rendered(message) if message.offset() == offset else None
        return None


def _rendered(message: Message) -> dict[str, Any]:
    kind, ms = message.timestamp()
    return render(
        str(message.topic()), int(message.partition() or 0), int(message.offset() or 0),
        ms if kind != TIMESTAMP_NOT_AVAILABLE else None,
        message.key(), message.headers(), message.value(),
    )


def add_parser(sub: Any, bootstrap: Callable[[argparse.Namespace], str]) -> None:
    """Register `keystate log tail` on the CLI's subparsers."""
    log_parser = sub.add_parser("log", help="tail keystate's topics, decoded (keystate log tail --help)")
    actions = log_parser.add_subparsers(dest="log_action", required=True)
    parser = actions.add_parser(
        "tail", help="print a topic's records as JSON lines, decoded",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("topic", nargs="?", choices=TOPICS, default="log",
                        help="which topic: the command log, the requests, the results or the dead letters (default %(default)s)")
    parser.add_argument("--invocation", metavar="ID", help="only the records of this invocation (reads from the beginning)")
    parser.add_argument("--from-beginning", action="store_true", help="every record, not only the last ones")
    parser.add_argument("-n", "--lines", type=int, default=_DEFAULT_LINES,
                        help="start this many records before the end of each partition (default %(default)s)")
    parser.add_argument("-f", "--follow", action="store_true", help="keep printing new records until interrupted")
    parser.add_argument("--bootstrap", help="Kafka bootstrap servers (default: $KAFKA_BOOTSTRAP_SERVERS or 127.0.0.1:19092)")
    parser.add_argument("--prefix", default=None, help="topic name prefix (default $KEYSTATE_TOPIC_PREFIX or keystate.)")
    parser.set_defaults(run=lambda args: _run(args, bootstrap(args)))


def _run(args: argparse.Namespace, bootstrap: str) -> int:
    prefix = args.prefix or os.environ.get("KEYSTATE_TOPIC_PREFIX", "keystate.")
    invocation = None
    if args.invocation is not None:
        try:
            invocation = str(InvocationId.parse(args.invocation))
        except InvalidIdError as exc:
            print(f"keystate log tail: --invocation {exc}", file=sys.stderr)
            return 2
    if args.lines < 0:
        print(f"keystate log tail: --lines {args.lines} must not be negative", file=sys.stderr)
        return 2
    try:
        tail(bootstrap, Topics(prefix), args.topic, sys.stdout, invocation_id=invocation,
             from_beginning=args.from_beginning, follow=args.follow, lines=args.lines)
    except ServerError as exc:
        print(f"keystate log tail: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0
