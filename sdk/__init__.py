"""keystate: durable execution on Apache Kafka, for Python."""

from ._combinators import as_completed, gather, select, wait_completed
from ._context import (
    Context,
    DurableCallFuture,
    DurableFuture,
    DurablePromise,
    DurableSleepFuture,
    ObjectContext,
    ObjectSharedContext,
    Request,
    RunOptions,
    SendHandle,
    WorkflowContext,
    WorkflowSharedContext,
)
from ._server import app, manifest, serve
from ._service import Service, VirtualObject, Workflow
from .errors import TerminalError
from . import serde

__all__ = [
    "Context",
    "DurableCallFuture",
    "DurableFuture",
    "DurablePromise",
    "DurableSleepFuture",
    "ObjectContext",
    "ObjectSharedContext",
    "Request",
    "RunOptions",
    "SendHandle",
    "Service",
    "TerminalError",
    "VirtualObject",
    "Workflow",
    "WorkflowContext",
    "WorkflowSharedContext",
    "app",
    "as_completed",
    "gather",
    "manifest",
    "select",
    "serde",
    "serve",
    "wait_completed",
]
