"""The ingress's own reply topic (issue 11): created at start, kept for restarts, named by what it waits on."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from keystate.ingress.errors import IngressError
from keystate.ingress.runtime import IngressRuntime, IngressSettings, default_ingress_id
from keystate.processors.router import topic_name_problem
from keystate.schemas.topics import Topics
from keystate.server.topics import REPLY_TOPIC_RETENTION_MS

pytestmark = pytest.mark.integration


def _topics(bootstrap: str) -> dict[str, int]:
    listed = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10).topics
    return {name: len(t.partitions) for name, t in listed.items()}


def _config(bootstrap: str, topic: str, name: str) -> str:
    from confluent_kafka.admin import ConfigResource

    admin = AdminClient({"bootstrap.servers": bootstrap})
    [future] = admin.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, topic)]).values()
    return str(future.result(10)[name].value)


async def test_each_ingress_gets_its_own_one_partition_reply_topic_which_outlives_it_for_a_restart(
    ingress_settings: IngressSettings,
) -> None:
    other = IngressRuntime(dataclasses.replace(ingress_settings, ingress_id="other-ingress"))
    first = IngressRuntime(ingress_settings)
    await asyncio.gather(first.start(), other.start())
    try:
        assert first.reply_topic != other.reply_topic
        assert other.reply_topic == f"{ingress_settings.topics.prefix}replies.other-ingress"
        listed = await asyncio.to_thread(_topics, ingress_settings.bootstrap)
        assert listed[first.reply_topic] == 1 and listed[other.reply_topic] == 1
        retention = await asyncio.to_thread(_config, ingress_settings.bootstrap, first.reply_topic, "retention.ms")
        assert int(retention) == REPLY_TOPIC_RETENTION_MS
        assert first.results.topic == first.reply_topic  # it waits there, not on keystate.results
    finally:
        await asyncio.gather(first.stop(), other.stop())
    # A restart (same state dir, so the same id) finds and reuses its topic.
    again = IngressRuntime(dataclasses.replace(ingress_settings))
    assert again.reply_topic == first.reply_topic
    await again.start()
    await again.stop()


def test_the_default_ingress_id_is_stable_per_state_dir_and_names_a_legal_topic(tmp_path: Path) -> None:
    one, two = default_ingress_id(tmp_path / "a"), default_ingress_id(tmp_path / "b")
    assert one == default_ingress_id(tmp_path / "a") and one != two
    assert topic_name_problem(Topics().replies(one)) is None


def test_an_ingress_id_that_cannot_name_a_topic_is_refused_with_how_to_fix_it(ingress_settings: IngressSettings) -> None:
    with pytest.raises(IngressError, match="KEYSTATE_INGRESS_ID"):
        dataclasses.replace(ingress_settings, ingress_id="no/slashes")
