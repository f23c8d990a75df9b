"""A processor in the test's own process, so a test can reach into its producer and settings."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from keystate.processors.invoker import InvokerSettings
from keystate.processors.worker import ProcessorSettings, Worker
from keystate.schemas.topics import Topics
from keystate.server.kafka import KafkaSettings
from tests.e2e.harness import HttpResponse, Stack, http


@asynccontextmanager
async def processor_in_this_process(
    stack: Stack, invoker: InvokerSettings | None = None, *, fold_window_ms: float | None = None
) -> AsyncIterator[None]:
    """Runs a processor on the running event loop until the block ends."""
    settings = ProcessorSettings(
        kafka=KafkaSettings(stack.bootstrap, Topics(stack.prefix)),
        instance_id=f"{stack.prefix}in-process",
        invoker=invoker or InvokerSettings(),
    )
    if fold_window_ms is not None:
        settings = dataclasses.replace(settings, fold_window_ms=fold_window_ms)
    stop = asyncio.Event()
    worker = asyncio.create_task(Worker(settings).run(stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(worker, 60)


async def call(stack: Stack, path: str, body: Any) -> HttpResponse:
    """POST to the ingress; the blocking client runs in a thread, the processor has the event loop."""
    return await asyncio.to_thread(http, "POST", f"{stack.url}/{path}", body, None, 90.0)
