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
from ._service import InvocationRetryPolicy, Service, VirtualObject, Workflow
from .errors import RetryableError, TerminalError
from . import serde

__all__ = [
    "Context",
    "DurableCallFuture",
    "DurableFuture",
    "DurablePromise",
    "DurableSleepFuture",
    "InvocationRetryPolicy",
    "ObjectContext",
    "ObjectSharedContext",
    "Request",
    "RetryableError",
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
