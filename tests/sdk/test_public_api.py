"""The public API is pinned: names users import must not disappear by accident."""

from __future__ import annotations

import keystate
import keystate.serde

PUBLIC = {
    "Context", "DurableCallFuture", "DurableFuture", "DurablePromise", "DurableSleepFuture", "InvocationRetryPolicy",
    "ObjectContext", "ObjectSharedContext", "Request", "RetryableError", "RunOptions", "SendHandle", "Service",
    "TerminalError", "VirtualObject",
    "Workflow", "WorkflowContext", "WorkflowSharedContext", "app", "as_completed", "gather", "manifest", "select",
    "serde", "serve", "wait_completed",
}


def test_all_is_pinned_and_every_name_exists() -> None:
    assert set(keystate.__all__) == PUBLIC
    for name in keystate.__all__:
        assert getattr(keystate, name) is not None, name


def test_serde_module_api() -> None:
    for name in ("Serde", "JsonSerde", "BytesSerde", "PydanticJsonSerde", "DefaultSerde"):
        assert name in keystate.serde.__all__ and hasattr(keystate.serde, name)


def test_context_methods_mirror_restate() -> None:
    expected = {
        "run", "run_typed", "sleep", "service_call", "object_call", "workflow_call", "generic_call",
        "service_send", "object_send", "workflow_send", "generic_send", "awakeable", "resolve_awakeable",
        "reject_awakeable", "cancel_invocation", "random", "uuid", "time", "request",
    }
    assert expected <= set(dir(keystate.Context))
    assert {"get", "state_keys", "key"} <= set(dir(keystate.ObjectSharedContext))
    assert {"set", "clear", "clear_all"} <= set(dir(keystate.ObjectContext))
    assert "promise" in dir(keystate.WorkflowContext) and "promise" in dir(keystate.WorkflowSharedContext)


def test_terminal_error_carries_a_status_code() -> None:
    err = keystate.TerminalError("gone", status_code=410)
    assert (err.message, err.status_code, str(err)) == ("gone", 410, "gone")
    assert keystate.TerminalError("x").status_code == 500


def test_suspension_derives_from_base_exception() -> None:
    from keystate.errors import Suspended

    assert issubclass(Suspended, BaseException) and not issubclass(Suspended, Exception)


def test_restates_module_names_port_unchanged() -> None:
    # `from restate.exceptions import TerminalError` and `restate.serde.BytesSerde` port by the import alone.
    import keystate.exceptions

    assert keystate.exceptions.TerminalError is keystate.TerminalError
    assert keystate.exceptions.RetryableError is keystate.RetryableError
    assert keystate.serde.BytesSerde is not None
    fields = set(keystate.RunOptions.__dataclass_fields__)
    assert {"serde", "type_hint", "max_attempts", "max_duration", "initial_retry_interval", "max_retry_interval",
            "retry_interval_factor", "max_retry_duration"} <= fields
