"""Ids and partitioning agree with Kafka's Java client."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keystate.schemas.ids import (
    InvalidIdError,
    InvocationId,
    InvocationTarget,
    PartitionKey,
    ServiceId,
    murmur2,
    partition_for,
)

# Printed by org.apache.kafka.common.utils.Utils.murmur2 / toPositive from kafka-clients 4.1.1.
JAVA_VECTORS = [
    ("", 275646681, 1, 9),
    ("a", -1563381124, 4, 4),
    ("ab", 316155434, 2, 2),
    ("abc", 479470107, 3, 3),
    ("21", -973932308, 4, 12),
    ("foobar", -790332482, 6, 6),
    ("Counter/alice", 280643301, 5, 21),
    ("a-little-bit-long-string", -985981536, 0, 8),
    ("lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971, 5, 5),
    ("ShoppingCart/\u00e9l\u00e8ve", -2023057791, 1, 17),
]


@pytest.mark.parametrize(("key", "hash_", "p8", "p24"), JAVA_VECTORS)
def test_murmur2_matches_java_client(key: str, hash_: int, p8: int, p24: int) -> None:
    assert murmur2(key.encode()) == hash_
    assert partition_for(key, 8) == p8
    assert partition_for(key, 24) == p24


def test_partition_count_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        partition_for("a", 0)


def test_keyed_invocations_route_like_their_object() -> None:
    target = InvocationTarget("Counter", "add", "alice")
    ids = {InvocationId.for_target(target) for _ in range(20)}
    assert len(ids) == 20
    assert {i.partition(8) for i in ids} == {partition_for("Counter/alice", 8)}
    assert ServiceId("Counter", "alice").partition_key == murmur2(b"Counter/alice") & 0x7FFFFFFF


@given(st.integers(0, 0x7FFFFFFF), st.binary(min_size=15, max_size=15))
def test_invocation_id_text_round_trips(hash_: int, random: bytes) -> None:
    iid = InvocationId.new(PartitionKey(hash_), random)
    text = str(iid)
    assert text.startswith("inv_")
    assert InvocationId.parse(text) == iid


@pytest.mark.parametrize(
    "text", ["", "inv_", "abc", "inv_zzzzzzzz" + "a" * 24, "inv_0000000" + "!" * 25, "x" * 36]
)
def test_malformed_invocation_ids_are_rejected(text: str) -> None:
    with pytest.raises(InvalidIdError, match="invocation id"):
        InvocationId.parse(text)
