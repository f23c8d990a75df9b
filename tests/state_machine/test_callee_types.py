"""Callee types come from the registry, not from the caller's guess (ctx.generic_call / generic_send)."""

from __future__ import annotations

from keystate.processors.state_machine import Config, Invoke, NotifyCompletion, SendToPartition
from keystate.processors.state_machine.model import failure

from .builders import Story, call, new_id, object_target, of_type, send, sends, service_target, workflow_target

REGISTRY = {
    ("Signup", "run"): ("WORKFLOW", "WORKFLOW"),
    ("Signup", "status"): ("WORKFLOW", "SHARED"),
    ("Greeter", "greet"): ("SERVICE", "EXCLUSIVE"),
    ("Counter", "add"): ("VIRTUAL_OBJECT", "EXCLUSIVE"),
}
CFG = Config(handler_target=lambda service, handler: REGISTRY.get((service, handler)))
GREETER = service_target("Greeter", "greet")
RUN = workflow_target("Signup", "wf-1", "run")


def guessed(service: str, handler: str, key: str | None) -> dict[str, object]:
    """What ctx.generic_call puts in the journal: a virtual object's exclusive handler when keyed."""
    return {
        "service": service,
        "handler": handler,
        "key": key,
        "service_type": "SERVICE" if key is None else "VIRTUAL_OBJECT",
        "handler_kind": "EXCLUSIVE",
    }


def test_a_generic_call_to_a_workflow_run_invokes_it_as_a_workflow_run():
    story = Story(CFG)
    caller = story.invoke(GREETER)

    [sent] = story.step(caller, call(guessed("Signup", "run", "wf-1")))

    assert sent.record["target"] == RUN
    assert sent.key == b"Signup/wf-1"


def test_two_generic_calls_to_a_workflow_run_start_it_once():
    story = Story(CFG)
    first, second = story.invoke(GREETER), story.invoke(GREETER)
    [one] = story.step(first, call(guessed("Signup", "run", "wf-1")))
    [two] = story.step(second, call(guessed("Signup", "run", "wf-1")))

    started = of_type(story.deliver(one), Invoke)
    again = story.deliver(two)

    assert len(started) == 1
    assert of_type(again, Invoke) == []  # deduplicated: a workflow id runs once
    assert story.status(two.invocation_id) is None
    [answer] = sends(again, "keystate.CompletionCommand")
    assert answer.record == {
        "invocation_id": second,
        "entry_index": 1,
        "result": failure(409, "workflow Signup/wf-1 was already started"),
    }


def test_a_generic_call_to_a_workflows_shared_handler_runs_beside_the_run():
    story = Story(CFG)
    run = story.invoke(RUN)
    assert story.lock("Signup", "wf-1") == run
    caller = story.invoke(GREETER)
    [sent] = story.step(caller, call(guessed("Signup", "status", "wf-1")))

    actions = story.deliver(sent)

    assert sent.record["target"] == workflow_target("Signup", "wf-1", "status", shared=True)
    assert [a.invocation_id for a in of_type(actions, Invoke)] == [sent.invocation_id]
    assert story.inbox("Signup", "wf-1") == []


def test_a_call_to_an_unknown_handler_fails_the_call_not_the_caller():
    story = Story(CFG)
    caller = story.invoke(GREETER)

    actions = story.step(caller, call(guessed("Signup", "stauts", "wf-1")))

    assert sends(actions, "keystate.InvokeCommand") == []
    [notified] = of_type(actions, NotifyCompletion)
    assert notified.index == 1
    code, message = notified.result[1]["code"], notified.result[1]["message"]
    assert code == 404
    assert message.startswith("cannot call Signup/stauts: Signup/stauts is not a registered handler")
    assert "register the deployment" in message
    assert story.journal(caller)[1]["entry"][1]["result"] == notified.result
    status = story.status(caller)
    assert status is not None and status["status"] == "INVOKED"


def test_a_send_to_an_unknown_service_fails_the_sender():
    story = Story(CFG)
    caller = story.invoke(GREETER)

    actions = story.step(caller, send(guessed("Mailer", "send", None)))

    assert sends(actions, "keystate.InvokeCommand") == []
    status = story.status(caller)
    assert status is not None and status["status"] == "COMPLETED"
    assert status["result"] == failure(
        404,
        "cannot send Mailer/send: Mailer/send is not a registered handler (no service 'Mailer', or it has no "
        "handler 'send'); check the names, or register the deployment that serves it",
    )


def test_keys_must_match_the_registered_service_type():
    story = Story(CFG)
    caller = story.invoke(GREETER)
    keyed_service = story.step(caller, call(guessed("Greeter", "greet", "bob")))
    unkeyed_object = story.step(caller, call(guessed("Counter", "add", None)))

    [(_, first)] = [n.result for n in of_type(keyed_service, NotifyCompletion)]
    [(_, second)] = [n.result for n in of_type(unkeyed_object, NotifyCompletion)]
    assert "Greeter is a service and takes no key, but 'bob' was given" in first["message"]
    assert "Counter is a virtual object: call Counter/add with a key" in second["message"]


def test_the_journal_keeps_the_callers_guess_so_replays_match():
    story = Story(CFG)
    caller = story.invoke(GREETER)
    entry = call(guessed("Signup", "run", "wf-1"))
    story.step(caller, entry)

    assert story.journal(caller)[1] == entry


def test_without_a_registry_the_callers_target_is_used():
    story = Story()
    caller = story.invoke(GREETER)
    target = object_target("Counter", "alice", "add")

    [sent] = story.step(caller, call(target, new_id(target)))

    assert isinstance(sent, SendToPartition) and sent.record["target"] == target
