"""The one payload limit of keystate, and every Kafka size derived from it.

A *payload* is one user value with what travels with it: a request body with its headers, a state
value with its key, a `ctx.run` result, a handler's output, a call's argument with its headers, an
awakeable or promise value. Every payload is at most `max_payload_bytes` (default 8 MiB,
`KEYSTATE_MAX_PAYLOAD_BYTES`, `--max-payload-bytes`). keystate never puts two payloads into one
record (a completed call's journal row drops the argument; a completed status row drops the
request headers), so every record fits in `payload + ENVELOPE_HEADROOM_BYTES`, and `kafka_sizes`
derives the topic, producer and consumer sizes from that.

Why 8 MiB by default: 8x Kafka's own 1 MB default, so documents and small files fit, while one
value stays cheap to hold in the processors' in-memory tables and to copy through the log, the
changelog and the results topic (each value is written 3-4 times). Restate accepts 32 MiB; raise
the limit to that (up to `MAX_PAYLOAD_BYTES_CEILING`) where it is needed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from .errors import ContractError

__all__ = [
    "DEFAULT_MAX_PAYLOAD_BYTES",
    "ENVELOPE_HEADROOM_BYTES",
    "ENV_VAR",
    "MAX_DELAY_MS",
    "MAX_PAYLOAD_BYTES_CEILING",
    "MAX_TEXT_BYTES",
    "MIN_PAYLOAD_BYTES",
    "SETTING_HINT",
    "KafkaSizes",
    "PayloadLimitError",
    "headers_size",
    "kafka_sizes",
    "max_payload_bytes",
    "payload_too_large",
    "truncate_text",
]

KiB = 1024
MiB = 1024 * KiB

ENV_VAR = "KEYSTATE_MAX_PAYLOAD_BYTES"
SETTING_HINT = f"raise the limit with {ENV_VAR} or --max-payload-bytes on the processors and the ingress"
DEFAULT_MAX_PAYLOAD_BYTES = 8 * MiB
MIN_PAYLOAD_BYTES = 1 * KiB
# A record must fit into one produce request, and brokers refuse requests over
# socket.request.max.bytes (100 MiB by default): stay well below with the headroom added.
MAX_PAYLOAD_BYTES_CEILING = 64 * MiB
# Everything in a record besides its one payload: ids, target, Kafka headers, Avro framing, a
# failure message (bounded by MAX_TEXT_BYTES) next to a result, a dead letter's reason.
ENVELOPE_HEADROOM_BYTES = 256 * KiB
# The longest delay of a send or a delayed invocation, wherever it enters (ingress `?delay=`,
# `delay_ms` of a Kafka request): 10 years. Longer ones are mistakes, and near 2^63 they overflow
# the execute-at timestamps.
MAX_DELAY_MS = 3650 * 86_400_000
# Failure messages and stack traces are for humans: longer ones are cut to this.
MAX_TEXT_BYTES = 16 * KiB
# Record-batch header and per-record framing on top of a record's key, value and headers.
_BATCH_FRAMING_BYTES = 4 * KiB
# librdkafka's own defaults, kept whenever they are large enough.
_LIBRDKAFKA_FETCH_MAX_BYTES = 52_428_800
_LIBRDKAFKA_RECEIVE_MAX_BYTES = 100_000_000
_LIBRDKAFKA_BATCH_SIZE = 1_000_000


class PayloadLimitError(ContractError, ValueError):
    """The configured payload limit is not a usable number; the message says the allowed range."""


def max_payload_bytes(value: int | str | None = None, environ: Mapping[str, str] | None = None) -> int:
    """The payload limit: `value` if given, else `$KEYSTATE_MAX_PAYLOAD_BYTES`, else 8 MiB; checked."""
    source = "--max-payload-bytes"
    if value is None:
        env = os.environ if environ is None else environ
        raw = env.get(ENV_VAR)
        if raw is None or not raw.strip():
            return DEFAULT_MAX_PAYLOAD_BYTES
        value, source = raw, ENV_VAR
    try:
        limit = int(value)
    except (TypeError, ValueError):
        raise PayloadLimitError(f"{source} must be a whole number of bytes, got {value!r}") from None
    if not MIN_PAYLOAD_BYTES <= limit <= MAX_PAYLOAD_BYTES_CEILING:
        raise PayloadLimitError(
            f"{source} is {limit} bytes; it must be between {MIN_PAYLOAD_BYTES} and "
            f"{MAX_PAYLOAD_BYTES_CEILING} (default {DEFAULT_MAX_PAYLOAD_BYTES})"
        )
    return limit


@dataclass(frozen=True, slots=True)
class KafkaSizes:
    """Kafka sizes for one payload limit; build it with `kafka_sizes`."""

    max_payload_bytes: int
    # The largest record keystate writes: key + value + headers, uncompressed.
    record_bytes: int
    # Topic config `max.message.bytes`: the broker checks the (compressed) record batch.
    topic_max_message_bytes: int
    # Producer `message.max.bytes` (librdkafka checks each record against it) and `batch.size`.
    producer_message_max_bytes: int
    producer_batch_size: int
    # Consumer `fetch.max.bytes`, `max.partition.fetch.bytes`, `receive.message.max.bytes`.
    consumer_fetch_max_bytes: int
    consumer_max_partition_fetch_bytes: int
    consumer_receive_message_max_bytes: int


def kafka_sizes(max_payload_bytes: int) -> KafkaSizes:
    """Every Kafka size that a payload limit implies: the one place they are derived."""
    record = max_payload_bytes + ENVELOPE_HEADROOM_BYTES
    producer = record + _BATCH_FRAMING_BYTES
    # LZ4 may grow incompressible data by 1/255 (plus a frame header): the broker sees that size.
    topic = record + record // 255 + 2 * _BATCH_FRAMING_BYTES
    fetch = max(_LIBRDKAFKA_FETCH_MAX_BYTES, topic)
    return KafkaSizes(
        max_payload_bytes=max_payload_bytes,
        record_bytes=record,
        topic_max_message_bytes=topic,
        producer_message_max_bytes=producer,
        producer_batch_size=min(_LIBRDKAFKA_BATCH_SIZE, record),
        consumer_fetch_max_bytes=fetch,
        consumer_max_partition_fetch_bytes=topic,
        # librdkafka requires receive.message.max.bytes >= fetch.max.bytes + 512.
        consumer_receive_message_max_bytes=max(_LIBRDKAFKA_RECEIVE_MAX_BYTES, fetch + 512),
    )


def headers_size(headers: Mapping[str, str] | None) -> int:
    """Bytes of a header map as it counts towards a payload (UTF-8 names and values)."""
    if not headers:
        return 0
    return sum(len(k.encode("utf-8")) + len(v.encode("utf-8")) for k, v in headers.items())


def payload_too_large(what: str, size: int, limit: int) -> str | None:
    """The error message if `what` of `size` bytes is over `limit`, else None."""
    if size <= limit:
        return None
    return f"{what} is {size} bytes, over the payload limit of {limit} bytes; send less data or {SETTING_HINT}"


def truncate_text(text: str, limit: int = MAX_TEXT_BYTES) -> str:
    """`text` cut to at most `limit` UTF-8 bytes, with a note saying how long it was."""
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    note = f"... [truncated, {len(data)} bytes in all]"
    keep = max(0, limit - len(note.encode("utf-8")))
    return data[:keep].decode("utf-8", "ignore") + note
