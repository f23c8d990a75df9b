"""Invocations in the admin API against a real broker: the read model, cancel/kill/resume/purge, pinned deployments."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from keystate.ingress.runtime import IngressRuntime
from keystate.schemas.ids import InvocationId

from ingress_support import Deployment, find_command, handler, manifest, service
from readmodel_support import NOW, status as _status, write_changelog

pytestmark = pytest.mark.integration


def _write_statuses(runtime: IngressRuntime, statuses: list[tuple[str, dict[str, Any] | None]]) -> None:
    """Write status rows to the multiplexed changelog as a partition processor would (tombstone: None)."""
    write_changelog(runtime.settings.bootstrap, runtime.settings.topics, statuses, partitions=4)


async def _known(runtime: IngressRuntime, *ids: str) -> bool:
    return all([await runtime.invocations.get(i) is not None for i in ids])


async def _gone(runtime: IngressRuntime, invocation_id: str) -> bool:
    return await runtime.invocations.get(invocation_id) is None


async def _ready(runtime: IngressRuntime) -> bool:
    return runtime.invocations.ready


async def _until(condition: Callable[[], Awaitable[bool]]) -> None:
    for _ in range(300):
        if await condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the read model never caught up")


async def _command(runtime: IngressRuntime, name: str, invocation_id: str) -> tuple[Any, dict[str, Any]]:
    s = runtime.settings
    return await asyncio.to_thread(find_command, s.bootstrap, s.topics.log, name, lambda c: c["invocation_id"] == invocation_id)


async def test_the_read_model_lists_filters_and_describes_invocations(runtime: IngressRuntime, admin: TestClient) -> None:
    running, failing, done, purged = (str(InvocationId.new()) for _ in range(4))
    other = {"service": "Cart", "handler": "add", "key": "c1", "service_type": "VIRTUAL_OBJECT", "handler_kind": "EXCLUSIVE"}
    await asyncio.to_thread(
        _write_statuses,
        runtime,
        [
            (running, _status(running, deployment_id="dp_a", modified_at_ms=NOW + 3)),
            (failing, _status(failing, "BACKING_OFF", attempt=3, retry_count=2, target=other, modified_at_ms=NOW + 2,
                              last_failure={"code": 500, "message": "db down"})),
            (done, _status(done, "COMPLETED", completion_status="SUCCEEDED", modified_at_ms=NOW + 1)),
            (purged, _status(purged, "COMPLETED", completion_status="FAILED")),
            (purged, None),
        ],
    )
    await _until(lambda: _known(runtime, running, failing, done))
    await _until(lambda: _gone(runtime, purged))

    listed = await (await admin.get("/invocations")).json()
    ids = [i["id"] for i in listed["invocations"]]
    assert ids[:3] == [running, failing, done] and purged not in ids  # newest change first

    assert [i["id"] for i in (await (await admin.get("/invocations?status=backing_off")).json())["invocations"]] == [failing]
    assert [i["id"] for i in (await (await admin.get("/invocations?service=Cart")).json())["invocations"]] == [failing]
    assert {i["id"] for i in (await (await admin.get("/invocations?status=SUCCEEDED,INVOKED")).json())["invocations"]} >= {done, running}
    one = await (await admin.get("/invocations?limit=1")).json()
    assert len(one["invocations"]) == 1 and one["total"] >= 3 and one["next_cursor"]
    paged: list[str] = []
    params = {"limit": "1"}
    while True:  # pages of one row, each going on after the last, add up to the whole listing
        page = await (await admin.get("/invocations", params=params)).json()
        assert page["total"] == one["total"]
        paged += [i["id"] for i in page["invocations"]]
        if page["next_cursor"] is None:
            break
        params = {"limit": "1", "cursor": page["next_cursor"]}
    assert paged == ids and len(ids) == one["total"]
    bad_cursor = await admin.get("/invocations?cursor=nonsense")
    assert bad_cursor.status == 400 and "next_cursor" in (await bad_cursor.json())["message"]

    described = await (await admin.get(f"/invocations/{failing}")).json()
    assert described == {
        "id": failing,
        "target": "Cart/c1/add",
        "service": "Cart",
        "handler": "add",
        "key": "c1",
        "status": "BACKING_OFF",
        "completion_status": None,
        "deployment_id": None,
        "attempt": 3,
        "retry_count": 2,
        "last_failure": {"code": 500, "message": "db down"},
        "idempotency_key": None,
        "created_at": "2023-11-14T22:13:20.000Z",
        "modified_at": "2023-11-14T22:13:20.002Z",
        "scheduled_at": None,
    }
    assert (await admin.get(f"/invocations/{purged}")).status == 404
    bad = await admin.get("/invocations/nope")
    assert bad.status == 400 and "not an invocation id" in (await bad.json())["message"]
    assert (await admin.get("/invocations?limit=0")).status == 400


@pytest.mark.parametrize(
    ("method", "path", "command"),
    [
        ("PATCH", "/invocations/{id}/cancel", "keystate.CancelCommand"),
        ("PATCH", "/invocations/{id}/kill", "keystate.KillCommand"),
        ("PATCH", "/invocations/{id}/resume", "keystate.ResumeCommand"),
        ("PATCH", "/invocations/{id}/purge", "keystate.PurgeCommand"),
        ("DELETE", "/invocations/{id}", "keystate.CancelCommand"),
        ("DELETE", "/invocations/{id}?mode=kill", "keystate.KillCommand"),
        ("DELETE", "/invocations/{id}?mode=purge", "keystate.PurgeCommand"),
    ],
)
async def test_invocation_commands_go_to_the_partition_of_the_id(
    runtime: IngressRuntime, admin: TestClient, method: str, path: str, command: str
) -> None:
    invocation_id = str(InvocationId.new())
    # Known to the read model (completed for a purge): the admin API appends the command at once.
    known = _status(invocation_id, "COMPLETED", completion_status="SUCCEEDED") if command == "keystate.PurgeCommand" else _status(invocation_id)
    await asyncio.to_thread(_write_statuses, runtime, [(invocation_id, known)])
    await _until(lambda: _known(runtime, invocation_id))
    response = await admin.request(method, path.format(id=invocation_id))

    assert response.status == 202
    msg, record = await _command(runtime, command, invocation_id)
    assert msg.partition() == InvocationId.parse(invocation_id).partition(4)
    assert dict(msg.headers())["type"] == command.encode()
    if command in ("keystate.CancelCommand", "keystate.KillCommand"):
        assert "admin API" in record["reason"]


async def test_what_the_read_model_knows_for_sure_is_refused_with_409(runtime: IngressRuntime, admin: TestClient) -> None:
    done, running = str(InvocationId.new()), str(InvocationId.new())
    await asyncio.to_thread(
        _write_statuses,
        runtime,
        [(done, _status(done, "COMPLETED", completion_status="SUCCEEDED")), (running, _status(running))],
    )
    await _until(lambda: _known(runtime, done, running))

    cancel = await admin.patch(f"/invocations/{done}/cancel")
    assert cancel.status == 409
    assert "already completed (SUCCEEDED), so it cannot be cancelled" in (await cancel.json())["message"]
    # A "running" row is not known for sure (it may have completed since): a purge asks the processor
    # first (tests/e2e/test_state_ops.py), so none is tried here, where no processor runs.
    assert (await admin.patch(f"/invocations/{running}/explode")).status == 404
    assert (await admin.delete(f"/invocations/{running}?mode=nuke")).status == 400


async def test_a_deployment_with_pinned_invocations_is_removed_only_with_force(
    runtime: IngressRuntime, admin: TestClient, deployment: Deployment
) -> None:
    deployment.respond = lambda: web.json_response(manifest(service("Pinned", "SERVICE", handler("go"))))
    created = await (await admin.post("/deployments", json={"uri": deployment.uri})).json()
    dp = created["id"]
    a, b, finished = (str(InvocationId.new()) for _ in range(3))
    await asyncio.to_thread(
        _write_statuses,
        runtime,
        [
            (a, _status(a, deployment_id=dp)),
            (b, _status(b, "SUSPENDED", deployment_id=dp)),
            (finished, _status(finished, "COMPLETED", completion_status="SUCCEEDED", deployment_id=dp)),
        ],
    )
    await _until(lambda: _known(runtime, a, b, finished))

    refused = await admin.delete(f"/deployments/{dp}")
    assert refused.status == 409
    message = (await refused.json())["message"]
    assert f"deployment {dp} has 2 invocations pinned to it" in message
    assert "?force=true" in message
    assert (await admin.get(f"/deployments/{dp}")).status == 200

    forced = await admin.delete(f"/deployments/{dp}?force=true")
    assert forced.status == 202
    assert (await admin.get(f"/deployments/{dp}")).status == 404


async def test_the_read_model_rebuilds_from_the_changelog(
    runtime: IngressRuntime, ingress_settings: Any, tmp_path: Path
) -> None:
    invocation_id = str(InvocationId.new())
    await asyncio.to_thread(_write_statuses, runtime, [(invocation_id, _status(invocation_id, "PAUSED"))])
    await _until(lambda: _known(runtime, invocation_id))

    # Another ingress with an empty state directory reads the whole changelog.
    other = IngressRuntime(dataclasses.replace(ingress_settings, state_dir=tmp_path / "other"))
    await other.start()
    try:
        await _until(lambda: _ready(other))
        summary = await other.invocations.get(invocation_id)
        assert summary is not None and summary.status == "PAUSED"
    finally:
        await other.stop()
