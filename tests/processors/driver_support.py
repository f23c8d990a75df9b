"""Shared set-up for the broker-free processor tests: registered services and a driver on them."""

from __future__ import annotations

from typing import Any

from keystate.processors.driver import ProcessorDriver
from keystate.server.meta import MetaState

__all__ = ["PARTITIONS", "driver", "meta_state"]

PARTITIONS = 4


def meta_state() -> MetaState:
    """Greeter (a service) and Counter (a virtual object), served by one deployment."""
    meta = MetaState()
    meta.apply(
        "dp_1",
        {
            "deployment_id": "dp_1",
            "uri": "http://127.0.0.1:9080",
            "transports": ["websocket"],
            "protocol_version": 1,
            "created_at_ms": 0,
            "services": [
                {"name": "Greeter", "service_type": "SERVICE", "handlers": [{"name": "greet", "kind": "EXCLUSIVE"}]},
                {"name": "Counter", "service_type": "VIRTUAL_OBJECT", "handlers": [{"name": "add", "kind": "EXCLUSIVE"}]},
            ],
        },
    )
    return meta


def driver(**kwargs: Any) -> ProcessorDriver:
    """A driver owning every partition, on the standard services."""
    d = ProcessorDriver(meta_state(), partitions=PARTITIONS, **kwargs)
    d.assign(*range(PARTITIONS))
    return d
